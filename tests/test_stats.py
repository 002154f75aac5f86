"""Paired statistics: Student-t CDF / quantile and the paired t-test against scipy; Holm by hand."""
import math

import numpy as np
import pytest

from focusnfix.evaluation.stats import betainc, category_table, holm, paired_stats, t_cdf, t_ppf

try:
    from scipy import special as sps
    from scipy import stats as sst
except ImportError:  # scipy is a test-only reference, never a runtime dependency
    sst = sps = None

needs_scipy = pytest.mark.skipif(sst is None, reason="scipy (test-only reference) is not installed")
DFS = [1, 2, 3, 4, 7, 10, 29, 50, 200, 2.5]


@needs_scipy
@pytest.mark.parametrize("df", DFS)
def test_t_cdf_matches_scipy(df):
    for t in [-40.0, -5.0, -2.1, -1.0, -0.3, 0.0, 0.01, 0.5, 1.96, 3.0, 12.0, 100.0]:
        assert t_cdf(t, df) == pytest.approx(sst.t.cdf(t, df), rel=1e-10, abs=1e-13)


@needs_scipy
@pytest.mark.parametrize("df", DFS)
def test_t_ppf_matches_scipy(df):
    for q in [1e-9, 0.001, 0.025, 0.1, 0.4, 0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.999999]:
        assert t_ppf(q, df) == pytest.approx(sst.t.ppf(q, df), rel=1e-9, abs=1e-8)


@needs_scipy
def test_betainc_matches_scipy():
    for a, b in [(0.5, 0.5), (1.0, 3.0), (14.5, 0.5), (100.0, 0.5), (2.0, 2.0)]:
        for x in [0.0, 1e-8, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0]:
            assert betainc(a, b, x) == pytest.approx(sps.betainc(a, b, x), rel=1e-10, abs=1e-14)


@needs_scipy
@pytest.mark.parametrize("n", [2, 3, 5, 12, 30, 100])
def test_paired_stats_matches_ttest_rel(n):
    rng = np.random.default_rng(n)
    b = rng.normal(size=n)
    a = b + rng.normal(0.2, 0.7, size=n)
    ours = paired_stats(a.tolist(), b.tolist())
    ref = sst.ttest_rel(a, b)
    lo, hi = sst.t.interval(0.95, n - 1, loc=np.mean(a - b), scale=sst.sem(a - b))
    assert ours["n"] == n and ours["df"] == n - 1
    assert ours["mean_diff"] == pytest.approx(np.mean(a - b), abs=1e-12)
    assert ours["std"] == pytest.approx(np.std(a - b, ddof=1), rel=1e-12)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, abs=1e-8)
    assert ours["ci"][0] == pytest.approx(lo, abs=1e-8) and ours["ci"][1] == pytest.approx(hi, abs=1e-8)


@needs_scipy
def test_other_confidence_levels():
    a, b = [1.0, 2.5, 3.1, 4.0, 4.2], [0.5, 2.0, 3.3, 3.0, 3.9]
    d = np.subtract(a, b)
    for conf in (0.5, 0.9, 0.99):
        lo, hi = sst.t.interval(conf, 4, loc=d.mean(), scale=sst.sem(d))
        ci = paired_stats(a, b, confidence=conf)["ci"]
        assert ci == pytest.approx([lo, hi], abs=1e-8)


def test_fixed_example_by_hand():
    # d = [1, 2, 3]: mean 2, std 1, sem 1/sqrt(3), t = 2 sqrt(3); df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    s = paired_stats([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert s["t"] == pytest.approx(t) and s["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    q = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # closed form of t_{0.975} for df = 2 (= 4.3027)
    assert t_ppf(0.975, 2) == pytest.approx(q, rel=1e-12)
    assert s["ci"] == pytest.approx([2 - q / math.sqrt(3), 2 + q / math.sqrt(3)], rel=1e-10)


def test_t_ppf_edges():
    assert t_ppf(0.5, 3) == 0.0
    assert t_ppf(0.0, 3) == -math.inf and t_ppf(1.0, 3) == math.inf
    assert t_ppf(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # Cauchy
    with pytest.raises(ValueError):
        t_ppf(1.5, 3)


def test_small_n_and_missing_values():
    empty = paired_stats([], [])
    assert empty["n"] == 0 and empty["mean_diff"] is None and empty["ci"] is None and empty["p"] is None
    one = paired_stats([3.0], [1.0])
    assert one["n"] == 1 and one["mean_diff"] == 2.0 and one["ci"] is None and one["p"] is None and one["std"] is None
    # None / NaN / inf pairs are dropped before testing
    s = paired_stats([1.0, None, 3.0, float("nan"), 5.0, float("inf")], [0.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    assert s["n"] == 3 and s["mean_diff"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_stats([1.0, 2.0], [1.0])


def test_zero_variance():
    same = paired_stats([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["mean_diff"] == 0.0 and same["p"] == 1.0 and same["ci"] == [0.0, 0.0] and same["std"] == 0.0
    shifted = paired_stats([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert shifted["p"] == 0.0 and shifted["ci"] == [0.5, 0.5] and shifted["t"] is None


def test_holm_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert holm([0.01, None, 0.04, 0.03, 0.005]) == pytest.approx([0.03, None, 0.06, 0.06, 0.02])
    # capped at 1 and kept monotone: 0.2 x3 = 0.6, 0.5 x2 = 1.0, 0.9 x1 -> 1.0
    assert holm([0.9, 0.2, 0.5]) == pytest.approx([1.0, 0.6, 1.0])
    assert holm([]) == [] and holm([None, None]) == [None, None]
    assert holm([0.04]) == [0.04]


def test_category_table_pairs_by_sample_and_corrects():
    gains = {"animals": [0.1, 0.3, 0.2], "people": [-0.1, 0.0, 0.4], None: [0.5, 0.5]}
    rows, i = [], 0
    for cat, values in gains.items():
        for gain in values:
            rows.append({"i": i, "category": cat, "method": "base", "alignment": float(i)})
            rows.append({"i": i, "category": cat, "method": "fnf", "alignment": float(i) + gain})
            i += 1
    rows.append({"i": 99, "category": "people", "method": "fnf", "alignment": 1.0})  # no base partner: ignored
    table = category_table(reversed(rows), "alignment", "fnf")
    assert [e["category"] for e in table] == ["animals", "people", "uncategorized"]
    animals, people, unc = table
    assert animals["n"] == 3 and animals["mean_diff"] == pytest.approx(0.2)
    assert people["n"] == 3 and people["mean_diff"] == pytest.approx(0.1)
    assert unc["p"] == 0.0 and unc["ci"] == pytest.approx([0.5, 0.5])
    ps = [e["p"] for e in table]
    assert [e["p_holm"] for e in table] == pytest.approx(holm(ps))
    assert all(e["p_holm"] >= e["p"] for e in table)


@needs_scipy
def test_category_table_matches_scipy_per_category():
    rng = np.random.default_rng(7)
    rows = []
    for i in range(30):
        cat = "ab"[i % 2]
        b, a = rng.normal(), rng.normal()
        rows += [{"i": i, "category": cat, "method": "base", "clip_score": b},
                 {"i": i, "category": cat, "method": "rg", "clip_score": a}]
    for e in category_table(rows, "clip_score", "rg"):
        sel = [r for r in rows if r["category"] == e["category"]]
        a = [r["clip_score"] for r in sel if r["method"] == "rg"]
        b = [r["clip_score"] for r in sel if r["method"] == "base"]
        assert e["n"] == 15 and e["p"] == pytest.approx(sst.ttest_rel(a, b).pvalue, abs=1e-8)
