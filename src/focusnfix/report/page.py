"""HTML building blocks for the offline report: escaping, number formats, tables, images, the page.

Everything returned here is an HTML string; text from files always goes through :func:`esc`.
Images are referenced by paths relative to the report's folder, so the folder can be copied.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import FocusNFixError

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;color:#1d1d1f;max-width:1600px}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav a{margin-right:1em}.wide{overflow-x:auto}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.6em 0}
dl.meta dt{font-weight:600;color:#555}dl.meta dd{margin:0}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:center;vertical-align:top}
th{background:#f3f3f5}td.text{text-align:left;max-width:24em}
tr.ref td{background:#fafafa}tr.total td{font-weight:600;border-top:2px solid #999}
.good{color:#11772d}.bad{color:#b3261e}.muted{color:#777}.small{font-size:.85em}
small,.note,.cap{color:#555}.cap{font-size:.8em;margin-top:2px}.note{font-size:.9em;max-width:70em}
img.tile{width:128px;image-rendering:pixelated;display:block;margin:0 auto}
img.sheet{image-rendering:pixelated;max-width:100%}
.missing{display:inline-block;width:128px;color:#b3261e;font-size:.8em}
.charts{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:0 0 1em 0}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f8;padding:.8em;overflow:auto;font-size:.85em}
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


def url(rel: str) -> str:
    """A relative POSIX path as an attribute-safe URL."""
    return esc(quote(str(rel).replace("\\", "/")))


def image(folder: Path, rel: str | None, cls: str = "tile", alt: str = "", width: int | None = None) -> str:
    """An ``<img>`` (linked to the full file) for ``folder / rel``, or a "missing" marker."""
    if not rel or not (folder / rel).is_file():
        return f"<span class='missing'>missing{': ' + esc(rel) if rel else ''}</span>"
    size = f" width='{width}'" if width else ""
    return f"<a href='{url(rel)}'><img class='{cls}' src='{url(rel)}' alt='{esc(alt)}'{size} loading='lazy'></a>"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] | None = None) -> str:
    """A table from header cells and body cells that are ALREADY HTML (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        body.append(f"<tr{cls}>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def meta_list(items: Iterable[tuple[str, Any]]) -> str:
    """A definition list of (label, value) pairs; None values are left out."""
    parts = [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None and v != ""]
    return f"<dl class='meta'>{''.join(parts)}</dl>"


def page(title: str, sections: Sequence[tuple[str, str, str]], intro: str = "") -> str:
    """The whole document: a title, a nav bar and (anchor id, heading, body HTML) sections."""
    nav = " ".join(f"<a href='#{esc(sid)}'>{esc(head)}</a>" for sid, head, _ in sections)
    body = "".join(f"<section id='{esc(sid)}'><h2>{esc(head)}</h2>{content}</section>" for sid, head, content in sections)
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><h1>{esc(title)}</h1>{intro}"
            f"<nav>{nav}</nav>\n{body}\n<p class='note'>Written by focusnfix report from the files in this "
            f"folder only; images are linked by relative path, so the folder can be copied as a whole.</p>"
            f"</body></html>\n")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken file is a one-line FocusNFixError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FocusNFixError(f"cannot read {path}: {e}") from None


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """Parse a JSON-lines file (blank lines skipped); a broken line is a one-line FocusNFixError, except
    with ``torn_tail_ok`` a broken last line (an appended log such as metrics.jsonl, torn by a crash)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FocusNFixError(f"cannot read {path}: {e}") from None
    rows = []
    for k, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                if torn_tail_ok and k == len(lines):
                    break
                raise FocusNFixError(f"{path}:{k}: not valid JSON ({e})") from None
    return rows
