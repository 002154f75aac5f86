"""Shared method types: a training batch and the frozen reference (Î0, M(Î0))."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Trajectories to sample: one prompt c and one noise seed (x_T) each, and K for the batch.

    K is drawn once when the batch is made and used for the whole trajectory (never per step).
    """

    prompts: list[str]
    seeds: list[int]
    k: int
    step: int = 0  # the optimizer step (from 0) the batch belongs to: schedules such as objective.lam_warmup


@dataclass
class Reference:
    """Frozen-model output for a batch: Î0 ``(B,3,H,W)``, mask M ``(B,1,H,W)``, and the raw map
    the mask came from (reward heatmap or saliency) ``(B,1,H,W)`` when just computed (None when read
    from the reference cache, which keeps only what the loss uses)."""

    images: torch.Tensor
    mask: torch.Tensor
    heatmap: torch.Tensor | None = None
