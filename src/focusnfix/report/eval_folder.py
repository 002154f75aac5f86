"""Report for an eval folder (written by ``focusnfix eval``).

Contract (all paths relative to the folder):
- ``eval.json``: title, model, reward, methods (display order), reference, prompt_set, seeds,
  metrics {name: {label, higher_is_better[, judge, training_reward]}} (an entry may be null: metric not measured;
  ``judge``: a ``--judge`` metric, which leads "At a glance"), judges (optional: their summary with CIs);
- ``samples.jsonl``: one record per (sample, method): i, prompt, category, seed, method, image, mask,
  heatmap and one float-or-null per metric (``<metric>_inf: true`` marks +inf, e.g. PSNR vs itself);
- ``curves/<method>.jsonl`` (optional): a trained method's training metrics.jsonl.

Besides ``report.html`` the report writes ``report-diffs/`` (the amplified |Î − Î0| images of the sample grids,
:mod:`.diffs`), rewritten at each render.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.folder import load_eval
from ..evaluation.stats import sample_key
from ..rating.storage import DB_NAME
from .eval_tables import (Metric, alignment_metric, category_section, finite, has_values, is_rate, judges_table,
                          paired, short_label, summary_table)
from .glance import headline
from .grid import Grid, previews, sample_grid
from .page import esc, meta_list, page, read_jsonl, table, url
from .plots import Point, Series, color, legend, line_chart, scatter_chart
from .ratings import ratings_section


def _methods(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """eval.json's order, then any other method seen in the rows."""
    order = [str(m) for m in meta.get("methods") or []]
    for r in rows:
        if r.get("method") is not None and str(r["method"]) not in order:
            order.append(str(r["method"]))
    return order


def _metrics(meta: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Metric]:
    """Metrics declared in eval.json (null entries dropped) that have at least one value."""
    out = {}
    for name, spec in (meta.get("metrics") or {}).items():
        if isinstance(spec, dict) and has_values(rows, name):
            judge = ("training reward" if spec.get("training_reward") else "independent") if spec.get("judge") else ""
            label = str(spec.get("label") or name)
            out[name] = Metric(name, label, bool(spec.get("higher_is_better", True)), judge, is_rate(rows, name, label))
    if "reward" not in out and has_values(rows, "reward"):
        out = {"reward": Metric("reward", "reward", True), **out}
    return out


def _curve_charts(folder: Path, methods: list[str]) -> str:
    """Training reward and constraint per trained method, from curves/<method>.jsonl."""
    files = sorted((folder / "curves").glob("*.jsonl")) if (folder / "curves").is_dir() else []
    if not files:
        return "<p class='note'>No training curves (curves/&lt;method&gt;.jsonl) in this folder.</p>"
    files.sort(key=lambda p: (methods.index(p.stem) if p.stem in methods else len(methods), p.stem))
    charts = []
    for key in ("reward", "constraint"):
        series = []
        for path in files:
            recs = [r for r in read_jsonl(path, torn_tail_ok=True) if isinstance(r, dict)]
            if any(finite(r.get(key)) for r in recs):
                k = methods.index(path.stem) if path.stem in methods else len(methods) + files.index(path)
                series.append(Series(path.stem, [r.get("step", j + 1) for j, r in enumerate(recs)],
                                     [r.get(key) for r in recs], color(k)))
        if series:
            charts.append(line_chart(series, f"training {key}", "step", key))
    links = " ".join(f"<a href='{url('curves/' + p.name)}'>{esc(p.name)}</a>" for p in files)
    return f"<div class='charts'>{''.join(charts)}</div><p class='note'>Per-step training logs: {links}.</p>"


def _tradeoff_charts(rows, methods: list[str], reference: str, metrics: dict[str, Metric]) -> str:
    """Target gain (reward change) against collateral change: outside-mask MSE, and alignment."""
    if "reward" not in metrics:
        return ""
    ys = [m for m in ("outside_mse",) if m in metrics]
    align = alignment_metric(rows, metrics)
    ys += [align.name] if align else []
    charts, shown = [], {}
    for y in ys:
        points = []
        for k, method in enumerate(methods):
            if method == reference:
                continue
            sx, sy = paired(rows, "reward", method, reference), paired(rows, y, method, reference)
            scale = 100.0 if metrics[y].percent else 1.0  # a rate: its change in percentage points
            if sx["mean_diff"] is not None and sy["mean_diff"] is not None:
                points.append(Point(method, sx["mean_diff"], scale * sy["mean_diff"], color(k),
                                    tuple(sx["ci"]) if sx["ci"] else None,
                                    tuple(scale * v for v in sy["ci"]) if sy["ci"] else None))
                shown[method] = color(k)
        label = metrics[y].label
        unit = " (pts)" if metrics[y].percent else ""
        charts.append(scatter_chart(points, f"Δ {label} vs target gain", f"Δ reward vs {reference}",
                                    f"Δ {label}{unit}", origin_label=reference))
    return (legend(list(shown.items())) + f"<div class='charts'>{''.join(charts)}</div>"
            "<p class='note'>One point per method: paired mean change "
            f"vs {esc(reference)} with 95% CIs as bars. Focus-N-Fix aims right (reward up) while staying near "
            "y = 0 on outside-mask change (little collateral damage) and on alignment.</p>")


def _method_specs(meta: dict[str, Any], methods: list[str]) -> str:
    """eval.json's optional method_specs {method: {kind, path, params...}} as a small table."""
    specs = meta.get("method_specs")
    if not isinstance(specs, dict) or not specs:
        return ""
    body = []
    for m in [m for m in methods if m in specs] + [m for m in specs if m not in methods]:
        spec = specs[m] if isinstance(specs[m], dict) else {"kind": specs[m]}
        params = ", ".join(f"{k} = {v}" for k, v in spec.items() if k != "kind" and v is not None)
        body.append([f"<b>{esc(m)}</b>", esc(spec.get("kind", "")), f"<td class='text'>{esc(params)}</td>"])
    return "<h3>Methods</h3>" + table(["method", "kind", "settings"], body)


def render_eval(folder: Path, title: str | None = None) -> str:
    """The whole report page for an eval folder, as HTML: a headline table and the worst samples first,
    then the full tables, plots and the sample grid."""
    meta, rows = load_eval(folder)
    methods = _methods(meta, rows)
    reference = str(meta.get("reference") or (methods[0] if methods else "base"))
    metrics = _metrics(meta, rows)
    title = title or meta.get("title") or f"focusnfix eval: {folder.resolve().name}"
    seeds, sampler = meta.get("seeds"), meta.get("sampler")
    n_samples = len({sample_key(r) for r in rows})
    context = " · ".join(esc(x) for x in (
        f"reward {meta['reward']}" if meta.get("reward") else "", f"model {meta['model']}" if meta.get("model") else "",
        f"{n_samples} (prompt, seed) pairs × {len(methods)} methods", f"reference {reference}") if x)
    setup = meta_list([("model", meta.get("model")), ("reward", meta.get("reward")),
                       ("prompt set", meta.get("prompt_set")),
                       ("seeds", ", ".join(map(str, seeds)) if isinstance(seeds, list) else seeds),
                       ("samples", f"{n_samples} (prompt, seed) pairs × {len(methods)} methods"),
                       ("methods", ", ".join(methods)), ("reference", reference),
                       ("sampler",
                        ", ".join(f"{k} {v}" for k, v in sampler.items()) if isinstance(sampler, dict) else sampler)])
    files = "".join(f"<a href='{url(n)}'>{esc(n)}</a> " for n in ("eval.json", "samples.jsonl")
                    if (folder / n).is_file())
    setup += _method_specs(meta, methods) + f"<p class='small'>Data: {files}</p>"
    sections = [("summary", "Summary", summary_table(rows, methods, reference, list(metrics.values())))]
    judges = judges_table(meta.get("judges") or {}, methods, reference) if isinstance(meta.get("judges"), dict) else ""
    if judges:
        sections.append(("judges", "Judges", judges))
    sections.append(("setup", "Setup", setup))
    if (folder / DB_NAME).is_file():  # a `focusnfix rate` study of this folder: its summary
        sections.append(("ratings", "Human ratings", ratings_section(folder / DB_NAME)))
    align = alignment_metric(rows, metrics)
    if align is not None:
        sections.append(("categories", f"Per-category {short_label(align)}",
                         category_section(rows, methods, reference, align)))
    sections.append(("tradeoff", "Trade-off", _tradeoff_charts(rows, methods, reference, metrics)))
    sections.append(("curves", "Training curves", _curve_charts(folder, methods)))
    grid = Grid(folder, rows, methods, reference, metrics)
    sections.append(("samples", "Samples", sample_grid(grid)))
    top = headline(meta, rows, methods, reference, metrics) + previews(grid, meta)
    return page(str(title), sections, f"<p class='context'>{context}</p>", top)
