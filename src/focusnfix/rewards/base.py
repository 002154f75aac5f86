"""The reward contract shared by every reward, method and metric.

Images are float tensors ``(B, 3, H, W)`` in ``[0, 1]``; heatmaps are ``(B, 1, H, W)`` in
``[0, 1]`` with high = problem. Scores are ``(B,)`` with higher = better.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@dataclass
class RewardOutput:
    """What a reward returns: ``score (B,)``, optional ``heatmap (B,1,H,W)``, free-form ``info``."""

    score: torch.Tensor
    heatmap: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Reward(Protocol):
    """A reward ``r(I, c)``: ``reward(images, prompts) -> RewardOutput``.

    ``differentiable`` says whether ``score`` carries gradients to ``images`` (needed for DRaFT /
    Focus-N-Fix training and reward guidance). ``name`` is used in logs.
    """

    name: str
    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput: ...


def check_output(out: RewardOutput, images: torch.Tensor) -> RewardOutput:
    """Validate a reward's output against the contract; raises ``ValueError`` with the reason."""
    b, _, h, w = images.shape
    if not isinstance(out, RewardOutput):
        raise ValueError(f"reward must return RewardOutput, got {type(out).__name__}")
    if out.score.shape != (b,):
        raise ValueError(f"reward score must have shape ({b},), got {tuple(out.score.shape)}")
    if out.heatmap is not None and out.heatmap.shape != (b, 1, h, w):
        raise ValueError(
            f"reward heatmap must have shape ({b}, 1, {h}, {w}), got {tuple(out.heatmap.shape)}"
        )
    return out
