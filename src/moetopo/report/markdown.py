"""The blocks as Markdown: the same text and numbers, figures linked as files beside it."""

from __future__ import annotations

import re

from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Pre, Table


def text_md(text: str) -> str:
    """Text as Markdown shows it, never as HTML: renderers pass raw HTML through, and names
    come from checkpoints and sheets (``<`` opens every tag, so it is the one escaped)."""
    return text.replace("<", "&lt;")


def cell(text: str) -> str:
    return text_md(text).replace("|", "\\|").replace("\n", " ")


def table_md(table: Table) -> str:
    lines = [f"*{text_md(table.caption)}*", ""] if table.caption else []
    lines.append("| " + " | ".join(cell(c) or " " for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def block_md(block: Block, depth: int = 3) -> str:
    """One block; ``depth`` is the heading level a collapsible section becomes."""
    match block:
        case Heading(level, text, _):
            return f"{'#' * level} {text_md(text)}"
        case Para(text, kind):
            return f"**{text_md(text)}**" if kind == "verdict" else text_md(text)
        case Bullets(items):
            return "\n".join(f"- {text_md(i)}" for i in items)
        case Table():
            return table_md(block)
        case Figure(path, _, caption):
            return f"![{text_md(caption)}]({path})\n\n*{text_md(caption)}*"
        case Pre(text):
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", text)), default=0))
            return f"{fence}yaml\n{text.rstrip()}\n{fence}"
        case Details(summary, blocks, _):
            inner = [block_md(b, depth + 1) for b in blocks]
            return "\n\n".join([f"{'#' * depth} {text_md(summary)}", *inner])
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(block_md(b) for b in blocks) + "\n"
