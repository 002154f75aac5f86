"""Report for a training run folder: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``samples/*.png``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .page import esc, fmt, image, meta_list, page, read_json, read_jsonl, table, url
from .plots import Series, color, line_chart

CURVE_ORDER = ("loss", "reward", "constraint", "k", "mask_frac", "grad_norm", "lr", "seconds")


def _config(folder: Path) -> tuple[dict[str, Any], str]:
    """(parsed config.yaml or {}, its raw text or "")."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # an unreadable config still shows as text
        data = None
    return (data if isinstance(data, dict) else {}), text


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(part)
    return cfg


def _curves(records: list[dict[str, Any]]) -> str:
    """One small chart per numeric key of metrics.jsonl (known keys first)."""
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k != "step" and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    keys.sort(key=lambda k: (CURVE_ORDER.index(k) if k in CURVE_ORDER else len(CURVE_ORDER), k))
    steps = [r.get("step", j + 1) for j, r in enumerate(records)]
    charts = [line_chart([Series("", steps, [r.get(k) for r in records], color(n))], k, "step", k, width=360, height=220)
              for n, k in enumerate(keys)]
    if not charts:
        return "<p class='note'>metrics.jsonl has no numeric values yet.</p>"
    return f"<div class='charts'>{''.join(charts)}</div>"


def _summary(summary: Any) -> str:
    """First vs final logged values, then any other summary fields."""
    if not isinstance(summary, dict):
        return "<p class='note'>No summary.json (the run may still be going or was interrupted).</p>"
    first, final = summary.get("first"), summary.get("final")
    out = ""
    if isinstance(final, dict):
        first = first if isinstance(first, dict) else {}
        body = [[f"<td class='text'>{esc(k)}</td>", esc(fmt(first.get(k))), esc(fmt(v)),
                 esc(fmt(v - first[k], 3, True)) if _num(v) and _num(first.get(k)) else "—"]
                for k, v in final.items() if _num(v) and k != "step"]
        out += table(["value", "first step", "final step", "change"], body)
    rest = [(k, v) for k, v in summary.items() if k not in ("first", "final")]
    return out + meta_list((k, v if not isinstance(v, float) else fmt(v)) for k, v in rest)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sample_order(path: Path) -> tuple[int, int, str]:
    """step-000020.png by step; final.png last; other names alphabetically in between."""
    m = re.search(r"(\d+)", path.stem)
    if path.stem == "final":
        return (2, 0, path.name)
    return (0, int(m.group(1)), path.name) if m else (1, 0, path.name)


def _samples(folder: Path) -> str:
    """Each samples/*.png sheet, upscaled by an integer factor (pixelated) when small."""
    files = sorted((folder / "samples").glob("*.png"), key=_sample_order) if (folder / "samples").is_dir() else []
    if not files:
        return "<p class='note'>No sample sheets in samples/.</p>"
    figs = []
    for path in files:
        rel = f"samples/{path.name}"
        width = None
        try:
            from PIL import Image

            with Image.open(path) as im:
                w, h = im.size
            width = w * max(1, min(8, 512 // max(w, h, 1)))
        except Exception:  # not a readable image: link it at natural size
            pass
        figs.append(f"<figure>{image(folder, rel, cls='sheet', alt=path.stem, width=width)}"
                    f"<figcaption>{esc(path.name)}</figcaption></figure>")
    return ("<p class='note'>Each sheet's rows are (Î0 | mask M(Î0) | Î) for a training prompt: the frozen "
            "model's image, its problem mask, and the fine-tuned model's image.</p>"
            f"<div class='charts'>{''.join(figs)}</div>")


def render_run(folder: Path, title: str | None = None) -> str:
    """The whole report page for a training run folder, as HTML."""
    cfg, cfg_text = _config(folder)
    records = [r for r in read_jsonl(folder / "metrics.jsonl", torn_tail_ok=True) if isinstance(r, dict)] if (folder / "metrics.jsonl").is_file() else []
    summary = read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    method = (summary or {}).get("method") if isinstance(summary, dict) else None
    title = title or f"focusnfix run: {folder.resolve().name}"
    intro = meta_list([("method", method or cfg.get("method")), ("model", _get(cfg, "model.path")),
                       ("reward", _get(cfg, "reward.name")), ("lambda", _get(cfg, "objective.lam")),
                       ("logged steps", len(records) or None)])
    sections = [("summary", "Summary", _summary(summary)),
                ("curves", "Training curves", _curves(records) if records else "<p class='note'>No metrics.jsonl.</p>"),
                ("samples", "Samples", _samples(folder))]
    if cfg_text:
        sections.append(("config", "Configuration", f"<p><a href='{url('config.yaml')}'>config.yaml</a></p><pre>{esc(cfg_text)}</pre>"))
    return page(str(title), sections, intro)
