"""CLIP rewards on a tiny random CLIPModel saved to disk (offline, real transformers classes)."""
import pytest
import torch
import torch.nn.functional as F

from focusnfix.errors import FocusNFixError
from focusnfix.rewards.registry import build_reward
from focusnfix.rewards import check_output

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from focusnfix.backbones.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), image_mean=MEAN, image_std=STD)


@pytest.fixture(scope="module")
def clip_score(clip_dir):
    return build_reward("clip-score", model=str(clip_dir))


def _images(b=2, h=40, w=48, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_clip_score_matches_manual_computation(clip_score, clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    images, prompts = _images(), ["a red cat", "a blue square"]
    out = check_output(clip_score(images, prompts), images)
    model, tok = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)
    # manual CLIP preprocessing: shorter side 40 -> 32 (48 -> 38), centre crop 32, normalise
    x = F.interpolate(images, size=(32, 38), mode="bicubic", align_corners=False, antialias=True)[..., :, 3:35]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    ids = tok(prompts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        txt = model.text_projection(model.text_model(**ids).pooler_output)
    expected = 100 * F.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(out.score, expected, atol=1e-4), (out.score, expected)
    assert torch.allclose(out.info["cosine"] * 100, out.score)


def test_clip_score_gradient_and_heatmap(clip_score):
    images = _images(3, 36, 36, seed=1).requires_grad_(True)
    prompts = ["a red cat"] * 3
    out = clip_score(images, prompts)
    assert out.heatmap is None  # 'auto': the caller differentiates the score, so no heatmap is made
    out.score.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
    with torch.no_grad():  # how Focus-N-Fix asks for M(I0)
        heat = check_output(clip_score(images.detach(), prompts), images).heatmap
    assert heat.shape == (3, 1, 36, 36) and heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0
    assert not heat.requires_grad


def test_clip_score_heatmap_marks_the_misaligned_region(clip_score):
    """Greying out the 20 % of pixels the map flags raises the score more than greying 20 % at random."""
    images, prompts = _images(6, 32, 32, seed=2), ["a red cat"] * 6
    with torch.no_grad():
        out = clip_score(images, prompts)
        flagged = out.heatmap >= out.heatmap.flatten(1).quantile(0.8, dim=1).view(-1, 1, 1, 1)
        random = torch.rand(out.heatmap.shape, generator=torch.Generator().manual_seed(0)) >= 0.8
        gains = [clip_score(torch.where(m, 0.5, images), prompts).score - out.score for m in (flagged, random)]
    assert gains[0].mean() > gains[1].mean() + 1.0, gains


def test_aesthetic_linear_and_mlp_heads(clip_dir, tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPModel

    torch.manual_seed(0)
    mlp = {"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.randn(8),
           "layers.2.weight": torch.randn(4, 8), "layers.2.bias": torch.randn(4),
           "layers.10.weight": torch.randn(1, 4), "layers.10.bias": torch.randn(1)}  # index order, not text order
    save_file(mlp, tmp_path / "mlp.safetensors")
    linear = {"weight": torch.randn(1, 16), "bias": torch.randn(1)}
    save_file(linear, tmp_path / "linear.safetensors")
    images = _images(2, 32, 32, seed=3).requires_grad_(True)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    x = (images.detach() - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = F.normalize(model.visual_projection(model.vision_model(pixel_values=x).pooler_output), dim=-1)
    for name in ("mlp", "linear"):
        r = build_reward("aesthetic", model=str(clip_dir), head=str(tmp_path / f"{name}.safetensors"))
        out = check_output(r(images, ["", ""]), images)
        if name == "mlp":
            h = F.linear(F.linear(F.linear(emb, mlp["layers.0.weight"], mlp["layers.0.bias"]),
                                  mlp["layers.2.weight"], mlp["layers.2.bias"]),
                         mlp["layers.10.weight"], mlp["layers.10.bias"])
            assert torch.allclose(out.score, h[:, 0], atol=1e-4)
        else:
            assert torch.allclose(out.score, F.linear(emb, linear["weight"], linear["bias"])[:, 0], atol=1e-4)
        assert out.heatmap is None and r.differentiable
    out.score.sum().backward()
    assert images.grad.abs().sum() > 0


def test_bad_inputs_are_one_line_errors(clip_dir, tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(1, 7)}, tmp_path / "wrong_dim.safetensors")
    save_file({"foo": torch.randn(1, 7)}, tmp_path / "no_layers.safetensors")
    cases = [
        ("clip-score", dict(model=str(tmp_path / "nope"))),
        ("clip-score", dict(model="not a path or id")),
        ("clip-score", dict(model="org/not-downloaded")),  # offline and not in the cache
        ("clip-score", dict(model=str(clip_dir), heatmap="sometimes")),
        ("aesthetic", dict(model=str(clip_dir), head=str(tmp_path / "head.pt"))),
        ("aesthetic", dict(model=str(clip_dir), head=str(tmp_path / "wrong_dim.safetensors"))),
        ("aesthetic", dict(model=str(clip_dir), head=str(tmp_path / "no_layers.safetensors"))),
    ]
    for name, args in cases:
        with pytest.raises(FocusNFixError) as e:
            build_reward(name, **args)
        assert "\n" not in str(e.value), str(e.value)
