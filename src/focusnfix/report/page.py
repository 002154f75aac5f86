"""HTML building blocks for the offline report: escaping, number formats, tables, images, the page.

Everything returned here is an HTML string; text from files always goes through :func:`esc`.
Images are referenced by paths relative to the report's folder, so the folder can be copied.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..runs.files import read_json, read_jsonl  # noqa: F401  (re-exported: the report's readers)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em 2em;color:#1d1d1f;max-width:1600px}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{margin:1em 0 .3em}
nav{margin:.4em 0 .8em;line-height:1.7}nav a{margin-right:1em;display:inline-block}
.scroll,.wide{overflow-x:auto;max-width:100%}
.context{color:#444;margin:.2em 0}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.6em 0}
dl.meta dt{font-weight:600;color:#555}dl.meta dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:center;vertical-align:top}
th{background:#f3f3f5}td.text,th.text{text-align:left;max-width:24em}
tr.ref td{background:#fafafa}tr.total td{font-weight:600;border-top:2px solid #999}
tr.group th{text-align:left;background:#e8edf4;font-weight:600}
tr.group th small{font-weight:400}
table.metrics th.text{position:sticky;left:0;z-index:1;min-width:9em}
table.metrics td.text{position:sticky;left:0;z-index:1;background:#fff;min-width:9em}
.good{color:#08792a;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted,.neutral{color:#666}.small{font-size:.85em}
small,.note,.cap{color:#555}.cap{font-size:.8em;margin-top:2px}.note{font-size:.9em;max-width:70em}
img.tile{width:clamp(48px,calc((min(100vw,1600px) - 4em) / var(--cols,5) - 10px),320px);height:auto;\
image-rendering:pixelated;display:block;margin:0 auto}
table.grid td{padding:2px 3px}table.grid tr.prompt td{border-bottom:none;background:#fafafa}
table.grid tr.prompt+tr td{border-top:none}
img.sheet{image-rendering:pixelated;max-width:100%;height:auto;display:block}
.missing{display:inline-block;width:96px;color:#b3261e;font-size:.8em;overflow-wrap:anywhere}
.charts{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
svg{max-width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:.3em 1.2em;font-size:.9em;margin:.2em 0 .6em}
.legend .sw{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.35em;vertical-align:-.05em}
figure{margin:0 0 1.2em 0}figcaption{font-size:.9em;color:#333;margin:.2em 0}
.sheetgrid{display:grid;grid-template-columns:clamp(6em,28vw,15em) minmax(0,max-content);gap:.15em .5em}
.sheetgrid .colheads{display:grid;grid-template-columns:repeat(3,1fr);font-size:.8em;color:#333;text-align:center}
.sheetgrid .corner{font-size:.8em;color:#777}.sheetgrid .rowwrap{position:relative}
.sheetgrid .rowheads{position:absolute;inset:0;display:grid;grid-template-rows:repeat(var(--rows,1),1fr)}
.sheetgrid .rowhead{display:flex;flex-direction:column;justify-content:center;overflow:hidden;font-size:.8em;
 color:#333;border-top:1px solid #e4e4e4;line-height:1.25}.sheetgrid .rowhead small{color:#666}
pre{background:#f6f6f8;padding:.8em;overflow:auto;font-size:.85em}
@media (max-width:640px){body{margin:.6em .7em}table{font-size:.8em}th,td{padding:2px 4px}
 td.text,th.text{max-width:14em}.cap{font-size:.7em}h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.1em}
 table.metrics th.text,table.metrics td.text{min-width:7em;max-width:9em}}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text (quotes included, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A number with ``digits`` significant digits; None -> "—", +inf -> "∞"."""
    if value is None:
        return "—"
    x = float(value)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    text = f"{x:+.{digits}g}" if signed and x != 0 else f"{x:.{digits}g}"
    return text.replace("-", "−")


def fmt_p(p: float | None) -> str:
    """A p-value: 3 significant digits, or "<1e-6" for tiny ones."""
    if p is None:
        return "—"
    return "<1e−6" if p < 1e-6 else fmt(p, 3)


def fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    """A confidence interval as "[low, high]"."""
    return "—" if ci is None else f"[{fmt(ci[0], digits, True)}, {fmt(ci[1], digits, True)}]"


def fmt_pct(value: Any, signed: bool = False) -> str:
    """A share in [0, 1] as a percentage ("83.3%"); ``signed``: a change of a share, in percentage points
    ("+5.0 pts"). None / NaN -> "—"."""
    if value is None or math.isnan(float(value)):
        return "—"
    x = 100 * float(value)
    if not signed:
        return f"{x:.1f}%"
    return (f"{x:+.1f} pts" if round(x, 1) != 0 else "0.0 pts").replace("-", "−")


def fmt_pct_ci(ci: Sequence[float] | None) -> str:
    """A confidence interval of a share (or of its change) in percentage points: "[−2.1, +12.0]"."""
    if ci is None:
        return "—"
    return "[" + ", ".join(f"{100 * float(v):+.1f}".replace("-", "−") for v in ci) + "]"


def url(rel: str) -> str:
    """A relative POSIX path as an attribute-safe URL."""
    return esc(quote(str(rel).replace("\\", "/")))


def image(folder: Path, rel: str | None, cls: str = "tile", alt: str = "", width: int | None = None,
          height: int | None = None) -> str:
    """An ``<img>`` (linked to the full file) for ``folder / rel``, or a "missing" marker. Give ``height``
    with ``width`` so the browser reserves the space before a lazy image loads."""
    if not rel or not (folder / rel).is_file():
        return f"<span class='missing'>missing{': ' + esc(rel) if rel else ''}</span>"
    size = (f" width='{width}'" if width else "") + (f" height='{height}'" if width and height else "")
    return f"<a href='{url(rel)}'><img class='{cls}' src='{url(rel)}' alt='{esc(alt)}'{size} loading='lazy'></a>"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] | None = None,
          cls: str = "") -> str:
    """A table from header cells and body cells that are ALREADY HTML (escape text before), inside its own
    horizontally scrolling box so a wide table never widens the page. A cell (header or body) given as a
    whole ``<td ...>`` / ``<th ...>`` element is used as is."""
    head = "".join(h if h.startswith("<th") else f"<th>{h}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        row_cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        body.append(f"<tr{row_cls}>" + "".join(c if c.startswith(("<td", "<th")) else f"<td>{c}</td>" for c in row)
                    + "</tr>")
    attr = f" class='{cls}'" if cls else ""
    return (f"<div class='scroll'><table{attr}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def meta_list(items: Iterable[tuple[str, Any]]) -> str:
    """A definition list of (label, value) pairs; None values are left out."""
    parts = [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None and v != ""]
    return f"<dl class='meta'>{''.join(parts)}</dl>"


def page(title: str, sections: Sequence[tuple[str, str, str]], intro: str = "", top: str = "") -> str:
    """The whole document: a title, ``intro``, a nav bar, ``top`` (HTML shown before the sections, e.g. a
    headline) and (anchor id, heading, body HTML) sections."""
    nav = " ".join(f"<a href='#{esc(sid)}'>{esc(head)}</a>" for sid, head, _ in sections)
    body = "".join(f"<section id='{esc(sid)}'><h2>{esc(head)}</h2>{content}</section>"
                   for sid, head, content in sections)
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><h1>{esc(title)}</h1>{intro}"
            f"<nav>{nav}</nav>\n{top}{body}\n<p class='note'>Written by focusnfix report from the files in this "
            f"folder only; images are linked by relative path, so the folder can be copied as a whole.</p>"
            f"</body></html>\n")
