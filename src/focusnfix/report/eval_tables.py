"""Tables of an eval folder's report: per-method summary and per-category paired differences.

Rows are samples.jsonl records (one per sample and method). Differences are paired against the
reference method on the same sample (:mod:`focusnfix.evaluation.stats`). A metric written as null with
``<metric>_inf: true`` (PSNR of identical regions) counts as +inf: shown as "∞", left out of means and
of paired differences. Rates (defect and collateral rates, 0/1 judges) are shown as percentages, their changes
in percentage points (:func:`is_rate`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..evaluation.stats import category_table, finite, mean_of, paired_stats, paired_values
from .page import esc, fmt, fmt_ci, fmt_p, fmt_pct, fmt_pct_ci, table

ALIGNMENT_METRICS = ("alignment", "clip_score")


@dataclass
class Metric:
    """One metric column: ``name`` in samples.jsonl, display ``label``, direction."""
    name: str
    label: str
    higher_is_better: bool
    judge: str = ""  # a judge given with `focusnfix eval --judge`: "independent" or "training reward"
    percent: bool = False  # a rate (share of images): shown as a percentage, changes in percentage points

    def show(self, value: Any, digits: int = 4, signed: bool = False) -> str:
        """A mean (``signed``: a change) of this metric as text: a percentage (points) for a rate."""
        return fmt_pct(value, signed) if self.percent and finite(value) else fmt(value, digits, signed)

    def show_ci(self, ci: Any) -> str:
        return fmt_pct_ci(ci) if self.percent else fmt_ci(ci)

    @property
    def role(self) -> str:
        """What a change of this metric means, which decides how it is coloured:
        "intended" (change inside the problem mask: wanted, judged by the target reward, never coloured),
        "cost" (time: not a quality result, never coloured), "collateral" (change outside the mask: less
        is better) or "quality" (the target reward, alignment, defect rates...)."""
        name = self.name.lower()
        if name.startswith("inside_"):
            return "intended"
        if name == "seconds" or name.endswith("_seconds") or "seconds" in self.label.lower():
            return "cost"
        return "collateral" if name.startswith("outside_") else "quality"

    @property
    def scored(self) -> bool:
        """Whether a change is better or worse (so an arrow and green / red): quality and collateral metrics."""
        return self.role in ("quality", "collateral")

    @property
    def heading(self) -> str:
        return f"{esc(self.label)} {'↑' if self.higher_is_better else '↓'}" if self.scored else esc(self.label)


_RATE = re.compile(r"^(defect|collateral)_|_(rate|fraction)$")


def is_rate(rows: list[dict[str, Any]], name: str, label: str = "") -> bool:
    """Whether a metric's mean is a share of images, shown as a percentage: defect and collateral rates
    (``defect_*``, ``collateral_*``), ``*_rate`` / ``*_fraction``, a label that says "rate", or a quality metric
    whose every value is 0 or 1 (a yes/no judge, the world's alignment oracle)."""
    if _RATE.search(name.lower()) or re.search(r"\brate\b", label.lower()):
        return True
    if name.lower().startswith(("inside_", "outside_")) or "seconds" in name.lower():
        return False
    values = [r.get(name) for r in rows if finite(r.get(name))]
    return len(values) >= 2 and all(float(v) in (0.0, 1.0) for v in values)


def has_values(rows: list[dict[str, Any]], metric: str) -> bool:
    """Whether any row has a number (or an ∞ flag) for ``metric``."""
    return any(finite(r.get(metric)) or r.get(f"{metric}_inf") for r in rows)


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


def _significance(stats: dict[str, Any], higher_is_better: bool) -> str:
    """"good" / "bad" when the 95% CI excludes 0 in the better / worse direction, else ""."""
    d, ci = stats["mean_diff"], stats["ci"]
    if d is None or ci is None or not (ci[0] > 0 or ci[1] < 0):
        return ""
    return "good" if (d > 0) == higher_is_better else "bad"


def delta_html(stats: dict[str, Any], metric: Metric, with_ci: bool = True) -> str:
    """"Δ +x [lo, hi]", green / red when the CI excludes 0 in the good / bad direction; neutral grey for
    metrics whose change is not a quality result (intended change inside the mask, time)."""
    d, ci = stats["mean_diff"], stats["ci"]
    if d is None:
        return ""
    cls = ((_significance(stats, metric.higher_is_better) if metric.scored else "")
           or ("muted" if metric.scored else "neutral"))
    text = f"Δ {esc(metric.show(d, 3, True))}" + (f" {esc(metric.show_ci(ci))}" if with_ci else "")
    title = "" if with_ci else f" title='95% CI {esc(metric.show_ci(ci))}'"
    return f"<br><small class='{cls}'{title}>{text}</small>"


GROUPS = (("quality", "Target and quality",
           "↑ / ↓: the better direction; green / red: the 95% CI of the change excludes 0 in the better / worse "
           "direction"),
          ("collateral", "Change outside the mask", "collateral change: less is better"),
          ("intended", "Change inside the mask",
           "intended change: not scored here (neutral), the target reward says whether it helped"),
          ("cost", "Cost", "time, not a quality result: not coloured"))
WARM_UP = "each method's first batch was an untimed warm-up"
COLD = ("every batch was timed, so the times include each method's cold first batch (an eval written before "
        "warm-up batches), most of all the method generated first")


def _metric_cell(rows, mine, method: str, reference: str, m: Metric, notes: list[str]) -> str:
    mean, n_finite, n_inf = mean_of(mine, m.name)
    cell = esc(m.show(mean)) + ("*" if n_inf and n_finite else "")
    if n_inf:
        notes.append(f"{esc(m.label)}: {esc(method)} {n_inf}/{len(mine)} ∞")
    if method != reference:
        cell += delta_html(paired(rows, m.name, method, reference), m)
    return f"<td data-metric='{esc(m.name)}' data-method='{esc(method)}'>{cell}</td>"


def summary_table(rows: list[dict[str, Any]], methods: list[str], reference: str, metrics: list[Metric]) -> str:
    """One row per metric, one column per method (so many metrics stay readable): mean with the paired
    change vs the reference (95% CI), grouped by what a change means, and the reward win rate."""
    header = ["<th class='text'>metric</th>",
              *[f"<b>{esc(m)}</b>" + ("<br><small>reference</small>" if m == reference else "") for m in methods]]
    by_method = {m: [r for r in rows if r.get("method") == m] for m in methods}
    body, classes, notes = [], [], []
    body.append(["<th class='text'>n</th>", *[str(len(by_method[m])) for m in methods]])
    classes.append("")
    for role, title, hint in GROUPS:
        group = [m for m in metrics if m.role == role]
        if not group:
            continue
        if role == "cost":
            timed = [r for r in rows if r.get("method") in by_method and any(m.name in r for m in group)]
            warm = any(r.get(m.name) is None for r in timed for m in group)
            hint = f"{hint}; {WARM_UP if warm else COLD}"
        body.append([f"<th class='text' colspan='{len(methods) + 1}'>{esc(title)} <small>({esc(hint)})</small></th>"])
        classes.append("group")
        for m in group:
            body.append([f"<th class='text' data-metric='{esc(m.name)}'>{m.heading}</th>",
                         *[_metric_cell(rows, by_method[x], x, reference, m, notes) for x in methods]])
            classes.append("")
        if role == "quality" and any(m.name == "reward" for m in metrics):
            wins = [None if x == reference else win_rate(rows, x, reference) for x in methods]
            body.append([f"<th class='text'>reward win rate vs {esc(reference)}</th>",
                         *["—" if w is None else f"{100 * w:.1f}%" for w in wins]])
            classes.append("")
    note = ("<p class='note'>Cells: mean over samples; Δ = paired mean change vs "
            f"<b>{esc(reference)}</b> on the same (prompt, seed) with its 95% Student-t CI. Colour follows intent: "
            "the target reward, quality and change outside the mask are green / red when the CI excludes 0 in the "
            "better / worse direction; change inside the mask (intended) and time are never coloured. Win rate: "
            "share of samples whose reward beats the reference's, ties count ½. Rates are percentages of images, their "
            "changes Δ in percentage points (pts).")
    if notes:
        note += (" Identical regions give PSNR = ∞: such samples are left out of means (* marks a mean over "
                 "the finite rest) and of paired changes — " + "; ".join(notes) + ".")
    return f"{table(header, body, classes, cls='metrics')}{note}</p>"


HEADLINE_LABELS = {"outside_grey": "|change| outside mask (grey levels)",
                   "collateral_35": "collateral rate (PSNR out < 35 dB)", "outside_mae": "|change| outside mask",
                   "outside_mse": "MSE outside mask",
                   "outside_ssim": "SSIM outside mask", "outside_psnr": "PSNR outside mask (dB)",
                   "reward": "target reward"}


def short_label(metric: Metric) -> str:
    """A compact label for narrow columns: a known short name, else the label without a trailing
    parenthetical ("artifact rate (defect judge)" -> "artifact rate")."""
    return HEADLINE_LABELS.get(metric.name) or re.sub(r"\s*\([^()]*\)\s*$", "", metric.label) or metric.label


def alignment_metric(rows: list[dict[str, Any]], metrics: dict[str, Metric]) -> Metric | None:
    """The prompt-alignment metric to break down by category: alignment, else clip_score, else None."""
    for name in ALIGNMENT_METRICS:
        if has_values(rows, name):
            return metrics.get(name) or Metric(name, name, True)
    return None


def category_section(rows: list[dict[str, Any]], methods: list[str], reference: str, metric: Metric) -> str:
    """Per method, per category: paired change of ``metric`` vs the reference with CI, p and Holm p."""
    header = ["category", "n", f"{esc(reference)} mean", "method mean", "Δ <small>(95% CI)</small>", "p", "p (Holm)"]
    parts = []
    for method in methods:
        if method == reference:
            continue
        entries = category_table(rows, metric.name, method, reference)
        if not entries:
            continue
        body = [[f"<td class='text'>{esc(e['category'])}</td>", str(e["n"]), esc(metric.show(e["mean_b"])),
                 esc(metric.show(e["mean_a"])), _delta_cell(e, metric), esc(fmt_p(e["p"])), esc(fmt_p(e["p_holm"]))]
                for e in entries]
        total = paired(rows, metric.name, method, reference)
        body.append(["<td class='text'>all</td>", str(total["n"]), esc(metric.show(total["mean_b"])),
                     esc(metric.show(total["mean_a"])),
                     _delta_cell(total, metric), esc(fmt_p(total["p"])), ""])
        parts.append(f"<h3>{esc(method)} vs {esc(reference)}</h3>"
                     + table(header, body, [""] * len(entries) + ["total"]))
    note = (f"<p class='note'>{esc(metric.label)}: paired change per prompt category; two-sided paired t-test per "
            "category, Holm–Bonferroni adjusted across the categories of each method. The 'all' row pools every "
            "category (not part of the correction).</p>")
    return note + "".join(parts)


def _delta_cell(stats: dict[str, Any], metric: Metric) -> str:
    cls = _significance(stats, metric.higher_is_better) if stats["mean_diff"] is not None and metric.scored else ""
    attr = f" class='{cls}'" if cls else ""
    ci = f"<br><small>{esc(metric.show_ci(stats['ci']))}</small>" if stats["mean_diff"] is not None else ""
    return f"<td{attr}>{esc(metric.show(stats['mean_diff'], 3, True))}{ci}</td>"


def judges_table(summary: dict[str, Any], methods: list[str], reference: str) -> str:
    """eval.json's ``judges`` summary: per judge and method, the mean with its 95% CI and the paired change vs
    the reference with its 95% CI (as ``focusnfix eval`` computed them)."""
    header = ["<th class='text'>judge</th>", *[f"<b>{esc(m)}</b>" for m in methods]]
    body = []
    for key, judge in summary.items():
        if not isinstance(judge, dict) or not isinstance(judge.get("methods"), dict):
            continue
        cells = [f"<th class='text' data-metric='{esc(key)}'>{esc(judge.get('label') or key)}</th>"]
        kinds = {(e or {}).get("ci_kind") for e in judge["methods"].values() if (e or {}).get("n")}
        m = Metric(key, str(judge.get("label") or key), True, percent=kinds == {"wilson"})  # a 0/1 judge: a rate
        for method in methods:
            e = judge["methods"].get(method) or {}
            ci = e.get("ci") if isinstance(e.get("ci"), list) and len(e["ci"]) == 2 else None
            cell = esc(m.show(e.get("mean"), 3)) if e.get("n") else "—"
            if ci and e.get("n"):
                lo, hi = (f"{100 * v:.1f}" for v in ci) if m.percent else (fmt(v, 3) for v in ci)
                cell += f" <small>[{esc(lo)}, {esc(hi)}]</small>"
            if method != reference and e.get("delta") is not None:
                cell += f"<br><small>Δ {esc(m.show(e['delta'], 3, True))} {esc(m.show_ci(e.get('delta_ci')))}</small>"
            cells.append(f"<td data-metric='{esc(key)}' data-method='{esc(method)}'>{cell}</td>")
        body.append(cells)
    if not body:
        return ""
    return (table(header, body) + "<p class='note'>Judges named with <code>focusnfix eval --judge</code>, scored on "
            "every image, higher is better; never the training reward unless labelled so. Mean [95% CI: Wilson's for "
            f"a 0/1 judge, else a bootstrap over images]; Δ = paired change vs <b>{esc(reference)}</b> [95% "
            "Student-t CI]. Samples a judge does not apply to (no quoted text for ocr) are left out.</p>")
