"""A self-contained HTML summary: headings, tables and inline SVG plots in one file, no external assets."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; } td.l, th.l { text-align: left; }
td.l { white-space: normal; max-width: 26em; }
.note { color: #555; } .warn { color: #a40; } figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 3px; }
"""


@dataclass
class Column:
    """A table column: header, key in the row dict, formatter, alignment."""

    header: str
    key: str
    fmt: Callable[[Any], str] = str
    left: bool = False


@dataclass
class Report:
    """An HTML page built block by block."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        """A section heading."""
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str, cls: str = "") -> None:
        """A paragraph (plain text, escaped)."""
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[Column], caption: str = "") -> None:
        """A table of `rows` (dicts) with the given columns; missing values show as '-'."""
        out = ["<table>"]
        if caption:
            out.append(f"<caption class='note'>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(f"<th{' class=l' if c.left else ''}>{html.escape(c.header)}</th>"
                                     for c in columns) + "</tr>")
        for r in rows:
            cells = []
            for c in columns:
                v = r.get(c.key)
                text = "-" if v is None else c.fmt(v)
                cells.append(f"<td{' class=l' if c.left else ''}>{html.escape(text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        self.parts.append("\n".join(out))

    def figure(self, svg: str | Path, caption: str = "") -> None:
        """An SVG plot, inlined (the page stays one file)."""
        text = Path(svg).read_text()
        text = text[text.find("<svg"):]  # drop the XML prolog and DOCTYPE
        cap = f"<figcaption class='note'>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f"<figure>{text}{cap}</figure>")

    def render(self) -> str:
        """The whole page."""
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(self.parts) + "\n</body></html>\n")
