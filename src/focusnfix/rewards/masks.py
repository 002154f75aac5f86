"""Problem-region masks M(I0): heatmap or saliency -> threshold -> small-region removal -> dilation -> blur.

Pure tensor functions. Maps and masks are ``(B, 1, H, W)`` in [0, 1], high = problem. The mask is
always computed from the frozen model's image I0 under no-grad, never from the trained image I.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..images import dilate  # noqa: F401 (re-exported: focusnfix.rewards.masks.dilate)


def threshold(heat: torch.Tensor, value: float = 0.5, quantile: float | None = None) -> torch.Tensor:
    """Binary mask ``heat >= value``, or ``heat >= q-th quantile`` of each map when ``quantile`` is set."""
    if quantile is not None:
        q = torch.quantile(heat.flatten(1).float(), quantile, dim=1).view(-1, 1, 1, 1)
        return ((heat >= q) & (heat > 0)).to(heat.dtype)
    return (heat >= value).to(heat.dtype)


def label_components(mask: torch.Tensor, max_iters: int | None = None) -> torch.Tensor:
    """8-connected component labels of a binary mask ``(B,1,H,W)``: 0 = background, >0 = component id."""
    b, _, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, 1, h, w).expand(b, 1, h, w)
    on = mask > 0.5
    labels = torch.where(on, ids, torch.zeros_like(ids))
    for _ in range(max_iters or h * w):  # propagate the max id inside each component until stable
        grown = torch.where(on, F.max_pool2d(labels, 3, stride=1, padding=1), labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def boxes(mask: torch.Tensor) -> torch.Tensor:
    """Each 8-connected region of a binary mask ``(B,1,H,W)`` replaced by its bounding box (a detector's
    output as a mask)."""
    labels = label_components(mask)
    out = torch.zeros_like(mask, dtype=torch.float32)
    rows = torch.arange(mask.shape[-2], device=mask.device).view(-1, 1)
    cols = torch.arange(mask.shape[-1], device=mask.device).view(1, -1)
    for b in range(mask.shape[0]):
        for label in labels[b].unique().tolist():
            if label == 0:
                continue
            ys, xs = torch.nonzero(labels[b, 0] == label, as_tuple=True)
            inside = (rows >= ys.min()) & (rows <= ys.max()) & (cols >= xs.min()) & (cols <= xs.max())
            out[b, 0][inside] = 1.0
    return out


def remove_small(mask: torch.Tensor, min_area: int) -> torch.Tensor:
    """Drop connected regions with fewer than ``min_area`` pixels."""
    if min_area <= 1:
        return mask
    labels = label_components(mask)
    out = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        lab = labels[i].flatten()
        counts = torch.bincount(lab, minlength=int(lab.max()) + 1)
        keep = counts >= min_area
        keep[0] = False
        out[i] = keep[labels[i]].to(mask.dtype)
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B,C,H,W)`` with std ``sigma`` px (reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))
    r = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def heatmap_to_mask(heat: torch.Tensor, threshold_value: float = 0.5, quantile: float | None = None,
                    dilate_px: int = 0, blur_sigma: float = 0.0, min_area: int = 0) -> torch.Tensor:
    """The full mask recipe: threshold -> remove regions < min_area -> dilate -> blur. ``(B,1,H,W)`` in [0,1]."""
    m = threshold(heat.float(), threshold_value, quantile)
    m = remove_small(m, min_area)
    m = dilate(m, dilate_px)
    return gaussian_blur(m, blur_sigma).clamp(0, 1)


def saliency_map(reward, images: torch.Tensor, prompts: Sequence[str], smooth_sigma: float = 1.0) -> torch.Tensor:
    """Gradient saliency of an image-level reward: ``|∂(-r)/∂I|`` max over channels, smoothed,
    normalised to [0, 1] per image. ``(B,1,H,W)``; computed with gradients enabled on a detached copy."""
    from .base import call_reward

    x = images.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        score = call_reward(reward, x, prompts).score
        (grad,) = torch.autograd.grad(-score.sum(), x)
    sal = gaussian_blur(grad.abs().amax(1, keepdim=True), smooth_sigma)
    return sal / sal.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def box_heatmap(boxes: Sequence[Sequence[Sequence[float]]], height: int, width: int, dilate_px: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A detector's boxes as a heatmap ``(B,1,H,W)`` in {0, 1}: per image, the union of its ``(x, y, w, h)``
    boxes (pixels, clipped to the image; fractional edges rounded outwards), dilated by ``dilate_px``."""
    heat = torch.zeros(len(boxes), 1, height, width, device=device)
    for b, image_boxes in enumerate(boxes):
        for x, y, w, h in image_boxes:
            x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
            x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
            if x1 > x0 and y1 > y0:
                heat[b, 0, y0:y1, x0:x1] = 1.0
    return dilate(heat, dilate_px)
