"""Self-contained HTML: tables, figures as data URIs, one inline style sheet. Every text goes through
:func:`html.escape`; nothing refers to a file, a font or a URL outside the document."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d6d6d6; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.wide { overflow-x: auto; max-width: 100%; }  /* a table with many params scrolls instead of leaving the page */
.note { color: #7a5b00; } .empty { color: #666; font-style: italic; }
"""


def esc(value: object) -> str:
    """A value as escaped HTML text (None as empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """Numbers as the query verbs print them (4 significant digits); anything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], *, table_id: str | None = None,
          empty: str = "none") -> str:
    """An HTML table (numbers right-aligned), or a line saying ``empty`` when there are no rows."""
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(fmt(v))}</td>' if isinstance(v, (int, float)) and
                         not isinstance(v, bool) else f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
        for row in rows)
    return f'<div class="wide"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure(png: bytes, title: str, caption: str, *, name: str = "") -> str:
    """A PNG embedded as a base64 data URI, with its caption."""
    data = base64.b64encode(png).decode("ascii")
    ident = f' id="fig-{esc(name)}"' if name else ""
    return (f'<figure{ident}><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
            f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>")


def details(summary: str, text: str) -> str:
    """Preformatted text folded under a summary line."""
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>"


def document(title: str, body: Sequence[str]) -> str:
    """A complete HTML document with the inline style sheet."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
