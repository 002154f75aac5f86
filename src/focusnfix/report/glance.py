"""The top of an eval report, "At a glance": the headline table, the Focus-N-Fix / DRaFT outside-change ratio
and the collateral rates, and why a defect outside the mask is kept.

Which method is Focus-N-Fix and which DRaFT: eval.json's ``method_specs`` entry ``method`` when it has one, else
the method's name (``fnf``, ``fnf-l0.2``, ``focus...`` are Focus-N-Fix; ``draft...`` is DRaFT). Without both, the
ratio line is left out.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..evaluation.stats import finite, mean_of, paired_values
from .eval_tables import Metric, alignment_metric, delta_html, has_values, paired, short_label
from .page import esc, fmt, fmt_pct, table

HEADLINE_OUTSIDE = ("outside_grey", "outside_mae", "outside_mse", "outside_ssim", "outside_psnr")
RATIO_METRICS = {"outside_grey": "grey levels", "outside_mae": "(0-1 scale)", "outside_mse": "(MSE)"}
COLLATERAL = "collateral_35"
BY_DESIGN = ("Focus-N-Fix changes only the region M(Î0) that the training reward marks as the problem, so a defect "
             "outside that mask (for example an unwanted element in a run trained against the artifact) is kept by "
             "design: a defect rate that DRaFT lowers and Focus-N-Fix does not is DRaFT changing the image outside "
             "the mask, not a Focus-N-Fix regression.")
_FAMILIES = (("draft", re.compile(r"draft", re.I)), ("fnf", re.compile(r"fnf|focus", re.I)))


def family(method: str, spec: Any = None) -> str | None:
    """"fnf" (Focus-N-Fix), "draft" (DRaFT) or None, from the spec's ``method`` entry, else the name."""
    for text in (str(spec.get("method") or "") if isinstance(spec, dict) else "", method):
        for name, pattern in _FAMILIES:
            if pattern.search(text):
                return name
    return None


def fnf_draft_pairs(meta: dict[str, Any], methods: list[str], reference: str) -> list[tuple[str, str]]:
    """(Focus-N-Fix method, DRaFT method) pairs to compare: every Focus-N-Fix method with the first DRaFT one."""
    specs = meta.get("method_specs") if isinstance(meta.get("method_specs"), dict) else {}
    fams = {m: family(m, specs.get(m)) for m in methods if m != reference}
    draft = next((m for m, f in fams.items() if f == "draft"), None)
    return [(m, draft) for m, f in fams.items() if f == "fnf"] if draft else []


def outside_ratio(rows: list[dict[str, Any]], fnf: str, draft: str, metric: str, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any] | None:
    """DRaFT's mean outside change over Focus-N-Fix's, paired over the samples where both are finite, with a 95%
    percentile bootstrap interval over samples (``seed`` fixed: the page is reproducible). ``ratio`` is inf when
    Focus-N-Fix did not change the outside at all; None without paired samples."""
    a, b, _ = paired_values(rows, metric, fnf, draft)
    pairs = np.array([(x, y) for x, y in zip(a, b) if finite(x) and finite(y)], dtype=float).reshape(-1, 2)
    if not len(pairs):
        return None
    mf, md = float(pairs[:, 0].mean()), float(pairs[:, 1].mean())
    idx = np.random.default_rng(seed).integers(0, len(pairs), size=(n_boot, len(pairs)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = pairs[idx, 1].mean(1) / pairs[idx, 0].mean(1)
        ratio = md / mf if mf > 0 else (float("inf") if md > 0 else 1.0)
    boot = np.where(np.isnan(boot), 1.0, boot)  # 0 / 0: no change either way
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": len(pairs), "fnf": mf, "draft": md, "ratio": ratio, "ci": (float(lo), float(hi))}


def _times(x: float) -> str:
    return "∞" if not np.isfinite(x) else f"{x:.2g}" if x < 10 else f"{x:.0f}"


def ratio_line(rows: list[dict[str, Any]], fnf: str, draft: str, metrics: dict[str, Metric]) -> str:
    """One sentence: how many times less (or more) Focus-N-Fix changed the image outside the mask than DRaFT,
    with the collateral rates of both."""
    metric = next((m for m in RATIO_METRICS if m in metrics), None)
    r = outside_ratio(rows, fnf, draft, metric) if metric else None
    if r is None:
        return ""
    f, d, unit = esc(fnf), esc(draft), RATIO_METRICS[metric]
    if r["fnf"] == 0 and r["draft"] == 0:
        head = f"Neither {f} nor {d} changed the image outside the mask"
    elif r["ratio"] >= 1:
        head = f"{f} (Focus-N-Fix) changed the image outside the mask {_times(r['ratio'])}× less than {d} (DRaFT)"
    else:
        head = f"{f} (Focus-N-Fix) changed the image outside the mask {_times(1 / r['ratio'])}× more than {d} (DRaFT)"
    lo, hi = r["ci"]
    text = (f"<b>{head}</b>: mean |Î − Î0| outside M {esc(fmt(r['fnf'], 3))} vs {esc(fmt(r['draft'], 3))} {unit} "
            f"over {r['n']} samples (DRaFT / Focus-N-Fix = {_times(r['ratio'])}, 95% CI {_times(lo)}–{_times(hi)}, "
            "bootstrap over samples)")
    if has_values(rows, COLLATERAL):
        cf, cd = (mean_of([x for x in rows if x.get("method") == m], COLLATERAL)[0] for m in (fnf, draft))
        text += (f"; <b>collateral rate</b> (share of images whose outside changed perceptibly: PSNR outside M "
                 f"&lt; 35 dB) {esc(fmt_pct(cf))} vs {esc(fmt_pct(cd))}")
    return f"<p class='lead' data-ratio='{esc(fnf)}/{esc(draft)}'>{text}.</p>"


def headline_metrics(rows: list[dict[str, Any]], metrics: dict[str, Metric]) -> list[Metric]:
    """The few numbers a reader wants first: the independent judges (``--judge``), the defect rates (the target
    reward when there is neither), prompt alignment, change outside the mask (one of them) and the collateral
    rate, whichever this eval has."""
    judges = sorted((m for m in metrics.values() if m.judge), key=lambda m: m.judge == "training reward")
    chosen = judges + [m for n, m in metrics.items() if n.startswith("defect_")]
    if not chosen and "reward" in metrics:
        chosen.append(metrics["reward"])
    align = alignment_metric(rows, metrics)
    if align is not None:
        chosen.append(align)
    outside = next((metrics[n] for n in HEADLINE_OUTSIDE if n in metrics), None)
    collateral = metrics.get(COLLATERAL) if has_values(rows, COLLATERAL) else None
    return chosen + ([outside] if outside else []) + ([collateral] if collateral else [])


def headline_table(rows: list[dict[str, Any]], methods: list[str], reference: str, metrics: list[Metric]) -> str:
    """Per method, the headline metrics' means with the paired change vs the reference (CI on hover)."""
    header = ["method", *[f"<th title='{esc(m.label)}'>{esc(short_label(m))} {'↑' if m.higher_is_better else '↓'}</th>"
                          for m in metrics]]
    body = []
    for method in methods:
        mine = [r for r in rows if r.get("method") == method]
        cells = [f"<b>{esc(method)}</b>"]
        for m in metrics:
            mean, n_finite, n_inf = mean_of(mine, m.name)
            cell = esc(m.show(mean, 3)) + ("*" if n_inf and n_finite else "")
            if method != reference:
                cell += delta_html(paired(rows, m.name, method, reference), m, with_ci=False)
            cells.append(f"<td data-metric='{esc(m.name)}' data-method='{esc(method)}'>{cell}</td>")
        body.append(cells)
    return table(header, body, ["ref" if m == reference else "" for m in methods])


def headline(meta: dict[str, Any], rows: list[dict[str, Any]], methods: list[str], reference: str,
             metrics: dict[str, Metric]) -> str:
    """The "At a glance" section: the ratio line(s), the headline table and its note."""
    chosen = headline_metrics(rows, metrics)
    if not chosen or not methods:
        return ""
    lines = "".join(ratio_line(rows, f, d, metrics) for f, d in fnf_draft_pairs(meta, methods, reference))
    masked = any(n.startswith("outside_") for n in metrics)
    return ("<section id='headline'><h2>At a glance</h2>" + lines + headline_table(rows, methods, reference, chosen)
            + f"<p class='note'>Means; Δ = paired change vs <b>{esc(reference)}</b>, green / red when its 95% CI "
            "excludes 0 in the better / worse direction; rates in % of images, their Δ in percentage points. All "
            "metrics with CIs: <a href='#summary'>Summary</a>."
            + (" Judges (<code>--judge</code>) lead: independent of the training reward unless labelled so; their CIs: "
               "<a href='#judges'>Judges</a>." if any(m.judge for m in chosen) else "")
            + (f" {esc(BY_DESIGN)}" if masked else "") + "</p></section>")
