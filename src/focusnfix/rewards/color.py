"""A simple heatmap reward: penalise pixels close to an unwanted colour.

Useful for smoke tests and the tiny demo: it has a per-pixel heatmap (like RichHF artifact maps)
and a differentiable score, with no weights to download.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import RewardOutput


class ColorReward:
    """``heatmap = exp(-||I(x) - color||² / (2 σ²))`` per pixel; ``score = -mean(heatmap)``
    (higher = less of the colour)."""

    differentiable = True

    def __init__(self, color: Sequence[float] = (1.0, 0.0, 0.0), sigma: float = 0.35, name: str = "color"):
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"color must be 3 numbers in [0, 1], got {list(color)}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.color = torch.tensor([float(c) for c in color]).view(1, 3, 1, 1)
        self.sigma = float(sigma)
        self.name = name

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> RewardOutput:
        d2 = (images - self.color.to(images)).pow(2).sum(1, keepdim=True)
        heat = torch.exp(-d2 / (2 * self.sigma**2))
        return RewardOutput(score=-heat.mean(dim=(1, 2, 3)), heatmap=heat)
