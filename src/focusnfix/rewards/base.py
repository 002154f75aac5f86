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
    if not torch.is_tensor(out.score) or not out.score.is_floating_point():
        raise ValueError(f"reward score must be a float tensor of shape ({b},), got {type(out.score).__name__}")
    if out.score.shape != (b,):
        raise ValueError(f"reward score must have shape ({b},), got {tuple(out.score.shape)}")
    if out.heatmap is not None and (not torch.is_tensor(out.heatmap) or out.heatmap.shape != (b, 1, h, w)):
        shape = tuple(out.heatmap.shape) if torch.is_tensor(out.heatmap) else type(out.heatmap).__name__
        raise ValueError(f"reward heatmap must have shape ({b}, 1, {h}, {w}), got {shape}")
    return out


TERMS = "terms"  # RewardOutput.info key of a composite reward's unweighted term scores: {term name: (B,)}


def term_logs(out: RewardOutput) -> dict[str, torch.Tensor]:
    """A composite reward's terms for the training logs, ``{"reward/<term>": mean score}`` (unweighted, 0-d
    detached tensors, read with the other logs in one host sync); ``{}`` for a reward without terms."""
    terms = out.info.get(TERMS) if isinstance(out.info, dict) else None
    if not isinstance(terms, dict):
        return {}
    return {f"reward/{name}": score.detach().float().mean() for name, score in terms.items() if torch.is_tensor(score)}


def reward_name(reward) -> str:
    """How a reward is named in messages: its ``name``, else its class."""
    name = getattr(reward, "name", None)
    return name if isinstance(name, str) and name else type(reward).__name__


def call_reward(reward, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
    """``reward(images, prompts)``, checked against the contract (:func:`check_output`): a plug-in that
    returns the wrong type or shape is a one-line :class:`~focusnfix.errors.FocusNFixError` naming it."""
    from ..errors import FocusNFixError, one_line

    out = reward(images, prompts)
    try:
        return check_output(out, images)
    except ValueError as e:
        raise FocusNFixError(one_line(f"reward {reward_name(reward)!r} ({type(reward).__module__}."
                                      f"{type(reward).__qualname__}) breaks the reward contract: {e}", 240)) from None
