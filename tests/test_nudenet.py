"""The NudeNet reward: torch port of the YOLOv8n detector vs the nudenet package's own onnxruntime session.

No real photographs: plain synthetic images (gradients, noise, skin-tone blobs, rectangles) give no
detections, so four more are *provoked*: a few gradient-ascent steps on our torch port push one class
up on a skin-tone image. The comparisons against the package are independent of how they were made.
"""
import importlib.util

import numpy as np
import pytest
import torch

from focusnfix.errors import FocusNFixError

HAVE_PKGS = all(importlib.util.find_spec(m) is not None for m in ("nudenet", "onnx", "onnxruntime", "cv2"))
needs_pkgs = pytest.mark.skipif(
    not HAVE_PKGS, reason="needs nudenet (AGPL-3.0), onnx and onnxruntime: pip install focusnfix[nudenet]")

PLAIN_SIZES = [(256, 256), (300, 200), (180, 320), (512, 512), (128, 128), (320, 320)]
PROVOKE = ["FEMALE_BREAST_EXPOSED", "BELLY_EXPOSED", "FACE_FEMALE", "BUTTOCKS_EXPOSED"]


def plain_image(kind: int, h: int, w: int, g: np.random.Generator) -> np.ndarray:
    """A float RGB image ``(h, w, 3)`` in [0, 1]: 0 gradient, 1 noise, 2 skin-tone blobs, 3 rectangles."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if kind == 0:
        c = g.uniform(0, 1, (3, 3))
        return np.clip(c[0] * xx[..., None] + c[1] * yy[..., None] + 0.3 * c[2], 0, 1)
    if kind == 1:
        return g.uniform(0, 1, (h, w, 3))
    img = np.broadcast_to(g.uniform(0, 1, 3), (h, w, 3)).copy()
    for _ in range(4 if kind == 2 else 6):
        if kind == 2:
            cy, cx, r = g.uniform(0.2, 0.8), g.uniform(0.2, 0.8), g.uniform(0.1, 0.3)
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - m) + np.array([0.87, 0.67, 0.55]) * g.uniform(0.7, 1.1) * m
        else:
            y0, x0 = g.integers(0, h - 10), g.integers(0, w - 10)
            img[y0:y0 + g.integers(5, h // 2), x0:x0 + g.integers(5, w // 2)] = g.uniform(0, 1, 3)
    return np.clip(img, 0, 1)


def u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> ``(1, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255


def bgr(a: np.ndarray) -> np.ndarray:
    """What ``NudeDetector.detect`` is given: an OpenCV-style BGR array."""
    return np.ascontiguousarray(a[..., ::-1])


@pytest.fixture(scope="module")
def reward():
    from focusnfix.rewards.nudenet import NudeNetReward

    return NudeNetReward()


@pytest.fixture(scope="module")
def package():
    """The package's detector, its session on one thread."""
    import onnxruntime as ort
    from nudenet import NudeDetector

    from focusnfix.rewards.nudenet import bundled_onnx_path

    det = NudeDetector()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    det.onnx_session = ort.InferenceSession(str(bundled_onnx_path()), opts, providers=["CPUExecutionProvider"])
    return det


@pytest.fixture(scope="module")
def images(reward):
    """uint8 RGB images: 6 plain ones of several sizes, 4 provoked 320 x 320 ones and 4 crops / resizes of them."""
    import cv2

    g = np.random.default_rng(0)
    plain = [u8(plain_image(i % 4, h, w, g)) for i, (h, w) in enumerate(PLAIN_SIZES)]
    start = torch.from_numpy(np.stack([plain_image(2, 320, 320, g) for _ in PROVOKE])).permute(0, 3, 1, 2).float()
    z = torch.logit(start.clamp(0.02, 0.98)).requires_grad_(True)
    idx = torch.tensor([4 + reward.labels.index(c) for c in PROVOKE])
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(8):
        out, _ = reward.raw(torch.sigmoid(z))
        loss = -out[torch.arange(len(PROVOKE)), idx].topk(5, -1).values.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    provoked = [u8(x.permute(1, 2, 0).detach().numpy()) for x in torch.sigmoid(z)]
    derived = [provoked[0][:, 60:260], provoked[1][40:300], cv2.resize(provoked[2], (480, 400)), provoked[3][::2, ::2]]
    return {"plain": plain, "provoked": provoked, "derived": [np.ascontiguousarray(d) for d in derived]}


def all_images(images):
    return images["plain"] + images["provoked"] + images["derived"]


def package_blob(a: np.ndarray) -> np.ndarray:
    from nudenet.nudenet import _read_image

    return _read_image(bgr(a), 320)[0]


def assert_same_detections(ours, ref):
    assert [d["class"] for d in ours] == [d["class"] for d in ref], (ours, ref)
    for o, r in zip(ours, ref):
        assert abs(o["score"] - r["score"]) <= 1e-4  # see test_head_matches_onnxruntime_on_same_input
        assert np.abs(np.array(o["box"]) - np.array(r["box"])).max() <= 1  # int() of floats equal to ~1e-4 px


@needs_pkgs
def test_head_matches_onnxruntime_on_same_input(reward, package, images):
    blobs = [package_blob(a) for a in all_images(images)]
    ref = np.concatenate([package.onnx_session.run(None, {"images": b})[0] for b in blobs])  # (n, 22, 2100)
    with torch.no_grad():
        ours = reward.net(torch.from_numpy(np.concatenate(blobs))).numpy()
    assert ours.shape == ref.shape == (len(blobs), 4 + 18, 2100)
    assert ref[:, 4:].max() > 0.9  # the provoked images do move the detector
    # the same float32 network in two kernel libraries (onnxruntime's MLAS, like torch's kernels, picks its
    # code by CPU): a few ulps per op over the detector's layers, up to ~1e3 eps = 1e-4 on scores in [0, 1]
    # (measured <= 2.5e-6 over AVX-512, AVX2 and default torch kernels); noise of half a grey level in
    # the input (a preprocessing slip) moves scores by 1.5e-2
    assert np.abs(ours[:, 4:] - ref[:, 4:]).max() <= 1e-4
    assert np.abs(ours[:, :4] - ref[:, :4]).max() <= 1e-2


@needs_pkgs
def test_detections_match_package(reward, package, images):
    """Our postprocessing of our head's output on the package's preprocessed tensor == ``detect()``."""
    from focusnfix.rewards.nudenet import postprocess

    n_dets, classes = 0, set()
    for a in all_images(images):
        with torch.no_grad():
            out = reward.net(torch.from_numpy(package_blob(a)))
        ours = postprocess(out, max(a.shape[:2]) / 320, a.shape[0], a.shape[1], reward.labels)[0]
        ref = package.detect(bgr(a))
        assert_same_detections(ours, ref)
        n_dets, classes = n_dets + len(ref), classes | {d["class"] for d in ref}
    assert n_dets >= 6 and len(classes) >= 3, (n_dets, classes)


@needs_pkgs
def test_torch_preprocessing_matches_package(reward, package, images):
    """Pad-only inputs (longer side 320) give the package's tensor and detections exactly; resized ones
    differ by the package's uint8 rounding of the resized image (< 0.8 grey levels of 255)."""
    from focusnfix.rewards.nudenet import preprocess

    for a in all_images(images):
        x, scale = preprocess(to_tensor(a))
        diff = np.abs(x.numpy() - package_blob(a)).max() * 255
        assert scale == max(a.shape[:2]) / 320
        if max(a.shape[:2]) == 320:
            assert diff < 1e-3
            assert_same_detections(reward.detect(to_tensor(a))[0], package.detect(bgr(a)))
        else:
            assert diff <= 0.8


@needs_pkgs
def test_score_gradient_and_heatmap(reward, images):
    from focusnfix.rewards import check_output

    x = torch.cat([to_tensor(a) for a in images["provoked"][:2] + [images["plain"][-1]]]).requires_grad_(True)
    out = check_output(reward(x, ["a photo"] * 3), x)
    assert torch.all((out.score >= 0) & (out.score <= 1))
    assert out.score[2] > 0.9 > out.score[0]  # plain image ~ safe, provoked breast image not
    assert torch.all(1 - out.score <= out.info["max_conf"] + 1e-6)  # the soft max stays below the max
    out.score.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad[:2].abs().sum() > 0
    heat = out.heatmap
    assert heat.shape == (3, 1, 320, 320) and set(heat.unique().tolist()) <= {0.0, 1.0}
    assert heat[0].sum() > 0 and heat[2].sum() == 0
    for b, dets in enumerate(out.info["detections"]):
        for d in dets:
            if d["class"] in reward.classes and d["score"] > reward.threshold:
                x0, y0, w, h = d["box"]
                assert heat[b, 0, y0:y0 + h, x0:x0 + w].min() == 1


@needs_pkgs
def test_heatmap_only_chosen_classes_and_non_square(images):
    from focusnfix.rewards.nudenet import NudeNetReward

    a = images["provoked"][2]  # provoked towards FACE_FEMALE, which is not an exposed class
    faces = NudeNetReward(classes=["FACE_FEMALE"])(to_tensor(a), [""])
    assert any(d["class"] == "FACE_FEMALE" for d in faces.info["detections"][0]) and faces.heatmap.sum() > 0
    exposed = NudeNetReward()(to_tensor(a), [""])
    chosen = [d for d in exposed.info["detections"][0] if d["class"].endswith("_EXPOSED")]
    assert (exposed.heatmap.sum() > 0) == bool(chosen)
    tall = to_tensor(images["derived"][1])
    assert NudeNetReward()(tall, [""]).heatmap.shape == (1, 1, *tall.shape[-2:])


@needs_pkgs
def test_exposed_rate_counts_package_detections(package, images):
    from focusnfix.rewards.nudenet import EXPOSED, exposed_rate

    def rate(imgs, classes, threshold):
        return np.mean([any(d["class"] in classes and d["score"] > threshold for d in package.detect(bgr(a)))
                        for a in imgs])

    imgs = all_images(images)  # several sizes: a list of (3, H, W) tensors
    expected = rate(imgs, EXPOSED, 0.5)
    assert 0 < expected < 1
    assert exposed_rate([to_tensor(a)[0] for a in imgs], threshold=0.5) == pytest.approx(expected)
    faces = ["FACE_FEMALE", "FACE_MALE"]
    batch = torch.cat([to_tensor(a) for a in images["provoked"]])  # one (4, 3, 320, 320) tensor
    expected = rate(images["provoked"], faces, 0.3)
    assert expected > 0 and exposed_rate(batch, threshold=0.3, classes=faces) == pytest.approx(expected)


@needs_pkgs
def test_registry_weight_files_and_bad_args(tmp_path):
    from safetensors.torch import save_file

    from focusnfix.rewards.registry import build_reward
    from focusnfix.rewards.nudenet import bundled_onnx_path, read_onnx

    path = tmp_path / "320n.safetensors"
    save_file(read_onnx(bundled_onnx_path())[0], path)
    r = build_reward("nudenet", weights=str(path), threshold=0.4)
    assert r.name == "nudenet" and r.differentiable and r.threshold == 0.4 and r.size == 320
    (tmp_path / "w.pt").write_bytes(b"x")
    for kwargs in ({"weights": str(tmp_path / "w.pt")}, {"weights": str(tmp_path / "no.onnx")},
                   {"classes": ["NOT_A_CLASS"]}, {"channel_order": "rbg"}):
        with pytest.raises(FocusNFixError) as e:
            build_reward("nudenet", **kwargs)
        assert "\n" not in str(e.value)


def test_missing_packages_error_is_one_line(monkeypatch):
    from focusnfix.rewards import nudenet

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nudenet" else real(name, *a))
    with pytest.raises(FocusNFixError, match=r"pip install focusnfix\[nudenet\]") as e:
        nudenet.NudeNetReward()
    assert "\n" not in str(e.value)
