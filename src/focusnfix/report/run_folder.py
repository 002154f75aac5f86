"""Report for a training run folder: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``samples/*.png``."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .page import esc, fmt, image, meta_list, page, read_json, read_jsonl, table, url
from .plots import Series, color, line_chart

CURVE_ORDER = ("loss", "reward", "constraint", "outside_change", "lam", "k", "mask_frac", "grad_norm", "lr",
               "seconds")


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
    charts = [line_chart([Series("", steps, [r.get(k) for r in records], color(n))], k, "step", k, width=360,
                         height=220)
              for n, k in enumerate(keys)]
    if not charts:
        return "<p class='note'>metrics.jsonl has no numeric values yet.</p>"
    return f"<div class='charts'>{''.join(charts)}</div>"


def window_size(n: int) -> int:
    """Logged steps averaged at each end of a run of ``n`` logged steps: max(5, n // 10), at most half of them."""
    return max(1, min(max(5, n // 10), n // 2)) if n else 0


def window_means(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float], int]:
    """(means over the first N records, means over the last N records, N) per numeric key except step;
    N = :func:`window_size`. A key with no finite value in a window is left out of that window."""
    n = window_size(len(records))

    def means(window: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in dict.fromkeys(k for r in window for k in r):
            vals = [float(r[key]) for r in window if _num(r.get(key)) and math.isfinite(r[key])]
            if key != "step" and vals:
                out[key] = sum(vals) / len(vals)
        return out

    return (means(records[:n]), means(records[-n:]), n) if n else ({}, {}, 0)


def _summary(summary: Any, records: list[dict[str, Any]]) -> str:
    """Start vs end of training: means over windows of logged steps (one step is one noisy batch), then
    the other summary fields."""
    out = ""
    if len(records) >= 2:
        first, final, n = window_means(records)
        head = [f"first {n} logged steps", f"last {n} logged steps"]
        steps = [r.get("step") for r in records]
        note = (f"<p class='note'>Means over the first {n} and the last {n} of {len(records)} logged steps "
                f"(window N = max(5, logged steps / 10), at most half of them; "
                f"steps {esc(steps[0])}–{esc(steps[n - 1])} "
                f"and {esc(steps[-n])}–{esc(steps[-1])}): one step is one small batch, too noisy to compare alone.</p>")
    elif isinstance(summary, dict) and isinstance(summary.get("final"), dict):
        first = summary["first"] if isinstance(summary.get("first"), dict) else {}
        final, head = summary["final"], ["first step", "final step"]
        note = "<p class='note'>Single logged steps from summary.json (no metrics.jsonl to average over): noisy.</p>"
    else:
        first, final, head, note = {}, {}, [], ""
    if final:
        body = [[f"<td class='text'>{esc(k)}</td>", esc(fmt(first.get(k))), esc(fmt(v)),
                 esc(fmt(v - first[k], 3, True)) if _num(v) and _num(first.get(k)) else "—"]
                for k, v in final.items() if _num(v) and k != "step"]
        out += table(["value", *head, "change"], body) + note
    if not isinstance(summary, dict):
        return out + "<p class='note'>No summary.json (the run may still be going or was interrupted).</p>"
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


SHEET_COLUMNS = ("Î0: frozen model", "mask", "Î: fine-tuned")


def _sheet_rows(cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """(prompt, seed) of each sheet row, in the trainer's order: data.sample_prompts (default: the first 4
    training prompts) x data.sample_seeds (default [0]); [] when the config does not say."""
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    prompts = [str(p) for p in data.get("sample_prompts") or []]
    if not prompts and (data.get("prompts") or data.get("prompt_file") or data.get("prompt_set")):
        try:
            from ..prompts import resolve_prompts

            prompts = resolve_prompts(list(data.get("prompts") or []), data.get("prompt_file"),
                                      data.get("prompt_set"))[:4]
        except Exception:  # a prompt file that moved, a set not installed: rows stay unlabelled
            prompts = []
    seeds = data.get("sample_seeds") if isinstance(data.get("sample_seeds"), list) else [0]
    return [(p, s) for p in prompts for s in seeds]


def _sheet_step(path: Path, last_step: Any) -> str:
    m = re.fullmatch(r"step-0*(\d+)", path.stem)
    if m:
        return f"step {m.group(1)}"
    if path.stem == "final":
        return f"final (step {last_step})" if last_step is not None else "final"
    return path.stem


def _rows_match(size: tuple[int, int] | None, n_rows: int, cfg: dict[str, Any]) -> bool:
    """Whether a sheet of ``size`` has ``n_rows`` rows of 3 tiles (tile aspect from sampler height / width)."""
    if size is None or not n_rows:
        return False
    h, w = _get(cfg, "sampler.height"), _get(cfg, "sampler.width")
    aspect = h / w if _num(h) and _num(w) and h > 0 and w > 0 else 1.0
    return round(size[1] / size[0] * 3 / aspect) == n_rows


def _sheet(folder: Path, path: Path, rows: list[tuple[str, Any]], step: str, cfg: dict[str, Any]) -> str:
    """One sheet with HTML captions: its step above, column names over it, (prompt, seed) beside each row."""
    rel = f"samples/{path.name}"
    size = width = height = None
    try:
        from PIL import Image

        with Image.open(path) as im:
            size = im.size
        factor = max(1, min(8, 512 // max(*size, 1)))
        width, height = size[0] * factor, size[1] * factor
    except Exception:  # not a readable image: link it at natural size
        pass
    img = image(folder, rel, cls="sheet", alt=f"{step}: {', '.join(SHEET_COLUMNS)}", width=width, height=height)
    cols = "".join(f"<span>{esc(c)}</span>" for c in SHEET_COLUMNS)
    caption = f"<figcaption><b>{esc(step)}</b> · {esc(path.name)}</figcaption>"
    if _rows_match(size, len(rows), cfg):
        heads = "".join(f"<div class='rowhead'>{esc(p)}<small>seed {esc(s)}</small></div>" for p, s in rows)
        return (f"<figure>{caption}<div class='sheetgrid' style='--rows:{len(rows)}'>"
                f"<div class='corner'>prompt · seed</div><div class='colheads'>{cols}</div>"
                f"<div class='rowwrap'><div class='rowheads'>{heads}</div></div><div>{img}</div></div></figure>")
    listed = ("<p class='small'>Rows, top to bottom: " + "; ".join(f"{esc(p)} (seed {esc(s)})" for p, s in rows)
              + "</p>") if rows else ""
    return (f"<figure>{caption}<div class='sheetgrid'><div class='corner'></div><div class='colheads'>{cols}</div>"
            f"<div></div><div>{img}</div></div>{listed}</figure>")


def _samples(folder: Path, cfg: dict[str, Any], last_step: Any) -> str:
    """Each samples/*.png sheet, upscaled by an integer factor (pixelated) when small, with its step, the
    column names and each row's prompt and seed (from config.yaml) as HTML captions."""
    files = sorted((folder / "samples").glob("*.png"), key=_sample_order) if (folder / "samples").is_dir() else []
    if not files:
        return "<p class='note'>No sample sheets in samples/.</p>"
    rows = _sheet_rows(cfg)
    figs = [_sheet(folder, path, rows, _sheet_step(path, last_step), cfg) for path in files]
    return ("<p class='note'>Each sheet's rows are (Î0 | mask | Î) for a sample prompt and seed: the frozen "
            "model's image, the problem mask (Focus-N-Fix: M(Î0) over Î0), and the fine-tuned model's image.</p>"
            f"<div class='charts'>{''.join(figs)}</div>")


def _weight(cfg: dict, method) -> tuple[str, object]:
    """The constraint's weight as the run used it: lambda (fnf) or its collateral budget (λ then found during
    training), the KL weight (fnf-grpo, ``grpo.kl_weight`` or its former key ``objective.lam``), none for DRaFT
    and plain GRPO."""
    if method == "fnf-grpo":
        kl = _get(cfg, "grpo.kl_weight")
        return "KL weight", kl if kl is not None else _get(cfg, "objective.lam")
    if method in ("fnf", None) and _get(cfg, "objective.budget") is not None:  # λ: found during training (curve)
        return "collateral budget (grey levels)", _get(cfg, "objective.budget")
    return "lambda", _get(cfg, "objective.lam") if method in ("fnf", None) else None


def render_run(folder: Path, title: str | None = None) -> str:
    """The whole report page for a training run folder, as HTML."""
    cfg, cfg_text = _config(folder)
    records = ([r for r in read_jsonl(folder / "metrics.jsonl", torn_tail_ok=True) if isinstance(r, dict)]
               if (folder / "metrics.jsonl").is_file() else [])
    summary = read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    method = (summary or {}).get("method") if isinstance(summary, dict) else None
    title = title or f"focusnfix run: {folder.resolve().name}"
    intro = meta_list([("method", method or cfg.get("method")), ("model", _get(cfg, "model.path")),
                       ("reward", _get(cfg, "reward.name")), _weight(cfg, method or cfg.get("method")),
                       ("logged steps", len(records) or None)])
    last_step = (summary or {}).get("steps") if isinstance(summary, dict) else None
    if last_step is None and records:
        last_step = records[-1].get("step")
    sections = [("summary", "Summary", _summary(summary, records)),
                ("curves", "Training curves", _curves(records) if records else "<p class='note'>No metrics.jsonl.</p>"),
                ("samples", "Samples", _samples(folder, cfg, last_step))]
    if cfg_text:
        sections.append(("config", "Configuration",
                         f"<p><a href='{url('config.yaml')}'>config.yaml</a></p><pre>{esc(cfg_text)}</pre>"))
    return page(str(title), sections, intro)
