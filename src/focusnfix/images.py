"""Image helpers: tensors <-> PNG, mask overlays, and the I0 | mask | I sample grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_pil(image: torch.Tensor, min_side: int = 0) -> Image.Image:
    """``(3,H,W)`` in [0,1] -> PIL; upscaled with nearest neighbour to at least ``min_side`` px."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    if min_side and img.width < min_side:
        factor = -(-min_side // img.width)
        img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    return img


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate with a disk of ``radius`` px."""
    if radius <= 0:
        return mask
    r = torch.arange(-radius, radius + 1, device=mask.device, dtype=torch.float32)
    disk = ((r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) <= radius**2 + 1e-6).float().view(1, 1, 2 * radius + 1,
                                                                                       2 * radius + 1)
    return (F.conv2d(mask.float(), disk, padding=radius) > 0.5).to(mask.dtype)


def overlay(image: torch.Tensor, mask: torch.Tensor, dim: float = 0.35, edge=(1.0, 0.9, 0.0)) -> torch.Tensor:
    """Show mask ``(B,1,H,W)`` on ``image (B,3,H,W)``: outside the mask dimmed to ``dim``, a yellow
    contour around it. Works whatever colour the problem region has."""
    m = F.interpolate(mask.to(image), size=image.shape[-2:], mode="nearest")
    hard = (m > 0.5).to(image.dtype)
    contour = (dilate(hard, 1) - hard).clamp(0, 1)
    shaded = image * (dim + (1 - dim) * m)
    tint = torch.tensor(edge, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return shaded * (1 - contour) + tint * contour


def grid(rows: list[list[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Tile ``rows`` of equally sized ``(3,H,W)`` images into one ``(3, H', W')`` image with white padding."""
    h, w = rows[0][0].shape[-2:]
    ncol = max(len(r) for r in rows)
    out = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[:, y: y + h, x: x + w] = img.detach().float().cpu()
    return out


def save_png(image: torch.Tensor, path: str | Path, min_side: int = 0, text: dict[str, str] | None = None) -> Path:
    """Write a PNG atomically (temporary file, rename): a full disk or a crash leaves no partial image.
    ``text``: PNG text chunks (metadata) to add."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    try:
        to_pil(image, min_side).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    return path


GRID_KEY = "focusnfix-grid"  # PNG text chunk of a sample grid: its layout, so one cell can be cut out again


def save_preview_grid(preview: dict[str, torch.Tensor], path: str | Path, min_side: int = 384) -> Path:
    """One row per sample: Î0 | M(Î0) overlaid on Î0 | Î. The PNG records its layout (:func:`grid_cell`)."""
    ref, mask, img = preview["reference"], preview["mask"], preview["images"]
    over = overlay(ref, mask)
    rows = [[ref[i], over[i], img[i]] for i in range(ref.shape[0])]
    layout = {"rows": len(rows), "cols": 3, "height": int(ref.shape[-2]), "width": int(ref.shape[-1]), "pad": 2,
              "columns": ["I0", "mask", "I"]}
    return save_png(grid(rows, pad=layout["pad"]), path, min_side=min_side, text={GRID_KEY: json.dumps(layout)})


def grid_cell(path: str | Path, row: int, col: int) -> Image.Image | None:
    """Cell (``row``, ``col``) of a sample grid saved by :func:`save_preview_grid`, at the grid's scale; None
    for a PNG without its layout record (an older grid) or a cell outside it."""
    with Image.open(path) as png:
        try:
            layout = json.loads(png.text.get(GRID_KEY, "null") if hasattr(png, "text") else "null")
            rows, cols, h, w, pad = (int(layout[k]) for k in ("rows", "cols", "height", "width", "pad"))
        except (ValueError, TypeError, KeyError):
            return None
        scale = png.width // (cols * (w + pad) + pad)
        if not (0 <= row < rows and 0 <= col < cols) or scale < 1 or png.width != scale * (cols * (w + pad) + pad):
            return None
        x, y = scale * (pad + col * (w + pad)), scale * (pad + row * (h + pad))
        return png.crop((x, y, x + scale * w, y + scale * h)).copy()
