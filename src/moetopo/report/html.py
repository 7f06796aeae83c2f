"""The blocks as one self-contained HTML page: inline CSS, figures as data URIs, no scripts.

Nothing is fetched when the page opens (no fonts, no scripts, no external
images), so it reads the same offline, in a mail attachment or on a cluster.
"""

from __future__ import annotations

import base64
from html import escape

from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Pre, Table

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       margin: 0; background: #fff; }
header { background: #1f3a5f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 6px 0; font-size: 26px; }
header nav a { color: #cfe0ff; margin-right: 16px; text-decoration: none; }
main { padding: 8px 32px 48px 32px; max-width: 1400px; }
h2 { border-bottom: 2px solid #1f3a5f; padding-bottom: 4px; margin-top: 36px; }
h4 { margin: 22px 0 6px 0; color: #1f3a5f; }
p.verdict { background: #eef4ff; border-left: 4px solid #1f3a5f; padding: 8px 12px; }
p.warning { background: #fff6e0; border-left: 4px solid #c98a00; padding: 6px 12px; }
.scroll { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; color: #4a5468; padding: 4px 0; font-style: italic; }
th, td { border: 1px solid #d5dae3; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f0f3f8; }
td:first-child { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfd; }
details { border: 1px solid #d5dae3; border-radius: 6px; margin: 8px 0; padding: 4px 12px; }
details > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceff4; }
figcaption { font-size: 13px; color: #4a5468; max-width: 900px; }
pre { background: #f5f6f8; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def table_html(table: Table) -> str:
    ident = f' id="{escape(table.anchor)}"' if table.anchor else ""
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    return (
        f'<div class="scroll"><table{ident}>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def block_html(block: Block) -> str:
    match block:
        case Heading(level, text, anchor):
            ident = f' id="{escape(anchor)}"' if anchor else ""
            return f"<h{level}{ident}>{escape(text)}</h{level}>"
        case Para(text, kind):
            cls = f' class="{escape(kind)}"' if kind else ""
            return f"<p{cls}>{escape(text)}</p>"
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"
        case Table():
            return table_html(block)
        case Figure(path, png, caption):
            return (
                f'<figure><img src="{data_uri(png)}" alt="{escape(caption)}" '
                f'data-file="{escape(path)}"><figcaption>{escape(caption)}</figcaption></figure>'
            )
        case Pre(text):
            return f"<pre>{escape(text)}</pre>"
        case Details(summary, blocks, anchor):
            ident = f' id="{escape(anchor)}"' if anchor else ""
            inner = "\n".join(block_html(b) for b in blocks)
            return f"<details{ident}><summary>{escape(summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(blocks: list[Block], title: str) -> str:
    """The page: a header with the title and a section index, then every block."""
    first, *rest = blocks
    if not isinstance(first, Heading):
        first, rest = Heading(1, title), blocks
    nav = " ".join(
        f'<a href="#{escape(b.anchor)}">{escape(b.text)}</a>'
        for b in rest
        if isinstance(b, Heading) and b.level == 2 and b.anchor
    )
    body = "\n".join(block_html(b) for b in rest)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head>\n<body>\n"
        f"<header><h1>{escape(first.text)}</h1><nav>{nav}</nav></header>\n"
        f"<main>\n{body}\n</main>\n</body></html>\n"
    )
