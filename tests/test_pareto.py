"""Operating-point sweeps (benchmarks/pareto.py, focusnfix.evaluation.pareto): the statistics on
hand-checked numbers, and one tiny end-to-end sweep on the built-in world (2 DDIM steps, 1 image)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from focusnfix.evaluation.pareto import (best_point, bootstrap_ci, describe_target, draft_reference, equal_defect,
                                         pareto_front, select_point, target_check, wilson)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _pt(name, defect, outside, alignment, steps=60, train_s=100.0, method="fnf"):
    return {"name": name, "method": method, "defect": defect, "outside": outside, "alignment": alignment,
            "steps": steps, "train_s": train_s}


def test_wilson_matches_hand_computation():
    # 3 of 10, z = 1.96: centre (0.3 + z²/20) / (1 + z²/10), half-width z·sqrt(0.021 + z²/400) / (1 + z²/10)
    lo, hi = wilson(3, 10)
    assert lo == pytest.approx(0.10779, abs=1e-5) and hi == pytest.approx(0.60322, abs=1e-5)
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # k = 0: upper bound z²/(n + z²)
    assert wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bootstrap_ci_width_seed_spread_and_pairing():
    one = bootstrap_ci(np.array([0.0, 1.0] * 100))  # a rate of 0.5 on 200 images
    assert one["mean"] == 0.5 and one["seed_std"] == 0.0 and (one["n_seeds"], one["n_images"]) == (1, 200)
    normal = 1.959964 * math.sqrt(0.25 / 200)  # the normal approximation's half-width, 0.0693
    assert one["lo"] == pytest.approx(0.5 - normal, abs=0.012) and one["hi"] == pytest.approx(0.5 + normal, abs=0.012)
    assert bootstrap_ci(np.full((3, 50), 0.25)) == pytest.approx(
        {"mean": 0.25, "lo": 0.25, "hi": 0.25, "seed_std": 0.0, "n_seeds": 3, "n_images": 50})

    rng = np.random.default_rng(1)
    seeds = np.stack([rng.random(80) < p for p in (0.2, 0.4, 0.6)]).astype(float)
    both = bootstrap_ci(seeds)
    assert both["seed_std"] == pytest.approx(np.std(seeds.mean(axis=1), ddof=1))
    assert both["mean"] == pytest.approx(seeds.mean())
    images_only = bootstrap_ci(seeds, resample_seeds=False)
    assert (both["hi"] - both["lo"]) > 1.3 * (images_only["hi"] - images_only["lo"])  # seed spread widens the interval

    v = rng.random(60)  # two seeds whose images are exact complements: a paired draw always averages to 0.5
    paired = bootstrap_ci(np.stack([v, 1 - v]), resample_seeds=False)
    assert paired["lo"] == pytest.approx(0.5) and paired["hi"] == pytest.approx(0.5)
    nan = bootstrap_ci(np.array([[np.nan, 1.0, 0.0, 1.0]]))  # an empty region's NaN is skipped, not propagated
    assert nan["mean"] == pytest.approx(2 / 3) and math.isfinite(nan["lo"])


def test_pareto_front_lower_and_higher_is_better():
    pts = [_pt("a", 0.10, 0.001, 0.9), _pt("b", 0.05, 0.002, 0.95), _pt("c", 0.08, 0.003, 0.97),
           _pt("d", 0.05, 0.004, 0.99), _pt("e", 0.02, 0.010, 0.91), _pt("f", 0.02, 0.010, 0.91),
           _pt("g", math.nan, 0.0, 1.0)]
    assert [p["name"] for p in pareto_front(pts, "outside", "defect")] == ["a", "b", "e"]
    # defect (lower) vs alignment (higher): d dominates b and c; a is beaten by e (0.02 < 0.10, 0.91 > 0.90)
    assert [p["name"] for p in pareto_front(pts, "alignment", "defect", x_lower=False)] == ["e", "d"]


def test_equal_defect_picks_cheapest_reaching_point():
    draft = [_pt("d30", 0.10, 0.004, 0.95, 30, 50, "draft"), _pt("d60", 0.03, 0.008, 0.96, 60, 100, "draft"),
             _pt("d120", 0.01, 0.012, 0.94, 120, 200, "draft")]
    fnf = [_pt("f30", 0.12, 0.001, 0.97, 30, 55), _pt("f60", 0.08, 0.002, 0.97, 60, 110),
           _pt("f120", 0.03, 0.003, 0.98, 120, 220), _pt("g120", 0.02, 0.005, 0.96, 120, 220)]
    rows = equal_defect(draft, fnf)
    assert [r["match"] and r["match"]["name"] for r in rows] == ["f60", "f120", None]
    assert rows[0]["cost_ratio"] == pytest.approx(110 / 50) and rows[0]["outside_ratio"] == pytest.approx(0.5)
    # f120 and g120 cost the same: the smaller outside change wins
    assert rows[1]["alignment_diff"] == pytest.approx(0.02)
    assert rows[2]["best"]["name"] == "g120" and rows[2]["cost_ratio"] is None
    assert equal_defect(draft[2:], fnf, tol=0.015)[0]["match"]["name"] == "g120"


def test_selection_rule_and_target_check():
    draft = [_pt("d60", 0.04, 0.008, 0.95, 60, 100, "draft"), _pt("d120", 0.02, 0.012, 0.96, 120, 200, "draft")]
    assert best_point(draft)["name"] == "d120"
    fnf = [_pt("f1", 0.030, 0.002, 0.97, 60), _pt("f2", 0.034, 0.003, 0.97, 120),  # within 1.5 pts of 0.02: f1 (0.030)
           # f3 too many defects, f4 loses alignment
           _pt("f3", 0.050, 0.001, 0.99, 60), _pt("f4", 0.030, 0.0015, 0.95, 120)]
    chosen, why = select_point(draft, fnf)
    assert chosen["name"] == "f1" and why == "rule"
    check = target_check(best_point(draft), chosen)
    assert (check["met"] and check["defect"]["margin"] == pytest.approx(0.005)
            and check["outside"]["ratio"] == pytest.approx(1 / 6))
    assert describe_target(check).startswith("MET")

    far = [_pt("h1", 0.06, 0.002, 0.97), _pt("h2", 0.05, 0.003, 0.98), _pt("h3", 0.01, 0.003, 0.90)]
    chosen, why = select_point(draft, far)
    assert chosen["name"] == "h2" and why.startswith("fallback")  # lowest defect rate among aligned points
    miss = target_check(best_point(draft), chosen)
    assert not miss["met"] and miss["defect"]["margin"] == pytest.approx(-0.015) and miss["outside"]["met"]
    assert "misses" in describe_target(miss) and "1.5 pts" in describe_target(miss)
    assert (select_point(draft, [_pt("x", 0.01, 0.1, 0.5)])[0]["name"] == "x"
            and select_point([], far) == (None, "no points"))


def _load_bench():
    spec = importlib.util.spec_from_file_location("_bench_pareto", BENCH / "pareto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_issue25_reference_rule_and_full_target():
    base = {**_pt("base", 0.50, 0.0, 0.80, 0, 0.0, "base")}
    draft = [_pt("d30", 0.38, 0.010, 0.72, 30, method="draft"), _pt("d60", 0.21, 0.018, 0.48, 60, method="draft"),
             _pt("d120", 0.11, 0.054, 0.23, 120, method="draft")]
    # no DRaFT point keeps alignment within 5 points of base (0.72 < 0.75): the shortest one is the reference
    assert draft_reference(draft, base)["name"] == "d30"
    # one that does (0.76 >= 0.75): the lowest defect rate among those that keep it
    assert draft_reference([*draft, _pt("d45", 0.30, 0.012, 0.76, 45, method="draft")], base)["name"] == "d45"
    assert draft_reference([_pt("a", 0.3, 0.01, 0.78, 60, method="draft"), _pt("b", 0.2, 0.01, 0.751, 120,
                                                                                  method="draft")], base)["name"] == "b"
    ref = draft_reference(draft, base)
    fnf = [{**_pt("f1", 0.39, 0.003, 0.715), "collateral": 0.20}, {**_pt("f2", 0.37, 0.004, 0.69), "collateral": 0.1}]
    ref = {**ref, "collateral": 0.5}
    # alignment may fall 1 point below the reference's: f1 (-0.5 pt) qualifies, f2 (-3 pts) does not
    chosen, why = select_point(draft, fnf, ref=ref, align_tol=0.01)
    assert chosen["name"] == "f1" and why == "rule"
    check = target_check(ref, chosen, align_tol=0.01, collateral_ratio=0.5)
    assert check["met"] and check["collateral"]["ratio"] == pytest.approx(0.4)
    assert check["alignment"]["margin"] == pytest.approx(0.005)
    worse = target_check(ref, {**chosen, "collateral": 0.3}, align_tol=0.01, collateral_ratio=0.5)
    assert not worse["met"] and not worse["collateral"]["met"] and worse["outside"]["met"]
    assert "collateral rate 0.60x DRaFT's (> 0.50x)" in describe_target(worse, align_tol=0.01)
    assert "collateral" not in target_check(ref, chosen)  # the older targets are unchanged


def test_pareto_sweep_end_to_end_on_the_world(tmp_path):
    """DRaFT and FnF (λ = 0.45), lengths 1 and 2 from one training each, 1 val and 1 test image, then a rerun
    that trains and evaluates nothing."""
    from PIL import Image
    from safetensors.torch import load_file

    bench, work, out = _load_bench(), tmp_path / "work", tmp_path / "pareto.json"
    argv = ["--defects", "artifact", "--lambdas", "0.45", "--lengths", "1", "2", "--seeds", "0", "--prompts", "1",
            "--eval-seeds", "1000", "--test-seeds", "2000", "--set", "sampler.steps=2", "--set", "train.batch_size=1",
            "--work", str(work), "--out", str(out)]
    assert bench.main(argv) == 0
    for run in ("draft-s0", "fnf-l0.45-s0"):
        folder = work / "artifact" / run
        assert bench.export_dir(folder, 2) == folder / "lora-step-000002"  # the trainer's train.export_lora_steps
        one, two = (load_file(bench.export_dir(folder, n) / "pytorch_lora_weights.safetensors") for n in (1, 2))
        final = load_file(folder / "lora" / "pytorch_lora_weights.safetensors")
        # the last export is the final LoRA
        assert set(one) == set(final) and all((two[k] == final[k]).all() for k in final)
        assert any(not (one[k] == two[k]).all() for k in one)  # step 1 and step 2 are different LoRAs
    res = json.loads(out.read_text())["defects"]["artifact"]
    val = {(p["family"], p["steps"]): p for p in res["val"]["points"]}
    assert set(val) == {("base", 0), ("draft", 1), ("draft", 2), ("fnf-l0.45", 1), ("fnf-l0.45", 2)}
    assert all(p["n_images"] == 1 and p["n_seeds"] == 1 for p in val.values())
    assert val[("base", 0)]["outside"] == 0 and val[("draft", 2)]["outside"] > 0
    assert 0 < val[("draft", 1)]["train_s"] < val[("draft", 2)]["train_s"]
    assert res["runs"]["draft-s0"]["train_s"] >= val[("draft", 2)]["train_s"]
    assert res["val"]["recommended"]["method"] == "fnf" and "target" in res["val"]
    test = {(p["family"], p["steps"]) for p in res["test"]["points"]}
    low = res["val"]["lowest_defect"]  # issue 15's pick (lowest defect rate changing less than DRaFT), on test too
    assert "reduction_rule" in res["val"] and (low is None or (low["family"], low["steps"]) in test)
    assert {("base", 0), ("draft", 1), ("draft", 2),
            (res["val"]["recommended"]["family"], res["val"]["recommended"]["steps"])} <= test
    plots = [Path(p) for p in json.loads(out.read_text())["plots"]]
    assert len(plots) == 5 and all(Image.open(p).size[0] >= 760 for p in plots)
    assert (work / "pareto.html").read_text().count("data:image/png;base64,") == 5

    for split in ("val", "test"):  # the base pass is sampled once per split and copied into each run's eval folder
        metas = [json.loads(f.read_text()) for f in sorted(work.glob(f"artifact/eval-{split}/*/eval.json"))]
        assert len(metas) == 2 and all(m["runtime"]["reused"] == 1 for m in metas)  # 1 image: base, not sampled again
        bases = [(f.parent / "images" / "base" / "00000.png").read_bytes()
                 for f in sorted(work.glob(f"artifact/eval-{split}/*/eval.json"))]
        assert bases[0] == bases[1]

    marks = {f: f.stat().st_mtime_ns
             for f in [*work.glob("artifact/*/bench.json"), *work.glob("artifact/eval-*/*/eval.json")]}
    assert len(marks) == 2 + 4
    assert bench.main(argv) == 0  # resumable: everything is found finished
    assert {f: f.stat().st_mtime_ns for f in marks} == marks
    assert json.loads(out.read_text())["defects"]["artifact"]["val"]["points"] == res["val"]["points"]
    assert "issue 25" in (work / "pareto.html").read_text() and res["val"]["draft_reference"]["method"] == "draft"

    # Focus-N-Fix families stopped earlier than DRaFT (--fnf-lengths): found finished, its step-2 point left out
    assert bench.main([*argv, "--fnf-lengths", "1"]) == 0
    short = {(p["family"], p["steps"]) for p in json.loads(out.read_text())["defects"]["artifact"]["val"]["points"]}
    assert short == {("base", 0), ("draft", 1), ("draft", 2), ("fnf-l0.45", 1)}
    assert {f: f.stat().st_mtime_ns for f in marks} == marks


def test_reduction_rule_and_check():
    """Issue 15's selection: the lowest defect rate among Focus-N-Fix points changing less than DRaFT at the same
    length; the check needs both halving and less outside change."""
    from focusnfix.evaluation.pareto import describe_reduction, reduction_check, select_lowest_defect

    draft = [{"steps": 60, "defect": 0.10, "outside": 0.010}, {"steps": 120, "defect": 0.05, "outside": 0.012}]
    fnf = [{"steps": 60, "defect": 0.20, "outside": 0.004}, {"steps": 120, "defect": 0.15, "outside": 0.005},
           {"steps": 120, "defect": 0.04, "outside": 0.013}, {"steps": 30, "defect": 0.01, "outside": 0.001}]
    pick = select_lowest_defect(draft, fnf)
    assert pick is fnf[1]  # fnf[2] changes more than DRaFT at 120; fnf[3] has no DRaFT point at its length
    assert select_lowest_defect(draft, [fnf[2]]) is None
    base = {"defect": 0.40}
    check = reduction_check(base, pick, draft[1])
    assert (check["met"] and abs(check["reduction"]["value"] - 0.625) < 1e-12
            and abs(check["outside"]["ratio"] - 0.005 / 0.012) < 1e-12)
    assert reduction_check(base, {"defect": 0.20, "outside": 0.004}, draft[0])["met"]  # exactly half is half
    assert not reduction_check(base, {"defect": 0.21, "outside": 0.004}, draft[0])["reduction"]["met"]
    assert not reduction_check(base, {"defect": 0.10, "outside": 0.011}, draft[0])["outside"]["met"]
    zero = reduction_check(base, {"defect": 0.10, "outside": 0.0}, {"outside": 0.0})  # DRaFT changed nothing outside
    assert not zero["met"] and zero["outside"]["ratio"] is None and "vs DRaFT's 0" in describe_reduction(zero)


def test_variant_families_carry_their_own_training_keys():
    """--variant NAME=key=value,...: a family with its own training keys (method=fnf unless given), read back as
    (method, λ, budget) for the tables; malformed variants are refused."""
    import sys

    sys.path.insert(0, str(BENCH))
    import _pareto_runs as runs

    bench = _load_bench()
    try:
        with pytest.raises(SystemExit):
            bench.main(["--variant", "fnf-x=objective.budget=1"])  # the fnf- prefix is the built-in families'
        with pytest.raises(SystemExit):
            bench.main(["--variant", "bad=objective.budget"])  # key without value
        runs.VARIANTS.update({"global-b1": ["objective.budget=1", "mask.source=none"],
                              "draft-lr": ["method=draft", "train.lr=3e-4"]})
        assert runs.family_overrides("global-b1") == ["method=fnf", "objective.budget=1", "mask.source=none"]
        assert runs.family_info("global-b1") == ("fnf", None, 1.0)
        assert runs.family_info("draft-lr") == ("draft", None, None)
        assert runs.family_info("fnf-l0.2") == ("fnf", 0.2, None) and runs.family_info("fnf-b2") == ("fnf", None, 2.0)
        assert runs.family_info("draft") == ("draft", 0.0, None)
    finally:
        runs.VARIANTS.clear()
