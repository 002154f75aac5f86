"""Masks from heatmaps and saliency; the reward contract, registry and classifier reward."""
import pytest
import torch

from focusnfix.errors import FocusNFixError
from focusnfix.rewards.masks import (dilate, gaussian_blur, heatmap_to_mask, label_components, remove_small,
                                     saliency_map, threshold)
from focusnfix.rewards.registry import build_reward
from focusnfix.rewards import ClassifierReward, ColorReward, check_output


def _square(h=16, y=4, x=4, s=3):
    m = torch.zeros(1, 1, h, h)
    m[..., y: y + s, x: x + s] = 1
    return m


def test_threshold_absolute_and_quantile():
    heat = torch.linspace(0, 1, 100).view(1, 1, 10, 10)
    assert threshold(heat, 0.5).sum() == 50
    assert threshold(heat, quantile=0.9).sum() == 10


def test_components_and_min_area():
    m = _square(s=3) + _square(y=12, x=12, s=2)
    labels = label_components(m)
    assert len(labels.unique()) == 3  # background + two regions
    kept = remove_small(m, min_area=5)
    assert kept.sum() == 9 and kept[0, 0, 5, 5] == 1 and kept[0, 0, 12, 12] == 0


def test_dilate_disk_radius():
    m = torch.zeros(1, 1, 11, 11)
    m[..., 5, 5] = 1
    d = dilate(m, 2)
    assert d.sum() == 13  # disk of radius 2: 13 pixels
    assert d[0, 0, 5, 7] == 1 and d[0, 0, 7, 7] == 0


def test_blur_keeps_range_and_mass():
    m = _square()
    b = gaussian_blur(m, 1.5)
    assert 0 <= b.min() and b.max() <= 1 and abs(b.sum() - m.sum()) < 0.5


def test_heatmap_to_mask_recipe():
    heat = 0.9 * _square(s=4) + 0.3 * _square(y=10, x=10, s=4)
    mask = heatmap_to_mask(heat, threshold_value=0.5, dilate_px=1, min_area=4)
    assert mask[0, 0, 5, 5] == 1 and mask[0, 0, 3, 5] == 1  # dilated by 1 px
    assert mask[0, 0, 11, 11] == 0  # below threshold
    soft = heatmap_to_mask(heat, 0.5, blur_sigma=1.0)
    assert 0 < soft[0, 0, 3, 5] < 1


class RedTopLeft(torch.nn.Module):
    """A tiny classifier whose 'bad' logit is the redness of the top-left quadrant."""

    def forward(self, x):
        red = x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])
        h, w = x.shape[-2:]
        bad = 8 * red[:, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([torch.zeros_like(bad), bad], 1)


def test_classifier_reward_and_saliency_points_at_the_cause():
    images = torch.rand(2, 3, 32, 32) * 0.3
    images[:, 0, :16, :16] = 1.0
    reward = ClassifierReward(RedTopLeft(), bad_class=1)
    out = check_output(reward(images, ["x", "y"]), images)
    assert out.heatmap is None and torch.all(out.score < 0.5)
    clean = torch.rand(2, 3, 32, 32) * 0.3
    assert torch.all(reward(clean, ["x", "y"]).score > out.score)
    sal = saliency_map(reward, images, ["x", "y"])
    assert sal.shape == (2, 1, 32, 32)
    assert sal[..., :16, :16].mean() > 5 * sal[..., 16:, 16:].mean()


def test_color_reward_contract_and_gradient():
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = check_output(ColorReward()(images, ["a"] * 3), images)
    out.score.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    assert ColorReward()(red).heatmap.min() > 0.99


def test_registry_names_and_import_paths():
    assert isinstance(build_reward("color", color=[0, 1, 0]), ColorReward)
    assert isinstance(build_reward("focusnfix.rewards.color:ColorReward"), ColorReward)
    with pytest.raises(FocusNFixError, match="valid names"):
        build_reward("nope")
    with pytest.raises(FocusNFixError, match="has no attribute"):
        build_reward("focusnfix.rewards.color:Nope")
    with pytest.raises(FocusNFixError, match="must be a .safetensors"):
        ClassifierReward(RedTopLeft(), weights="model.pt")


def test_no_trust_remote_code_and_no_pickle_loading_in_source():
    from pathlib import Path

    import focusnfix

    root = Path(focusnfix.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code" not in text, path
        for banned in ("torch.load(", "import pickle", "pickle.load", "weights_only=False", "use_safetensors=False"):
            assert banned not in text, (path, banned)


def test_skip_above_gives_clean_images_an_empty_mask():
    from focusnfix.config import MaskConfig
    from focusnfix.rewards.compose import mask_from

    reward = ClassifierReward(RedTopLeft(), bad_class=1)
    images = torch.rand(2, 3, 32, 32) * 0.3
    images[0, 0, :16, :16] = 1.0  # only image 0 has the problem
    images[1, 2] += 0.6  # image 1 is blue: clearly clean (score ~0.99)
    plain, _ = mask_from(reward, images, ["x", "y"], MaskConfig(source="saliency", threshold=0.3, dilate=0))
    gated, _ = mask_from(reward, images, ["x", "y"],
                         MaskConfig(source="saliency", threshold=0.3, dilate=0, skip_above=0.9))
    assert plain[1].sum() > 0  # saliency of a clean image still marks something (normalised per image)
    assert gated[1].sum() == 0 and torch.equal(gated[0], plain[0])
    assert gated[0, :, :16, :16].mean() > gated[0, :, 16:, 16:].mean()


def test_mask_source_none_is_the_global_constraint():
    """mask.source=none: M = 0 everywhere (the constraint covers the whole image), whatever the reward says."""
    from focusnfix.config import MaskConfig
    from focusnfix.rewards.compose import mask_from

    class Loud:
        name = "loud"

        def __call__(self, images, prompts):
            raise AssertionError("the reward is not asked for a map")

    images = torch.rand(2, 3, 8, 8)
    mask, heat = mask_from(Loud(), images, ["a", "b"], MaskConfig(source="none"))
    assert mask.shape == (2, 1, 8, 8) and not mask.any() and not heat.any()
