"""The HTML page of a report: one self-contained file, figures embedded, every text escaped."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;
     padding:1.5rem 2rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.sub{color:#666;margin-top:0} nav a{margin-right:.8rem;white-space:nowrap}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4} td.text,th.text{text-align:left}
figure{margin:.8rem 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem} .note{color:#555;font-size:.92rem}
.warning{color:#8a1c00;background:#fff3e0;border-left:4px solid #e65100;padding:.4rem .7rem}
.scroll{max-height:28rem;overflow:auto;display:inline-block}
"""


@dataclass
class Section:
    """One part of the report. `body` is HTML built only from `escape`d text and our markup."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)

    def text(self, words: str, css: str = "") -> "Section":
        self.body.append(f'<p class="{css}">{escape(words)}</p>' if css else f"<p>{escape(words)}</p>")
        return self

    def figure(self, png: Path, caption: str) -> "Section":
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}" '
                         f'data-file="{escape(Path(png).name)}"><figcaption>{escape(caption)}</figcaption></figure>')
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int = 1,
              scroll: bool = False) -> "Section":
        head = "".join(f'<th class="{"text" if i < text_columns else ""}">{escape(h)}</th>'
                       for i, h in enumerate(header))
        lines = []
        for row in rows:
            cells = "".join(f'<td class="{"text" if i < text_columns else ""}">{escape(_cell(v))}</td>'
                            for i, v in enumerate(row))
            lines.append(f"<tr>{cells}</tr>")
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
        self.body.append(f'<div class="scroll">{table}</div>' if scroll else table)
        return self


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    nav = " ".join(f'<a href="#{s.key}">{escape(s.title)}</a>' for s in sections)
    parts = [f'<section id="{s.key}" data-section="{s.key}"><h2>{escape(s.title)}</h2>{"".join(s.body)}</section>'
             for s in sections]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p><nav>{nav}</nav>'
            f'{"".join(parts)}</body></html>\n')
