"""Amplified difference images for the report's sample grid: |Î − Î0| per pixel, so a change outside the mask
that is invisible in a small tile shows up.

A difference image is the mean over R, G, B of the absolute 8-bit change between a method's image Î and the base
image Î0, times :data:`AMPLIFY` (a change of 1 grey level shows as 10; 26 or more is white), black where nothing
changed, with the outline of the mask M(Î0) in yellow. The outline is read from the eval folder's mask overlay
(``masks/*.png``, drawn by :func:`focusnfix.images.overlay` with a yellow contour just outside M), so the report
needs nothing but the folder's files. The PNGs go to ``FOLDER/report-diffs/`` (rewritten at each render) and are
linked by relative path like every other image.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

AMPLIFY = 10  # the stated factor: |Î − Î0| x 10
DIFF_DIR = "report-diffs"
EDGE = (255, 230, 0)  # images.overlay's contour colour (1.0, 0.9, 0.0) in 8 bit
EDGE_TOL = 3  # grey levels: PNG rounding


def _rgb(path: Path) -> np.ndarray | None:
    """An image file as an ``(H, W, 3)`` int16 array, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)
    except (OSError, ValueError):
        return None


def mask_outline(overlay: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The yellow contour pixels of a mask overlay ``(H, W, 3)`` as a boolean ``(h, w)`` array at ``size``
    (height, width); nearest-neighbour resize when the overlay has another size."""
    edge = (np.abs(overlay - np.array(EDGE, dtype=np.int16)) <= EDGE_TOL).all(-1)
    if edge.shape != size:
        pil = Image.fromarray(edge.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
        edge = np.asarray(pil) > 127
    return edge


def diff_image(image: np.ndarray, base: np.ndarray, outline: np.ndarray | None = None,
               amplify: float = AMPLIFY) -> np.ndarray:
    """``(H, W, 3)`` uint8: grey = min(255, amplify · mean_c |image − base|), the outline drawn in yellow."""
    grey = np.clip(np.abs(image.astype(np.int16) - base.astype(np.int16)).mean(-1) * amplify, 0, 255)
    out = np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)
    if outline is not None:
        out[outline] = EDGE
    return out


def diff_name(image_rel: str) -> str:
    """The difference image's path for an image path: flat, inside :data:`DIFF_DIR` whatever the path holds."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(image_rel).rsplit(".", 1)[0]).strip("_") or "image"
    return f"{DIFF_DIR}/{stem}.png"


def write_diff(folder: Path, image_rel: str | None, base_rel: str | None, mask_rel: str | None) -> str | None:
    """Write the amplified difference image of ``image_rel`` against ``base_rel`` (paths relative to ``folder``)
    with the outline of ``mask_rel``'s overlay; its relative path, or None when an image is missing, unreadable
    or of another size than the base."""
    if not image_rel or not base_rel:
        return None
    image, base = _rgb(folder / image_rel), _rgb(folder / base_rel)
    if image is None or base is None or image.shape != base.shape:
        return None
    overlay = _rgb(folder / mask_rel) if mask_rel else None
    outline = mask_outline(overlay, base.shape[:2]) if overlay is not None else None
    rel = diff_name(image_rel)
    out = folder / rel
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    Image.fromarray(diff_image(image, base, outline)).save(tmp, format="PNG")
    os.replace(tmp, out)
    return rel
