"""Operating-point statistics for sweeps of trained methods (numpy and the standard library only).

A *point* is one setting of a method (DRaFT, or Focus-N-Fix at one λ) at one training length,
trained with several training seeds and evaluated on the same (prompt, noise seed) pairs. Its
per-image values form an array ``(S training seeds, N image pairs)``; its value is the mean over
seeds of the per-seed means over images.

Uncertainty (:func:`bootstrap_ci`): a two-stage percentile bootstrap. Each replicate draws S
training seeds with replacement and N image pairs with replacement, the *same* pairs for every
drawn seed (images of one (prompt, seed) pair are paired across training seeds), so the interval
carries both seed-to-seed and prompt-to-prompt variation. :func:`wilson` is the binomial (Wilson
score) interval of a pooled rate, which ignores the seed variance; both are reported.

Points here are plain dicts with at least ``defect`` (rate, lower is better), ``outside`` (mean
absolute change outside M(I0), lower is better), ``alignment`` (oracle accuracy, higher is better),
``steps`` and ``train_s`` (training wall-clock to reach ``steps``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # standard-normal quantile 0.975


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate with ``k`` successes in ``n`` trials; (nan, nan) if n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: Any, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                 resample_seeds: bool = True) -> dict[str, float]:
    """Mean of an ``(S, N)`` array (mean over rows of row means; NaN entries skipped) with a two-stage
    percentile bootstrap interval (see the module docstring). A 1-d array is one training seed.

    Returns ``mean``, ``lo``, ``hi``, ``seed_std`` (sample std of the per-seed means, 0 with one seed),
    ``n_seeds``, ``n_images``."""
    x = np.asarray(values, dtype=float)
    x = x[None, :] if x.ndim == 1 else x
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"bootstrap_ci wants a non-empty (seeds, images) array, got shape {x.shape}")
    s, n = x.shape
    with _quiet():
        per_seed = np.nanmean(x, axis=1)
    rng = np.random.default_rng(seed)
    rows = (rng.integers(0, s, size=(n_boot, s)) if resample_seeds and s > 1
            else np.broadcast_to(np.arange(s), (n_boot, s)))
    cols = rng.integers(0, n, size=(n_boot, n))
    draws = x[rows[:, :, None], cols[:, None, :]]  # (B, S, N)
    with _quiet():
        stats = np.nanmean(np.nanmean(draws, axis=2), axis=1)
        mean = float(np.nanmean(per_seed))
        seed_std = float(np.nanstd(per_seed, ddof=1)) if s > 1 else 0.0
    stats = stats[np.isfinite(stats)]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (np.quantile(stats, [alpha, 1.0 - alpha]) if stats.size else (math.nan, math.nan))
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "seed_std": seed_std, "n_seeds": s, "n_images": n}


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings inside a block."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def pareto_front(points: Sequence[dict], x: str, y: str, x_lower: bool = True, y_lower: bool = True) -> list[dict]:
    """The points no other point beats on both ``x`` and ``y`` (at least as good on both and strictly
    better on one), sorted by ``x``; duplicates of a front point are kept once."""
    sx, sy = (1 if x_lower else -1), (1 if y_lower else -1)
    pts = [p for p in points if _finite(p.get(x)) and _finite(p.get(y))]
    front: list[dict] = []
    for p in sorted(pts, key=lambda q: (sx * q[x], sy * q[y])):
        # sorted by x (best first): p is on the front iff its y beats every y seen so far
        if not front or sy * p[y] < sy * front[-1][y]:
            front.append(p)
    return sorted(front, key=lambda q: q[x])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def best_point(points: Sequence[dict]) -> dict:
    """The point with the lowest defect rate (ties: smaller outside change, then fewer steps)."""
    if not points:
        raise ValueError("best_point: no points")
    return min(points, key=lambda p: (p["defect"], p["outside"], p["steps"]))


def equal_defect(reference: Sequence[dict], candidates: Sequence[dict], tol: float = 0.0,
                 cost: str = "train_s") -> list[dict]:
    """For each reference (DRaFT) point, the cheapest candidate (Focus-N-Fix) point, by ``cost`` (ties:
    smaller outside change), whose defect rate is at most the reference's + ``tol``. Each row:
    ``reference``, ``match`` (None if no candidate reaches it), ``best`` (the candidate with the lowest
    defect rate, for a row without a match), ``outside_ratio`` and ``cost_ratio`` (match / reference)
    and ``alignment_diff`` (match - reference)."""
    rows = []
    for ref in sorted(reference, key=lambda p: (p["steps"], p["defect"])):
        ok = [c for c in candidates if c["defect"] <= ref["defect"] + tol + 1e-12]
        match = min(ok, key=lambda c: (c[cost], c["outside"])) if ok else None
        row = {"reference": ref, "match": match, "best": best_point(candidates) if candidates else None,
               "outside_ratio": None, "cost_ratio": None, "alignment_diff": None}
        if match is not None:
            row["outside_ratio"] = _ratio(match["outside"], ref["outside"])
            row["cost_ratio"] = _ratio(match[cost], ref[cost])
            row["alignment_diff"] = match["alignment"] - ref["alignment"]
        rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


SELECTION_RULE = ("on the validation split: among Focus-N-Fix points whose defect rate is at most DRaFT's best "
                  "(lowest) defect rate + {tol_pts:g} points and whose alignment is at least that DRaFT point's, the "
                  "smallest mean outside change (ties: fewer steps); if none qualifies, the Focus-N-Fix point with "
                  "the lowest defect rate among those with alignment >= DRaFT's best point's, else the lowest "
                  "defect rate")


def select_point(draft: Sequence[dict], fnf: Sequence[dict], tol: float = 0.015, ref: dict | None = None,
                 align_tol: float = 0.0) -> tuple[dict | None, str]:
    """The recommended Focus-N-Fix point by :data:`SELECTION_RULE`; returns (point, which clause chose it).
    ``ref`` replaces DRaFT's best point as the reference (issue 25: :func:`draft_reference`) and ``align_tol`` lets
    the alignment fall that far below the reference's."""
    if not draft or not fnf:
        return None, "no points"
    ref = ref or best_point(draft)
    aligned = [p for p in fnf if p["alignment"] >= ref["alignment"] - align_tol - 1e-12]
    ok = [p for p in aligned if p["defect"] <= ref["defect"] + tol + 1e-12]
    if ok:
        return min(ok, key=lambda p: (p["outside"], p["steps"])), "rule"
    if aligned:
        return best_point(aligned), ("fallback: no point within the defect tolerance; "
                                     "lowest defect rate with alignment kept")
    return best_point(fnf), "fallback: no point keeps alignment; lowest defect rate"


REFERENCE_RULE = ("DRaFT's reference point (issue 25): the lowest defect rate among DRaFT's points whose alignment is "
                  "within {within_pts:g} points of the base model's; where none is, its shortest training length")


def draft_reference(draft: Sequence[dict], base: dict, within: float = 0.05) -> dict:
    """DRaFT's point by :data:`REFERENCE_RULE`: the fix DRaFT reaches without losing prompt alignment (a DRaFT point
    that reward-hacks away the prompt is not a fix to match)."""
    if not draft:
        raise ValueError("draft_reference: no points")
    kept = [p for p in draft if p["alignment"] >= base["alignment"] - within - 1e-12]
    return best_point(kept) if kept else min(draft, key=lambda p: (p["steps"], p["defect"]))


def target_check(draft_best: dict, point: dict, tol: float = 0.015, outside_ratio: float = 1 / 3,
                 align_tol: float = 0.0, collateral_ratio: float | None = None) -> dict:
    """The issue's target: ``point`` reaches DRaFT's best defect rate within ``tol``, its outside change
    is at most ``outside_ratio`` of DRaFT's, and its alignment is at least DRaFT's − ``align_tol``; with
    ``collateral_ratio`` also its collateral rate at most that share of DRaFT's (issue 25: 1/2). Each part with its
    margin (positive = met with room to spare)."""
    defect_margin = draft_best["defect"] + tol - point["defect"]
    ratio = _ratio(point["outside"], draft_best["outside"])
    align_margin = point["alignment"] - draft_best["alignment"] + align_tol
    parts = {"defect": {"met": defect_margin >= -1e-12, "margin": defect_margin},
             "outside": {"met": ratio is not None and ratio <= outside_ratio + 1e-12, "ratio": ratio},
             "alignment": {"met": align_margin >= -1e-12, "margin": align_margin}}
    if collateral_ratio is not None:
        c = _ratio(point["collateral"], draft_best["collateral"])
        parts["collateral"] = {"met": c is not None and c <= collateral_ratio + 1e-12, "ratio": c,
                               "limit": collateral_ratio}
    return {"met": all(v["met"] for v in parts.values()), **parts}


def describe_target(check: dict, tol: float = 0.015, outside_ratio: float = 1 / 3, align_tol: float = 0.0) -> str:
    """One line: met, or by how much each part is missed."""
    d, o, a = check["defect"], check["outside"], check["alignment"]
    parts = [f"defect rate {'within' if d['met'] else 'misses'} DRaFT + {tol * 100:g} pts "
             f"by {abs(d['margin']) * 100:.1f} pts",
             f"outside change {o['ratio']:.2f}x DRaFT's ({'<=' if o['met'] else '>'} {outside_ratio:.2f}x)"
             if o["ratio"] is not None
             else "outside change: DRaFT's is 0",
             f"alignment {(a['margin'] - align_tol) * 100:+.1f} pts vs DRaFT ({'kept' if a['met'] else 'lower'}"
             f"{f', tolerance {align_tol * 100:g} pts' if align_tol else ''})"]
    if "collateral" in check:
        c = check["collateral"]
        parts.append(f"collateral rate {c['ratio']:.2f}x DRaFT's ({'<=' if c['met'] else '>'} {c['limit']:.2f}x)"
                     if c["ratio"] is not None else "collateral rate: DRaFT's is 0")
    return ("MET: " if check["met"] else "NOT MET: ") + "; ".join(parts)


REDUCTION_RULE = ("on the validation split: the Focus-N-Fix point with the lowest defect rate among those whose mean "
                  "outside change is below DRaFT's at the same training length "
                  "(ties: smaller outside change, fewer steps)")


def select_lowest_defect(draft: Sequence[dict], fnf: Sequence[dict]) -> dict | None:
    """The Focus-N-Fix point by :data:`REDUCTION_RULE` (None if no point changes less than DRaFT at its length)."""
    by_steps = {p["steps"]: p for p in draft}
    ok = [p for p in fnf if p["steps"] in by_steps and p["outside"] < by_steps[p["steps"]]["outside"]]
    return min(ok, key=lambda p: (p["defect"], p["outside"], p["steps"])) if ok else None


def reduction_check(base: dict, point: dict, draft: dict, at_least: float = 0.5) -> dict:
    """Issue 15's bar: ``point`` lowers the base defect rate by at least ``at_least`` (relative) while its outside
    change is below ``draft``'s (DRaFT at the same length). ``reduction`` = 1 - point / base."""
    reduction = 1.0 - point["defect"] / base["defect"] if base["defect"] else math.nan
    parts = {"reduction": {"met": reduction >= at_least - 1e-12, "value": reduction},
             "outside": {"met": point["outside"] < draft["outside"],
                         "ratio": _ratio(point["outside"], draft["outside"])}}
    return {"met": all(v["met"] for v in parts.values()), **parts}


def describe_reduction(check: dict, at_least: float = 0.5) -> str:
    r, o = check["reduction"], check["outside"]
    ratio = f"{o['ratio']:.2f}x DRaFT's" if o["ratio"] is not None else "vs DRaFT's 0"
    return (("MET: " if check["met"] else "NOT MET: ") + f"defect rate {-r['value'] * 100:+.0f} % vs base (bar: "
            f"-{at_least * 100:g} %); outside change {ratio} at the same length (bar: < 1)")
