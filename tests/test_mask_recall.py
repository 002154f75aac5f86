"""benchmarks/mask_recall.py: the coverage metrics on hand-drawn masks with hand-computed numbers."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_mask_recall", BENCH / "mask_recall.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _box(h, w, top, left, bottom, right, value=1.0):
    m = torch.zeros(1, 1, h, w)
    m[..., top:bottom, left:right] = value
    return m


def test_metrics_on_hand_drawn_masks(bench):
    # image 0: defect 4x4 = 16 px at (2..6, 2..6); mask 4x4 shifted by 2 columns: 8 px of the defect inside
    # image 1: defect 2x2 = 4 px; mask 4x4 around it: all 4 inside, mask 16 px
    # image 2: no defect, empty mask; image 3: no defect, a 2x2 mask (a false alarm)
    defect = torch.cat([_box(8, 8, 2, 2, 6, 6), _box(8, 8, 3, 3, 5, 5), torch.zeros(1, 1, 8, 8),
                        torch.zeros(1, 1, 8, 8)])
    mask = torch.cat([_box(8, 8, 2, 4, 6, 8), _box(8, 8, 2, 2, 6, 6), torch.zeros(1, 1, 8, 8), _box(8, 8, 0, 0, 2, 2)])
    got = bench.mask_metrics(mask, defect)
    assert got["n_defect"] == 2 and got["n_clean"] == 2
    assert got["recall"] == pytest.approx((8 + 4) / (16 + 4))  # pooled: 12 of 20 defect pixels
    assert got["precision"] == pytest.approx((8 + 4) / (16 + 16))  # 12 of 32 mask pixels
    assert got["area"] == pytest.approx((16 / 64 + 16 / 64) / 2)
    assert got["detected"] == 1.0  # both defect images are touched
    assert got["covered"] == 0.5  # image 0: 8/16 = 0.5 < 0.9; image 1: 4/4
    assert got["on_clean"] == 0.5  # image 3 has a mask, image 2 none


def test_soft_masks_count_their_weight_and_detection_needs_a_core(bench):
    defect = _box(4, 4, 0, 0, 2, 2)  # 4 px
    soft = _box(4, 4, 0, 0, 2, 2, value=0.4)  # the defect under weight 0.4: no core (< 0.5)
    got = bench.mask_metrics(soft, defect)
    assert got["recall"] == pytest.approx(0.4) and got["precision"] == pytest.approx(1.0)
    assert got["area"] == pytest.approx(4 * 0.4 / 16) and got["detected"] == 0.0 and got["covered"] == 0.0
    half = soft + _box(4, 4, 0, 0, 1, 2, value=0.6)  # 2 px at 1.0, 2 px at 0.4: recall 2.8 / 4 = 0.7
    got = bench.mask_metrics(half, defect)
    assert got["recall"] == pytest.approx(0.7) and got["detected"] == 1.0 and got["covered"] == 0.0


def test_empty_groups_are_nan(bench):
    clean = bench.mask_metrics(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert (clean["n_defect"] == 0
            and all(math.isnan(clean[k]) for k in ("recall", "precision", "area", "detected", "covered")))
    assert clean["on_clean"] == 0.0
    missed = bench.mask_metrics(torch.zeros(1, 1, 4, 4), _box(4, 4, 0, 0, 1, 1))
    assert missed["recall"] == 0.0 and math.isnan(missed["precision"]) and math.isnan(missed["on_clean"])


def test_mask_of_is_mask_from_without_the_reward_call(bench):
    """The benchmark's shortcut (map computed once, settings applied after) equals rewards.compose.mask_from."""
    from focusnfix.config import MaskConfig
    from focusnfix.rewards.base import RewardOutput
    from focusnfix.rewards.compose import mask_from

    class Heat:  # a reward with a heatmap: the mean colour; score = -mean
        name, differentiable = "heat", True

        def __call__(self, images, prompts):
            heat = images.mean(1, keepdim=True)
            return RewardOutput(score=-heat.flatten(1).mean(1), heatmap=heat)

    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    heat = images.mean(1, keepdim=True)
    for m in bench.settings(MaskConfig(source="heatmap", skip_above=-0.5)):
        want, _ = mask_from(Heat(), images, ["a"] * 3, m)
        assert torch.equal(bench.mask_of(heat, -heat.flatten(1).mean(1), m), want)
    assert len(bench.settings(MaskConfig())) == 18
