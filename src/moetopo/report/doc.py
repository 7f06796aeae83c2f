"""The report as a small tree of blocks, rendered twice: to HTML and to Markdown.

Building the content once keeps both outputs showing the same text and the same
numbers; the renderers only decide the markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    text: str
    kind: str = ""  # "verdict", "note", "warning": styling only


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    """Cells are already formatted text; ``anchor`` lets tests and links find the table."""

    columns: list[str]
    rows: list[list[str]]
    anchor: str = ""
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG written to ``path`` (relative to the report directory) and embedded in HTML."""

    path: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Details:
    """A collapsible section (a heading in Markdown)."""

    summary: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


Block = Heading | Para | Bullets | Table | Figure | Pre | Details


def anchor(*parts: str) -> str:
    """An HTML id from names that may hold dots (model ids do)."""
    return "-".join(p.replace(".", "_") for p in parts)
