"""Paired statistics for method-vs-reference comparisons (numpy and the standard library only).

Every evaluated method is run on the same (prompt, seed) pairs as the reference (the frozen base
model), so comparisons are *paired*: we test the per-sample differences d_i = a_i - b_i with a
Student-t confidence interval and a two-sided paired t-test, and correct across prompt categories
with Holm-Bonferroni. The Student-t CDF uses the regularized incomplete beta function, evaluated by
its continued fraction (modified Lentz); the quantile inverts the CDF by bisection.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

_EPS = 1e-16
_TINY = 1e-300


def _nonzero(v: float) -> float:
    return v if abs(v) > _TINY else _TINY


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) by modified Lentz (converges fast for x < (a + 1) / (a + b + 2))."""
    c, d = 1.0, 1.0 / _nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))  # coefficient d_{2m}
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))  # coefficient d_{2m+1}
        for num in (even, odd):
            d = 1.0 / _nonzero(1.0 + num * d)
            c = _nonzero(1.0 + num / c)
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and x in [0, 1].

    ``y`` may pass 1 - x computed without cancellation (e.g. t^2 / (df + t^2)).
    """
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if t == 0.0:
        return 1.0
    r2 = (math.sqrt(df) / abs(t)) ** 2  # df / t^2 without overflow for huge |t|
    return betainc(df / 2.0, 0.5, r2 / (1.0 + r2), 1.0 / (1.0 + r2))


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` > 0 degrees of freedom."""
    if math.isnan(t):
        return math.nan
    tail = 0.5 * t_sf2(t, df)
    return tail if t < 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t: the t with t_cdf(t, df) = q, by bisection."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    if q == 0.0:
        return -math.inf
    if q == 1.0:
        return math.inf
    if q == 0.5:
        return 0.0
    # solve P(|T| >= t) = tail in the upper half; the lower half follows by symmetry. The tail is
    # formed from min(q, 1 - q) so that tiny lower quantiles keep their precision.
    sign, tail = (-1.0, 2.0 * q) if q < 0.5 else (1.0, 2.0 * (1.0 - q))
    return sign * _t_upper(tail, df)


def _t_upper(tail: float, df: float) -> float:
    """The t >= 0 with two-sided tail mass P(|T| >= t) = tail, by bracketing then bisection."""
    lo, hi = 0.0, 1.0
    while t_sf2(hi, df) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf2(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _finite_pairs(a: Iterable[Any], b: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Two float arrays with the pairs where either side is None / NaN / inf removed."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    fa = np.array([np.nan if v is None else float(v) for v in a], dtype=np.float64)
    fb = np.array([np.nan if v is None else float(v) for v in b], dtype=np.float64)
    keep = np.isfinite(fa) & np.isfinite(fb)
    return fa[keep], fb[keep]


def paired_stats(a: Sequence[Any], b: Sequence[Any], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` (method) against ``b`` (reference) on the same samples.

    Pairs where either value is None or non-finite are dropped; ``n`` counts the pairs used.
    Returns ``n, mean_a, mean_b, mean_diff`` (d = mean(a - b)), ``std`` (sample std of a - b, ddof 1),
    ``sem``, ``df``, ``t``, ``p`` (two-sided paired t-test), ``ci`` ([low, high] for the mean
    difference, Student t at ``confidence``) and ``confidence``. With n < 2, ``std``, ``ci`` and ``p``
    are None; when all differences are equal (zero variance), ``ci = [d, d]`` and ``p`` is 1.0 if
    d == 0 else 0.0 (``t`` is None then).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    fa, fb = _finite_pairs(a, b)
    n = int(fa.size)
    out: dict[str, Any] = {"n": n, "mean_a": None, "mean_b": None, "mean_diff": None, "std": None,
                           "sem": None, "df": None, "t": None, "p": None, "ci": None, "confidence": confidence}
    if n == 0:
        return out
    diff = fa - fb
    d = float(diff.mean())
    out.update(mean_a=float(fa.mean()), mean_b=float(fb.mean()), mean_diff=d)
    if n < 2:
        return out
    out["df"] = n - 1
    if np.all(diff == diff[0]):  # zero variance: the t statistic is undefined
        out.update(std=0.0, sem=0.0, ci=[d, d], p=1.0 if d == 0.0 else 0.0)
        return out
    std = float(diff.std(ddof=1))
    sem = std / math.sqrt(n)
    t = d / sem
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * sem
    out.update(std=std, sem=sem, t=t, p=t_sf2(t, n - 1), ci=[d - half, d + half])
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order; None entries pass through (not counted).

    With the m valid p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted value is
    p~_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)).
    """
    valid = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(valid)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(valid, key=lambda pi: pi[0])):
        running = max(running, min(1.0, (m - rank) * float(p)))
        out[i] = running
    return out


def finite(value: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_of(rows: list[dict[str, Any]], metric: str) -> tuple[float | None, int, int]:
    """(mean over finite values, number of finite values, number flagged ∞); mean = inf if all ∞."""
    vals = [float(r[metric]) for r in rows if finite(r.get(metric))]
    n_inf = sum(1 for r in rows if r.get(f"{metric}_inf"))
    if vals:
        return sum(vals) / len(vals), len(vals), n_inf
    return (math.inf if n_inf else None), 0, n_inf


def sample_key(row: dict[str, Any]) -> Any:
    """The identity of a sample across methods: its index ``i``, else (prompt, seed)."""
    return row["i"] if row.get("i") is not None else (row.get("prompt"), row.get("seed"))


def paired_values(rows: Iterable[dict[str, Any]], metric: str, method: str,
                  reference: str = "base") -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
    """Align ``metric`` of ``method`` with ``reference`` over the samples both have.

    Returns (method values, reference values, the method's rows), ordered by sample.
    """
    ref: dict[Any, Any] = {}
    mine: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row.get("method") == reference:
            ref[sample_key(row)] = row.get(metric)
        if row.get("method") == method:
            mine[sample_key(row)] = row
    keys = [k for k in mine if k in ref]
    return [mine[k].get(metric) for k in keys], [ref[k] for k in keys], [mine[k] for k in keys]


def category_table(rows: Iterable[dict[str, Any]], metric: str, method: str, reference: str = "base",
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per-category paired stats of ``metric`` for ``method`` vs ``reference``, Holm-corrected.

    ``rows`` are samples.jsonl records (keys ``i``, ``category``, ``method``, the metric). Returns one
    dict per category (sorted by name; a null category is reported as "uncategorized") holding
    ``category`` plus the :func:`paired_stats` keys and ``p_holm``, the Holm-adjusted p-value across
    the categories of this (method, metric).
    """
    rows = list(rows)
    a, b, mine = paired_values(rows, metric, method, reference)
    groups: dict[str, tuple[list[Any], list[Any]]] = {}
    for va, vb, row in zip(a, b, mine):
        cat = row.get("category")
        ga, gb = groups.setdefault("uncategorized" if cat is None else str(cat), ([], []))
        ga.append(va)
        gb.append(vb)
    table = [{"category": cat, **paired_stats(ga, gb, confidence)} for cat, (ga, gb) in sorted(groups.items())]
    for entry, adj in zip(table, holm([e["p"] for e in table])):
        entry["p_holm"] = adj
    return table
