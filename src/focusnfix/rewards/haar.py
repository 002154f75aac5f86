"""Face and body boxes from OpenCV's bundled Haar cascades (Viola-Jones), as a judge and a box heatmap.

A detector reward in the contract of :class:`~focusnfix.rewards.nudenet.NudeNetBoxes`: ``heatmap (B,1,H,W)``
in ``{0, 1}`` = the union of the boxes the cascades find, dilated by ``dilate`` px, so ``mask.source: heatmap``
(or ``auto``) masks the faces / bodies of Î0 directly; no gradient (``differentiable = False``).

``score (B,)``, higher = better, by ``score``:

* ``found`` (default): 1 if any cascade finds at least one box, else 0; as an eval judge its mean is the share
  of images with a detectable face (``haar-faces``) or person (``haar-bodies``), a check that faces / bodies the
  prompts ask for are still intact and recognisable.
* ``area``: ``-(percentage of the image inside the boxes)``, like ``nudenet-boxes``: fewer / smaller faces is
  better (anonymising, removing people).

Detection: grey levels (ITU-R 601 luma), histogram equalised, ``CascadeClassifier.detectMultiScale`` with
``scale_factor`` and ``min_neighbors``, boxes at least ``min_size`` x the shorter image side. Weights: the
cascade XML files in ``cv2.data.haarcascades`` (``haarcascade_<name>.xml``; Intel's license, shipped in the
``opencv-python-headless`` 4.x wheels; OpenCV 5 dropped them). Nothing is downloaded. Install:
``pip install focusnfix[judges]``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch

from ..errors import FocusNFixError
from ..images import dilate
from .base import RewardOutput
from .masks import box_heatmap
from .ocr import INSTALL_HINT, to_uint8


def _cv2():
    """OpenCV with its Haar cascades; lazy import: an optional extra."""
    try:
        import cv2
    except ImportError:
        raise FocusNFixError(f"the haar judges need OpenCV 4.x (opencv-python-headless<5): {INSTALL_HINT}") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FocusNFixError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them); install "
                             f"opencv-python-headless<5: {INSTALL_HINT}")
    return cv2


def available_cascades() -> list[str]:
    """Names ``NAME`` of the bundled ``haarcascade_NAME.xml`` files."""
    folder = Path(_cv2().data.haarcascades)
    return sorted(p.name[len("haarcascade_"):-len(".xml")] for p in folder.glob("haarcascade_*.xml"))


@functools.lru_cache(maxsize=8)
def _cascade(name: str):
    cv2 = _cv2()
    path = Path(cv2.data.haarcascades) / f"haarcascade_{name}.xml"
    if not path.is_file():
        raise FocusNFixError(f"unknown Haar cascade {name!r}; bundled: {', '.join(available_cascades())}")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise FocusNFixError(f"OpenCV could not read the Haar cascade {path.name}; reinstall it: {INSTALL_HINT}")
    return cascade


class HaarBoxes:
    """Haar-cascade boxes: score ``found`` or ``area``, heatmap = the dilated boxes (module docstring).

    Args:
        cascades: names of bundled cascades (``frontalface_default``, ``profileface``, ``upperbody``,
            ``fullbody``, ...: :func:`available_cascades`); None = the class's default.
        scale_factor: image pyramid step of ``detectMultiScale`` (> 1; smaller finds more, slower).
        min_neighbors: overlapping raw detections a box needs (higher = fewer false boxes).
        min_size: smallest box side as a fraction of the shorter image side (0 = the cascade's own window).
        dilate: px added around the boxes in the heatmap.
        score: ``found`` (1 if any box, else 0) or ``area`` (``-%`` of the image inside boxes).

    ``info``: ``boxes`` (per image, ``[x, y, w, h, cascade]``), ``n_boxes`` ``(B,)``.
    """

    name = "haar"
    differentiable = False
    cascades: tuple[str, ...] = ("frontalface_default",)
    metric_label = "Haar cascade finds a box, share of images"

    def __init__(self, cascades: Sequence[str] | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: float = 0.05, dilate: int = 8, score: str = "found"):
        names = [cascades] if isinstance(cascades, str) else list(cascades or self.cascades)
        if not names:
            raise FocusNFixError(f"{self.name} needs at least one cascade; bundled: {', '.join(available_cascades())}")
        if not float(scale_factor) > 1.0:
            raise FocusNFixError(f"{self.name} scale_factor must be > 1, got {scale_factor}")
        if int(min_neighbors) < 0 or not 0.0 <= float(min_size) < 1.0 or int(dilate) < 0:
            raise FocusNFixError(f"{self.name}: min_neighbors and dilate must be >= 0 and min_size in [0, 1), got "
                                 f"{min_neighbors}, {dilate}, {min_size}")
        if score not in ("found", "area"):
            raise FocusNFixError(f"{self.name} score must be found or area, got {score!r}")
        self.detectors = [(n, _cascade(str(n))) for n in names]
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self.min_size, self.dilate, self.score = float(min_size), int(dilate), score

    def detect(self, image) -> list[list]:
        """``[x, y, w, h, cascade]`` boxes of one ``(H,W,3)`` uint8 RGB image, cascade by cascade."""
        cv2 = _cv2()
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = int(self.min_size * min(grey.shape))
        found = []
        for name, cascade in self.detectors:
            boxes = cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                             minSize=(side, side))
            found += [[int(v) for v in box] + [name] for box in boxes]
        return found

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        """``images (B,3,H,W)`` in ``[0,1]``; prompts are ignored."""
        boxes = [self.detect(a) for a in to_uint8(images)]
        raw = box_heatmap([[b[:4] for b in bs] for bs in boxes], *images.shape[-2:], device=images.device)
        n = torch.tensor([len(b) for b in boxes], dtype=torch.float32, device=images.device)
        score = (n > 0).float() if self.score == "found" else -100.0 * raw.mean(dim=(1, 2, 3))
        heat = dilate(raw, self.dilate)
        return RewardOutput(score=score, heatmap=heat, info={"boxes": boxes, "n_boxes": n.cpu()})


class HaarFaces(HaarBoxes):
    """Frontal faces (``haarcascade_frontalface_default.xml``)."""

    name, cascades = "haar-faces", ("frontalface_default",)
    metric_label = "face found (Haar cascade), share of images"


class HaarBodies(HaarBoxes):
    """Whole and upper bodies (``haarcascade_fullbody.xml`` and ``haarcascade_upperbody.xml``)."""

    name, cascades = "haar-bodies", ("fullbody", "upperbody")
    metric_label = "person found (Haar cascades), share of images"
