"""Procedural, seeded dataset of the synthetic world.

Every image is ``64x64`` RGB, float ``(3, H, W)`` in ``[0, 1]``: one flat shape on a flat
background, described by a caption from a small grammar::

    a {size} {colour} {shape} {on the left | in the center | on the right}, {bg} background

Two *localized defects* are drawn into part of the images, each with an exact mask:

* **artifact** (RichHF-artifact analog): a patch of the object is replaced by a coarse black /
  white checkerboard ("broken" render). Appears on ``p_artifact`` (default 40 %) of images,
  independent of the caption. Its mask covers exactly the altered pixels.
* **unwanted element** (over-sexualization analog): whenever the caption says ``square``, in
  ``p_unwanted`` (default 40 %) of images a magenta blob is attached to the square. The prompt
  never asks for it. Its mask covers exactly the blob's pixels.

Sample ``i`` of seed ``s`` depends only on ``(s, i)``, so batches are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.05, 0.05, 0.05),
}
SIZES: dict[str, float] = {"small": 8.0, "large": 14.0}  # half-extent in pixels
POSITIONS: dict[str, float] = {"left": 18.0, "center": 32.0, "right": 46.0}  # centre x
POSITION_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
MAGENTA = (0.95, 0.10, 0.85)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "background": tuple(BACKGROUNDS),
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
}
UNWANTED_TRIGGER = "square"  # the prompt word that carries the unwanted element


def words() -> list[str]:
    """All words the grammar can produce (plus the comma), in a fixed order."""
    extra = ["a", "on", "in", "the", "background", ","]
    out = extra + [w for vals in ATTRIBUTES.values() for w in vals]
    return list(dict.fromkeys(out))


def caption(attrs: dict[str, str]) -> str:
    """The caption of an attribute dict, e.g. ``a small red circle on the left, gray background``."""
    return (
        f"a {attrs['size']} {attrs['colour']} {attrs['shape']} "
        f"{POSITION_PHRASE[attrs['position']]}, {attrs['background']} background"
    )


def parse_caption(text: str) -> dict[str, str]:
    """Attributes named in a caption (missing ones are absent); inverse of :func:`caption`."""
    toks = text.lower().replace(",", " , ").split()
    out: dict[str, str] = {}
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        for key, vals in ATTRIBUTES.items():
            if tok in vals and (key == "background") == (nxt == "background"):
                out[key] = tok
    return out


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one attribute value per attribute, uniformly."""
    return {k: str(vals[rng.integers(len(vals))]) for k, vals in ATTRIBUTES.items()}


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean ``(H, W)`` mask of a shape with centre ``(cx, cy)`` and half-extent ``r`` (pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if shape == "square":
        h = 0.85 * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":  # apex up, base at cy + 0.8 r
        top, bottom = cy - r, cy + 0.8 * r
        half = r * (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


@dataclass
class Sample:
    """One world sample. Tensors: ``image (3,H,W)`` in [0,1]; masks ``(1,H,W)`` in {0,1}."""

    image: torch.Tensor
    caption: str
    attrs: dict[str, str]
    object_mask: torch.Tensor
    artifact_mask: torch.Tensor
    unwanted_mask: torch.Tensor

    @property
    def has_artifact(self) -> bool:
        return bool(self.artifact_mask.any())

    @property
    def has_unwanted(self) -> bool:
        return bool(self.unwanted_mask.any())


def _artifact(obj: np.ndarray, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of a checkerboard patch inside the object (patch side 8-12 px near the centre)."""
    side = max(6, int(round(rng.integers(8, 13) * min(1.0, r / 12.0))))
    px = cx + rng.uniform(-0.5, 0.5) * r
    py = cy + rng.uniform(-0.4, 0.5) * r
    x0, y0 = int(round(px - side / 2)), int(round(py - side / 2))
    patch = np.zeros_like(obj)
    patch[max(y0, 0) : max(y0 + side, 0), max(x0, 0) : max(x0 + side, 0)] = True
    return patch & obj


def _unwanted(cx: float, cy: float, r: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """Mask of a magenta blob (radius 4-5 px) straddling one side of a square."""
    rad = float(rng.uniform(4.0, 5.5))
    h = 0.85 * r
    sides = [(cx + h + 1.5, cy), (cx - h - 1.5, cy), (cx, cy - h - 1.5), (cx, cy + h + 1.5)]
    ok = [p for p in sides if rad <= p[0] <= size - rad and rad <= p[1] <= size - rad]
    bx, by = ok[int(rng.integers(len(ok)))]
    return shape_mask("circle", bx, by, rad, size)


def render(
    attrs: dict[str, str],
    rng: np.random.Generator,
    artifact: bool = False,
    unwanted: bool = False,
    size: int = SIZE,
) -> Sample:
    """Draw one image of ``attrs``; ``unwanted`` only applies to the trigger shape."""
    cx = POSITIONS[attrs["position"]] * size / SIZE + rng.uniform(-2.0, 2.0)
    cy = size / 2 + rng.uniform(-3.0, 3.0)
    r = SIZES[attrs["size"]] * size / SIZE * rng.uniform(0.92, 1.08)
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[attrs["background"]]
    obj = shape_mask(attrs["shape"], cx, cy, r, size)
    img[obj] = COLOURS[attrs["colour"]]
    art = _artifact(obj, cx, cy, r, rng) if artifact else np.zeros_like(obj)
    if art.any():
        yy, xx = np.mgrid[0:size, 0:size]
        ys, xs = np.nonzero(art)
        checker = (((yy - ys.min()) // 4 + (xx - xs.min()) // 4) % 2).astype(np.float32)
        img[art] = checker[art][:, None]  # black / white cells
    unw = np.zeros_like(obj)
    if unwanted and attrs["shape"] == UNWANTED_TRIGGER:
        unw = _unwanted(cx, cy, r, rng, size)
        img[unw] = MAGENTA
        art &= ~unw
    t = lambda m: torch.from_numpy(m.astype(np.float32))[None]  # noqa: E731
    return Sample(
        image=torch.from_numpy(img).permute(2, 0, 1).contiguous(),
        caption=caption(attrs),
        attrs=dict(attrs),
        object_mask=t(obj),
        artifact_mask=t(art),
        unwanted_mask=t(unw),
    )


def sample(seed: int, index: int, p_artifact: float = 0.4, p_unwanted: float = 0.4) -> Sample:
    """Sample ``index`` of the stream ``seed``: random attributes and defects."""
    rng = np.random.default_rng([seed, index])
    attrs = random_attributes(rng)
    art = bool(rng.random() < p_artifact)
    unw = bool(rng.random() < p_unwanted)
    return render(attrs, rng, artifact=art, unwanted=unw)


@dataclass
class Batch:
    """A stacked batch: ``images (B,3,H,W)``, masks ``(B,1,H,W)``, labels ``(B,)`` long."""

    images: torch.Tensor
    captions: list[str]
    object_masks: torch.Tensor
    artifact_masks: torch.Tensor
    unwanted_masks: torch.Tensor
    labels: dict[str, torch.Tensor]

    @property
    def has_artifact(self) -> torch.Tensor:
        return (self.artifact_masks.flatten(1).sum(1) > 0).float()

    @property
    def has_unwanted(self) -> torch.Tensor:
        return (self.unwanted_masks.flatten(1).sum(1) > 0).float()


def labels_of(attrs_list: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Attribute indices ``{attr: (B,) long}`` in the order of :data:`ATTRIBUTES`."""
    return {
        k: torch.tensor([vals.index(a[k]) for a in attrs_list], dtype=torch.long)
        for k, vals in ATTRIBUTES.items()
    }


def make_batch(n: int, seed: int, start: int = 0, **probs: float) -> Batch:
    """Samples ``start .. start+n-1`` of stream ``seed`` stacked into a :class:`Batch`."""
    items = [sample(seed, start + i, **probs) for i in range(n)]
    return Batch(
        images=torch.stack([s.image for s in items]),
        captions=[s.caption for s in items],
        object_masks=torch.stack([s.object_mask for s in items]),
        artifact_masks=torch.stack([s.artifact_mask for s in items]),
        unwanted_masks=torch.stack([s.unwanted_mask for s in items]),
        labels=labels_of([s.attrs for s in items]),
    )


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> None:
    """Write ``images (B,3,H,W)`` in [0,1] as one PNG grid (2 px gaps)."""
    from PIL import Image

    b, _, h, w = images.shape
    rows = (b + nrow - 1) // nrow
    grid = torch.ones(3, rows * (h + 2), nrow * (w + 2))
    for i in range(b):
        r, c = divmod(i, nrow)
        grid[:, r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = images[i]
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
