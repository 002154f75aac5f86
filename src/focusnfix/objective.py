"""The Focus-N-Fix objective (Xing et al., CVPR 2025, eq. 3), in pixel space:

    L(θ) = -r(Î, c) + λ · ‖(1 - M(Î0)) ⊙ (Î - Î0)‖_F

Î is the fine-tuned model's image, Î0 the frozen model's image for the same (c, x_T), M the problem
mask (1 = problem). With λ = 0 the loss is exactly DRaFT's ``-r(Î, c)``.

``norm="rms"`` is a normalised variant (not in the paper): the Frobenius norm divided by
``sqrt(3·H·W)``, i.e. the root-mean-square pixel change outside the mask, so λ means the same
at every resolution.
"""
from __future__ import annotations

import math

import torch


def region_constraint(images: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, norm: str = "fro") -> torch.Tensor:
    """‖(1 - M) ⊙ (Î - Î0)‖ per image, ``(B,)``. ``images``, ``ref``: ``(B,3,H,W)``; ``mask``: ``(B,1,H,W)``."""
    diff = (1.0 - mask) * (images - ref)
    value = diff.flatten(1).norm(dim=1)
    if norm == "rms":
        value = value / math.sqrt(diff[0].numel())
    elif norm != "fro":
        raise ValueError(f"norm must be fro or rms, got {norm!r}")
    return value


def fnf_loss(score: torch.Tensor, constraint: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Mean over the batch of ``-r + λ · constraint``; ``constraint`` may be None when λ = 0."""
    loss = -score
    if lam != 0.0:
        loss = loss + lam * constraint
    return loss.mean()
