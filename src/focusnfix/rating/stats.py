"""Statistics of a rating study (standard library only).

- :func:`wilson`: the Wilson score interval of a proportion k / n (95 % by default);
- :func:`sign_test`: the exact two-sided sign test (binomial, p = 1/2) on the pairs where one side
  wins; on binary answers this is the exact McNemar test;
- :func:`fleiss_kappa`: Fleiss' kappa for items rated by the same number of raters;
- :func:`krippendorff_alpha`: Krippendorff's alpha for nominal data, any number of raters per item
  (items with a single rating are not pairable and drop out).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k successes out of n: (center ± half) with
    center = (p + z²/2n) / (1 + z²/n), half = z √(p(1−p)/n + z²/4n²) / (1 + z²/n). None for n = 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def sign_test(wins: int, losses: int) -> float | None:
    """Exact two-sided sign test: p = min(1, 2 P(X <= min(wins, losses))), X ~ Binomial(wins + losses, 1/2).
    Ties are left out before calling. None when there is no untied pair."""
    n = wins + losses
    if n == 0:
        return None
    tail = sum(math.comb(n, j) for j in range(min(wins, losses) + 1))
    return min(1.0, 2.0 * tail / 2.0 ** n)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table of counts, every item rated by the same number
    m >= 2 of raters: P_i = (Σ_j n_ij² − m) / (m (m − 1)), p_j = Σ_i n_ij / (N m),
    κ = (mean P_i − Σ_j p_j²) / (1 − Σ_j p_j²). None when undefined (no items, or one category only)."""
    if not counts:
        return None
    m = sum(counts[0])
    if m < 2 or any(sum(row) != m for row in counts):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    n_items = len(counts)
    p_bar = sum((sum(c * c for c in row) - m) / (m * (m - 1)) for row in counts) / n_items
    p_e = sum((sum(row[j] for row in counts) / (n_items * m)) ** 2 for j in range(len(counts[0])))
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha, nominal metric. ``units``: the values given to each unit (missing ratings
    simply absent). With the coincidences o_ck = Σ_u (number of ordered pairs (c, k) of different raters
    in u) / (m_u − 1) over units with m_u >= 2 values, n_c = Σ_k o_ck and n = Σ_c n_c:
    α = 1 − (n − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k. None when undefined (fewer than 2 pairable values,
    or every value in one category)."""
    disagree, totals = 0.0, Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        # ordered pairs of different raters with different values: m² − Σ_c m_c²
        disagree += (m * m - sum(c * c for c in counts.values())) / (m - 1)
        totals.update(counts)
    n = sum(totals.values())
    expected = n * n - sum(c * c for c in totals.values())  # Σ_{c≠k} n_c n_k
    if n < 2 or expected == 0:
        return None
    return 1.0 - (n - 1) * disagree / expected
