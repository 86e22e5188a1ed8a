"""A report as a list of blocks, rendered once as self-contained HTML and once as Markdown.

Blocks: :class:`Heading`, :class:`Text` (a paragraph; ``**bold**`` is the only markup),
:class:`Figures` (PNG files side by side, each with a caption), :class:`Table`
(optionally with a caption and columns of long text) and :class:`Headline` (a row of key
figures). The HTML holds everything it shows — images as ``data:`` URIs, the style sheet inline,
no script and no remote resource — so it opens offline and survives being mailed; the Markdown
links the PNGs by their path relative to the report.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str
    small: bool = False


@dataclass(frozen=True)
class Figures:
    paths: Sequence[Path]
    captions: Sequence[str] = ()
    width: str = "100%"  # of the page, per figure row


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    wide_text: bool = False  # cells hold replies: left-aligned, wrapped, smaller
    numeric: Sequence[int] = field(default_factory=tuple)  # right-aligned columns


@dataclass(frozen=True)
class Headline:
    items: Sequence[tuple[str, str, str]]  # (value, label, note)


Block = Heading | Text | Figures | Table | Headline

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --rule: #d8dce3; --accent: #2f5d9b; --bg: #fbfbfd; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.55 "Source Serif Pro", "Charter", "Georgia", "DejaVu Serif", serif; }
main { max-width: 1040px; margin: 0 auto; padding: 36px 40px 64px; background: #fff;
  box-shadow: 0 0 0 1px var(--rule); }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-top: 14px; border-top: 1px solid var(--rule); }
h3 { font-size: 16px; margin: 22px 0 6px; }
p { margin: 6px 0 10px; }
p.small, figcaption, caption { color: var(--muted); font-size: 13px; }
.headline { display: flex; gap: 14px; margin: 18px 0 6px; flex-wrap: wrap; }
.headline div { flex: 1 1 0; min-width: 150px; border: 1px solid var(--rule); border-radius: 6px;
  padding: 10px 14px; background: #f6f8fb; }
.headline b { display: block; font: 600 24px/1.2 "DejaVu Sans", "Helvetica Neue", sans-serif;
  color: var(--accent); }
.headline span { display: block; font-size: 13px; }
.headline em { display: block; font-size: 12px; color: var(--muted); font-style: normal; }
.figs { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 12px; }
figure { margin: 0; flex: 1 1 0; min-width: 300px; }
figure img { width: 100%; height: auto; border: 1px solid var(--rule); border-radius: 3px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px;
  font: 13px/1.4 "DejaVu Sans", "Helvetica Neue", sans-serif; }
caption { caption-side: bottom; text-align: left; padding-top: 6px; }
th { text-align: left; font-weight: 600; border-bottom: 1.5px solid var(--ink); padding: 5px 8px; }
td { border-bottom: 1px solid var(--rule); padding: 5px 8px; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.text td { white-space: pre-wrap; font: 13px/1.45 "DejaVu Serif", "Georgia", serif; }
table.text td.num { font-family: "DejaVu Sans", sans-serif; }
tr:last-child td { border-bottom: 1.5px solid var(--ink); }
code { font: 12.5px "DejaVu Sans Mono", monospace; background: #f1f3f6; padding: 1px 4px;
  border-radius: 3px; }
"""


def _inline_html(text: str) -> str:
    """Escape, then ``**bold**`` and ```code``` markup."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def to_html(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    """One self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="small">{_inline_html(subtitle)}</p>',
    ]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            cls = ' class="small"' if b.small else ""
            parts.append(f"<p{cls}>{_inline_html(b.text)}</p>")
        elif isinstance(b, Headline):
            cells = "".join(
                f"<div><b>{html.escape(v)}</b><span>{html.escape(label)}</span>"
                f"<em>{html.escape(note)}</em></div>"
                for v, label, note in b.items
            )
            parts.append(f'<div class="headline">{cells}</div>')
        elif isinstance(b, Figures):
            figs = []
            for i, path in enumerate(b.paths):
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                cap = b.captions[i] if i < len(b.captions) else ""
                figs.append(
                    f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{data}">'
                    + (f"<figcaption>{_inline_html(cap)}</figcaption>" if cap else "")
                    + "</figure>"
                )
            parts.append(f'<div class="figs" style="width:{b.width}">{"".join(figs)}</div>')
        else:
            cls = ' class="text"' if b.wide_text else ""
            head = "".join(
                f"<th{' class=num' if j in b.numeric else ''}>{html.escape(h)}</th>"
                for j, h in enumerate(b.headers)
            )
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td{' class=num' if j in b.numeric else ''}>{_inline_html(_cell(v))}</td>"
                    for j, v in enumerate(row)
                )
                + "</tr>"
                for row in b.rows
            )
            cap = f"<caption>{_inline_html(b.caption)}</caption>" if b.caption else ""
            parts.append(
                f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(value: object) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " / ")


def to_markdown(title: str, subtitle: str, blocks: Sequence[Block], base: Path) -> str:
    """The same report as Markdown; figures linked relative to ``base`` (the report's folder)."""
    lines = [f"# {title}", "", subtitle, ""]
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            lines += [f"*{b.text}*" if b.small else b.text, ""]
        elif isinstance(b, Headline):
            lines += [
                f"- **{v}** {label} ({note})" if note else f"- **{v}** {label}"
                for v, label, note in b.items
            ]
            lines.append("")
        elif isinstance(b, Figures):
            for i, path in enumerate(b.paths):
                cap = b.captions[i] if i < len(b.captions) else ""
                rel = os.path.relpath(Path(path), base)
                lines += [f"![{cap}]({rel})", ""]
                if cap:
                    lines += [f"*{cap}*", ""]
        else:
            lines.append("| " + " | ".join(b.headers) + " |")
            lines.append(
                "|"
                + "|".join("---:" if j in b.numeric else "---" for j in range(len(b.headers)))
                + "|"
            )
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b.rows]
            lines.append("")
            if b.caption:
                lines += [f"*{b.caption}*", ""]
    return "\n".join(lines)


def write(
    folder: Path, name: str, title: str, subtitle: str, blocks: Sequence[Block]
) -> tuple[Path, Path]:
    """``<folder>/<name>.html`` and ``<folder>/<name>.md`` (each written atomically)."""
    out = []
    for suffix, text in (
        (".html", to_html(title, subtitle, blocks)),
        (".md", to_markdown(title, subtitle, blocks, folder)),
    ):
        path = folder / f"{name}{suffix}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        out.append(path)
    return out[0], out[1]
