"""The blocks as Markdown: the same text and numbers, figures linked as files beside it."""

from __future__ import annotations

from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Pre, Table


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_md(table: Table) -> str:
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(cell(c) or " " for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def block_md(block: Block, depth: int = 3) -> str:
    """One block; ``depth`` is the heading level a collapsible section becomes."""
    match block:
        case Heading(level, text, _):
            return f"{'#' * level} {text}"
        case Para(text, kind):
            return f"**{text}**" if kind == "verdict" else text
        case Bullets(items):
            return "\n".join(f"- {i}" for i in items)
        case Table():
            return table_md(block)
        case Figure(path, _, caption):
            return f"![{caption}]({path})\n\n*{caption}*"
        case Pre(text):
            return f"```yaml\n{text.rstrip()}\n```"
        case Details(summary, blocks, _):
            inner = [block_md(b, depth + 1) for b in blocks]
            return "\n\n".join([f"{'#' * depth} {summary}", *inner])
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(block_md(b) for b in blocks) + "\n"
