"""Tables of an eval folder's report: per-method summary and per-category paired differences.

Rows are samples.jsonl records (one per sample and method). Differences are paired against the
reference method on the same sample (:mod:`focusnfix.evaluation.stats`). A metric written as null with
``<metric>_inf: true`` (PSNR of identical regions) counts as +inf: shown as "∞", left out of means and
of paired differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..evaluation.stats import category_table, paired_stats, paired_values
from .page import esc, fmt, fmt_ci, fmt_p, table

ALIGNMENT_METRICS = ("alignment", "clip_score")


@dataclass
class Metric:
    """One metric column: ``name`` in samples.jsonl, display ``label``, direction."""
    name: str
    label: str
    higher_is_better: bool

    @property
    def heading(self) -> str:
        return f"{esc(self.label)} {'↑' if self.higher_is_better else '↓'}"


def finite(value: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def has_values(rows: list[dict[str, Any]], metric: str) -> bool:
    """Whether any row has a number (or an ∞ flag) for ``metric``."""
    return any(finite(r.get(metric)) or r.get(f"{metric}_inf") for r in rows)


def mean_of(rows: list[dict[str, Any]], metric: str) -> tuple[float | None, int, int]:
    """(mean over finite values, number of finite values, number flagged ∞); mean = inf if all ∞."""
    vals = [float(r[metric]) for r in rows if finite(r.get(metric))]
    n_inf = sum(1 for r in rows if r.get(f"{metric}_inf"))
    if vals:
        return sum(vals) / len(vals), len(vals), n_inf
    return (math.inf if n_inf else None), 0, n_inf


def paired(rows: list[dict[str, Any]], metric: str, method: str, reference: str) -> dict[str, Any]:
    """:func:`paired_stats` of ``metric`` for ``method`` minus ``reference`` on shared samples."""
    a, b, _ = paired_values(rows, metric, method, reference)
    return paired_stats(a, b)


def win_rate(rows: list[dict[str, Any]], method: str, reference: str, metric: str = "reward") -> float | None:
    """Fraction of shared samples where ``method`` beats ``reference`` on ``metric`` (ties count 0.5)."""
    a, b, _ = paired_values(rows, metric, method, reference)
    pairs = [(x, y) for x, y in zip(a, b) if finite(x) and finite(y)]
    if not pairs:
        return None
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)


def _delta_html(stats: dict[str, Any], higher_is_better: bool) -> str:
    """"Δ +x [lo, hi]", green/red when the CI excludes 0 in the good/bad direction."""
    d, ci = stats["mean_diff"], stats["ci"]
    if d is None:
        return ""
    cls = "muted"
    if ci is not None and (ci[0] > 0 or ci[1] < 0):
        cls = "good" if (d > 0) == higher_is_better else "bad"
    return f"<br><small class='{cls}'>Δ {esc(fmt(d, 3, True))} {esc(fmt_ci(ci))}</small>"


def summary_table(rows: list[dict[str, Any]], methods: list[str], reference: str, metrics: list[Metric]) -> str:
    """Per method: mean of every metric with the paired change vs the reference (95% CI), and the
    reward win rate vs the reference."""
    header = ["method", "n", *[m.heading for m in metrics], f"reward win rate vs {esc(reference)}"]
    body, classes, notes = [], [], []
    for method in methods:
        mine = [r for r in rows if r.get("method") == method]
        cells = [f"<b>{esc(method)}</b>", str(len(mine))]
        for m in metrics:
            mean, n_finite, n_inf = mean_of(mine, m.name)
            cell = esc(fmt(mean)) + ("*" if n_inf and n_finite else "")
            if n_inf:
                notes.append(f"{esc(m.label)}: {esc(method)} {n_inf}/{len(mine)} ∞")
            if method != reference:
                cell += _delta_html(paired(rows, m.name, method, reference), m.higher_is_better)
            cells.append(cell)
        wr = None if method == reference else win_rate(rows, method, reference)
        cells.append("—" if wr is None else f"{100 * wr:.1f}%")
        body.append(cells)
        classes.append("ref" if method == reference else "")
    note = ("<p class='note'>Cells: mean over samples; Δ = paired mean change vs "
            f"<b>{esc(reference)}</b> on the same (prompt, seed) with its 95% Student-t CI (green / red: CI "
            "excludes 0 in the good / bad direction; ↑ higher is better, ↓ lower is better). Win rate: share "
            "of samples whose reward beats the reference's, ties count ½.")
    if notes:
        note += (" Identical regions give PSNR = ∞: such samples are left out of means (* marks a mean over "
                 "the finite rest) and of paired changes — " + "; ".join(notes) + ".")
    return f"<div class='wide'>{table(header, body, classes)}</div>{note}</p>"


def alignment_metric(rows: list[dict[str, Any]], metrics: dict[str, Metric]) -> Metric | None:
    """The prompt-alignment metric to break down by category: alignment, else clip_score, else None."""
    for name in ALIGNMENT_METRICS:
        if has_values(rows, name):
            return metrics.get(name) or Metric(name, name, True)
    return None


def category_section(rows: list[dict[str, Any]], methods: list[str], reference: str, metric: Metric) -> str:
    """Per method, per category: paired change of ``metric`` vs the reference with CI, p and Holm p."""
    header = ["category", "n", f"{esc(reference)} mean", "method mean", "Δ", "95% CI", "p", "p (Holm)"]
    parts = []
    for method in methods:
        if method == reference:
            continue
        entries = category_table(rows, metric.name, method, reference)
        if not entries:
            continue
        body = [[f"<td class='text'>{esc(e['category'])}</td>", str(e["n"]), esc(fmt(e["mean_b"])), esc(fmt(e["mean_a"])),
                 _delta_cell(e, metric), esc(fmt_ci(e["ci"])), esc(fmt_p(e["p"])), esc(fmt_p(e["p_holm"]))]
                for e in entries]
        total = paired(rows, metric.name, method, reference)
        body.append(["<td class='text'>all</td>", str(total["n"]), esc(fmt(total["mean_b"])), esc(fmt(total["mean_a"])),
                     _delta_cell(total, metric), esc(fmt_ci(total["ci"])), esc(fmt_p(total["p"])), ""])
        parts.append(f"<h3>{esc(method)} vs {esc(reference)}</h3>"
                     + table(header, body, [""] * len(entries) + ["total"]))
    note = (f"<p class='note'>{esc(metric.label)}: paired change per prompt category; two-sided paired t-test per "
            "category, Holm–Bonferroni adjusted across the categories of each method. The 'all' row pools every "
            "category (not part of the correction).</p>")
    return note + "".join(parts)


def _delta_cell(stats: dict[str, Any], metric: Metric) -> str:
    d, ci = stats["mean_diff"], stats["ci"]
    cls = ""
    if d is not None and ci is not None and (ci[0] > 0 or ci[1] < 0):
        cls = " class='good'" if (d > 0) == metric.higher_is_better else " class='bad'"
    return f"<td{cls}>{esc(fmt(d, 3, True))}</td>"
