"""Image helpers: tensors <-> PNG, mask overlays, and the I0 | mask | I sample grids."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

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


def save_png(image: torch.Tensor | Image.Image, path: str | Path, min_side: int = 0,
             text: dict[str, str] | None = None) -> Path:
    """Write a PNG atomically (temporary file, rename): a full disk or a crash leaves no partial image.
    ``image``: a ``(3,H,W)`` tensor in [0,1] (upscaled to ``min_side``, :func:`to_pil`) or a PIL image as it is.
    ``text``: PNG text chunks (metadata) to add."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    try:
        (image if isinstance(image, Image.Image) else to_pil(image, min_side)).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    return path


GRID_KEY = "focusnfix-grid"  # PNG text chunk of a sample grid: its layout, so one cell can be cut out again
COLUMNS = ("Î0 (frozen)", "M (problem mask)", "Î (fine-tuned)")  # the labels under a sample grid's cells


def save_preview_grid(preview: dict[str, torch.Tensor], path: str | Path, min_side: int = 384,
                      rows: Sequence[tuple[str, int]] | None = None, title: str = "") -> Path:
    """One row per sample: Î0 | M(Î0) overlaid on Î0 | Î, nearest-neighbour upscaled to ``min_side`` px wide. With
    ``rows`` (each row's (prompt, seed)) or a ``title`` (e.g. ``step 30``) the grid is labelled (PIL's default font):
    under each row a band with the column names under the cells and ``seed S: prompt`` (cut to the width), and a
    footer with the title; the cells stay where an unlabelled grid has them across (x) and move down by one band per
    row above. The PNG records its layout (:func:`grid_cell`)."""
    ref, mask, img = preview["reference"], preview["mask"], preview["images"]
    over = overlay(ref, mask)
    cells = [[ref[i], over[i], img[i]] for i in range(ref.shape[0])]
    layout = {"rows": len(cells), "cols": 3, "height": int(ref.shape[-2]), "width": int(ref.shape[-1]), "pad": 2,
              "columns": ["I0", "mask", "I"]}
    image = grid(cells, pad=layout["pad"])
    if rows is None and not title:
        return save_png(image, path, min_side=min_side, text={GRID_KEY: json.dumps(layout)})
    labelled, extra = _labelled(to_pil(image, min_side), layout, [f"seed {s}: {p}" for p, s in rows or ()], title)
    return save_png(labelled, path, text={GRID_KEY: json.dumps({**layout, **extra})})


def _labelled(tiles: Image.Image, layout: dict, labels: list[str], title: str) -> tuple[Image.Image, dict]:
    """The upscaled grid ``tiles`` with a text band below each row and a footer (see :func:`save_preview_grid`);
    returns it and the layout's additions: ``scale``, ``band`` and ``footer`` (px of the labelled image)."""
    from PIL import ImageDraw

    rows, cols, h, w, pad = (layout[k] for k in ("rows", "cols", "height", "width", "pad"))
    scale = tiles.width // (cols * (w + pad) + pad)
    pen = _Pen(max(10, min(24, tiles.width // 32)))
    band, footer = 2 * pen.line + 2, (pen.line + 2 if title else 0)
    pitch, room = scale * (h + pad) + band, tiles.width - 2 * scale * pad
    out = Image.new("RGB", (tiles.width, scale * pad + rows * pitch + footer), "white")
    draw = ImageDraw.Draw(out)
    for i in range(rows):
        y = scale * pad + i * pitch
        out.paste(tiles.crop((0, y - i * band, tiles.width, y - i * band + scale * (h + pad))), (0, y))
        y += scale * (h + pad)
        for j, name in enumerate(COLUMNS[:cols]):
            text = pen.fit(name, scale * w)
            pen.write(draw, scale * (pad + j * (w + pad)) + (scale * w - pen.font.getlength(text)) / 2, y, text)
        if i < len(labels):
            pen.write(draw, scale * pad, y + pen.line, pen.fit(labels[i], room))
    if title:
        pen.write(draw, scale * pad, out.height - footer, pen.fit(title, room))
    return out, {"scale": scale, "band": band, "footer": footer}


class _Pen:
    """Black one-line text in PIL's default font at ``size`` px (FreeType's built-in face, else the bitmap font;
    never a download). That font has no Î: it is written as an I with a circumflex drawn above it."""

    def __init__(self, size: int):
        from PIL import ImageFont

        try:
            self.font = ImageFont.load_default(size=size)
        except (ImportError, TypeError, OSError):  # Pillow without FreeType, or older than 10.1
            self.font = ImageFont.load_default()
        self.hat = max(2, size // 5)  # the circumflex's height and half width
        top = self.font.getbbox("I")[1]
        self.dy = max(0, self.hat + 1 - top)  # the glyphs' offset in a line: room for the circumflex above I
        self.accent = self.dy + top - 1  # the circumflex's foot, from the line's top
        self.line = self.dy + self.font.getbbox("Agy")[3] + 2

    def fit(self, text: str, width: float) -> str:
        """``text`` on one line, cut with "..." to at most ``width`` px."""
        text = " ".join(str(text).split())
        if self.font.getlength(text) <= width:
            return text
        text = text[: max(1, int(len(text) * width / max(self.font.getlength(text), 1.0)))]
        while text and self.font.getlength(text + "...") > width:
            text = text[:-1]
        return text + "..."

    def write(self, draw, x: float, y: float, text: str) -> None:
        """``text`` in the line whose top left is (``x``, ``y``)."""
        for k, part in enumerate(text.split("Î")):
            if k:
                draw.text((x, y + self.dy), "I", fill="black", font=self.font)
                mid, foot = x + self.font.getlength("I") / 2, y + self.accent
                draw.line([(mid - self.hat, foot), (mid, foot - self.hat), (mid + self.hat, foot)], fill="black")
                x += self.font.getlength("I")
            draw.text((x, y + self.dy), part, fill="black", font=self.font)
            x += self.font.getlength(part)


def grid_cell(path: str | Path, row: int, col: int) -> Image.Image | None:
    """Cell (``row``, ``col``) of a sample grid saved by :func:`save_preview_grid`, at the grid's scale; None
    for a PNG without its layout record (an older grid) or a cell outside it."""
    with Image.open(path) as png:
        try:
            layout = json.loads(png.text.get(GRID_KEY, "null") if hasattr(png, "text") else "null")
            rows, cols, h, w, pad = (int(layout[k]) for k in ("rows", "cols", "height", "width", "pad"))
            band, footer = int(layout.get("band", 0)), int(layout.get("footer", 0))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        scale = png.width // (cols * (w + pad) + pad)
        pitch = scale * (h + pad) + band
        if (not (0 <= row < rows and 0 <= col < cols) or scale < 1 or png.width != scale * (cols * (w + pad) + pad)
                or png.height != scale * pad + rows * pitch + footer):
            return None
        x, y = scale * (pad + col * (w + pad)), scale * pad + row * pitch
        return png.crop((x, y, x + scale * w, y + scale * h)).copy()
