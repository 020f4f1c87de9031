"""One self-contained HTML page from sections of figures, tables and notes: the renderer behind `vaelab
reproduce`'s report.html, meant to serve `vaelab compare`'s page too.

    from vaelab.viz.html_page import best_cells, figure, grid, note, render_page, table
    rows = [["setting", "test ELBO"], ["a", "-95.1 ± 0.2"], ["b", "-97.3 ± 0.2"]]
    page = render_page("vaelab compare", [
        ("Test set", [table(rows, best_cells([[None], [-95.1], [-97.3]], {1: "max"})), note("bold: best")]),
        ("Curves", [grid(figure(Path("elbo.png"), "ELBO per epoch", "Figure 1"), figure(png_bytes, "KL"))]),
    ])

A section is (heading, [block, ...]) and every block is an HTML string, so callers can mix their own markup with
the helpers here. Images are embedded as base64 data URLs: the page needs no other file, no server and no network.
The layout is a CSS grid: `grid(a, b)` puts two figures side by side (one column on narrow screens) and a figure
made with `wide=True` spans the row. Without JavaScript everything shows; scripts (the latent map's) are optional.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

Section = tuple[str, Sequence[str]]
PIXEL_MAX = 800   # px: an image grid narrower than this is drawn with pixelated scaling (it will be scaled up)

STYLE = """
:root{--fg:#1c1c1e;--muted:#5f6368;--line:#e2e4e8;--soft:#f6f7f9;--best:#e3f1e3}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);max-width:1280px;
 margin:0 auto;padding:1.2em 1.6em 4em}
h1{font-size:1.75em;margin:.3em 0 .1em}
h2{font-size:1.25em;margin:1.9em 0 .7em;padding-bottom:.25em;border-bottom:1px solid var(--line)}
.intro{color:var(--muted);margin:.2em 0 1em}
.grid{display:grid;gap:1.4em 1.8em;grid-template-columns:repeat(2,minmax(0,1fr));align-items:start;margin:.8em 0}
.grid.cols-3{grid-template-columns:repeat(3,minmax(0,1fr))}
@media (max-width:820px){.grid,.grid.cols-3{grid-template-columns:minmax(0,1fr)}}
.wide{grid-column:1/-1}
figure{margin:0}
figure img{display:block;width:100%;height:auto}
figure.pixel img{image-rendering:pixelated}
nav.toc{font-size:14px;margin:.6em 0 1em}
nav.toc ol{margin:.2em 0;padding-left:1.4em;columns:2;column-gap:2em}
p.findings{font-size:15px;margin:.4em 0 .8em;max-width:62em}
figcaption{font-size:13px;color:#333;margin-top:.35em}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:.4em 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal}
th{background:var(--soft);font-weight:600;white-space:normal;vertical-align:bottom}
td.best{font-weight:700;background:var(--best)}
p.note,ul.notes{color:var(--muted);font-size:13px;margin:.3em 0}
ul.notes{padding-left:1.2em}
details{margin:.4em 0;border:1px solid var(--line);border-radius:4px;padding:.3em .7em}
summary{cursor:pointer;font-weight:600}
pre{background:var(--soft);padding:.6em;font-size:12px;overflow:auto;margin:.4em 0}
"""


def data_url(png: bytes | Path, mime: str = "image/png") -> str:
    """A base64 data URL of an image given as bytes or as a file."""
    raw = png.read_bytes() if isinstance(png, Path) else png
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def png_width(raw: bytes) -> int | None:
    """A PNG's width in pixels from its IHDR chunk, None for anything else."""
    return int.from_bytes(raw[16:20], "big") if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24 else None


def figure(png: bytes | Path, caption: str, label: str = "", alt: str = "", wide: bool = False,
           pixel: bool = False) -> str:
    """An embedded image with its caption ("<b>label.</b> caption"); `wide` spans a grid row, `pixel` marks an
    image grid: one narrower than PIXEL_MAX is scaled up without smoothing (crisp pixels); a wider one was already
    upscaled by a whole factor (plots.save_grid) and is scaled down smoothly, so its title stays smooth."""
    raw = png.read_bytes() if isinstance(png, Path) else png
    small = (png_width(raw) or 0) < PIXEL_MAX
    classes = " ".join(c for c, on in (("wide", wide), ("pixel", pixel and small)) if on)
    attr = f' class="{classes}"' if classes else ""
    head = f"<b>{html.escape(label)}.</b> " if label else ""
    return (f"<figure{attr}>"
            f'<img alt="{html.escape(alt or label or caption[:60])}" src="{data_url(raw)}">'
            f"<figcaption>{head}{html.escape(caption)}</figcaption></figure>")


def grid(*blocks: str, columns: int = 2) -> str:
    """Blocks side by side in a grid of `columns` (2 or 3) equal columns."""
    cls = "grid" if columns == 2 else f"grid cols-{columns}"
    return f'<div class="{cls}">{"".join(blocks)}</div>'


def best_cells(values: Sequence[Sequence[float | None]], directions: dict[int, str]) -> set[tuple[int, int]]:
    """Cells (row, column) holding the best value of each column of a table: `values[r][c]` is the number shown in
    row r, column c (row 0 is the header and ignored; None where there is none), `directions` maps a column to
    "max" or "min". Ties are all marked; a column with fewer than two numbers is not marked."""
    marked = set()
    for col, direction in directions.items():
        cells = [(r, row[col]) for r, row in enumerate(values) if r > 0 and col < len(row) and row[col] is not None]
        if len(cells) < 2:
            continue
        pick = max if direction == "max" else min
        best = pick(v for _, v in cells)
        marked |= {(r, col) for r, v in cells if v == best}
    return marked


def table(rows: Sequence[Sequence[str]], best: set[tuple[int, int]] = frozenset()) -> str:
    """A table whose first row is the header; cells in `best` (see `best_cells`) are shown bold on green."""
    def cell(r: int, c: int, text: str) -> str:
        tag = "th" if r == 0 else "td"
        cls = ' class="best"' if (r, c) in best else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    body = "".join("<tr>" + "".join(cell(r, c, t) for c, t in enumerate(row)) + "</tr>" for r, row in enumerate(rows))
    return f'<div class="table-wrap"><table>{body}</table></div>'


def note(text: str) -> str:
    """A one-line note in muted type."""
    return f'<p class="note">{html.escape(text)}</p>'


def notes(lines: Sequence[str]) -> str:
    """A list of one-line notes; empty when there are none."""
    return '<ul class="notes">' + "".join(f"<li>{html.escape(t)}</li>" for t in lines) + "</ul>" if lines else ""


def details(summary: str, body: str) -> str:
    """A folded block: `summary` shown, `body` (HTML) revealed on click."""
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def pre(text: str) -> str:
    """Preformatted text (configs, logs)."""
    return f"<pre>{html.escape(text)}</pre>"


def paragraph(text: str) -> str:
    """A paragraph in body type (the report's findings)."""
    return f'<p class="findings">{html.escape(text)}</p>'


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (lower case, punctuation dropped, spaces to hyphens), so one name
    serves report.html's ids and report.md's links."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(headings: Sequence[str]) -> list[str]:
    """Unique anchors of headings in order: a repeated slug gets -1, -2, ... (as GitHub does)."""
    seen: dict[str, int] = {}
    out = []
    for heading in headings:
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(f"{base}-{n}" if n else base)
    return out


def toc(headings: Sequence[str]) -> str:
    """A table of contents: a numbered list of links to the headings' anchors (`anchors`)."""
    items = "".join(f'<li><a href="#{a}">{html.escape(h)}</a></li>' for h, a in zip(headings, anchors(headings),
                                                                                   strict=True))
    return f'<nav class="toc" aria-label="Contents"><b>Contents</b><ol>{items}</ol></nav>'


def render_page(title: str, sections: Sequence[Section], intro: str = "", scripts: Sequence[str] = (),
                styles: Sequence[str] = (), contents: bool = False) -> str:
    """The whole page: `title` as h1, an optional intro line, (`contents`) a table of contents, one h2 per section
    (id: `anchors`) followed by its blocks; extra CSS `styles` after the page's own, and `scripts` (plain
    JavaScript, inlined) at the end of the body."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"] + ([f'<p class="intro">{esc(intro)}</p>'] if intro else [])
    headings = [heading for heading, _ in sections]
    if contents:
        body.append(toc(headings))
    for (heading, blocks), anchor in zip(sections, anchors(headings), strict=True):
        body += [f'<h2 id="{anchor}">{esc(heading)}</h2>', *blocks]
    body += [f"<script>{js}</script>" for js in scripts]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>{esc(title)}</title><style>{STYLE}{''.join(styles)}</style></head>"
            f"<body>{''.join(body)}</body></html>")
