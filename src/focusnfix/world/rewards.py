"""Reward models of the world, trained on its ground truth (used for fine-tuning).

Both follow ``focusnfix.rewards.base.Reward``: ``reward(images (B,3,H,W) in [0,1], prompts)
-> RewardOutput(score (B,), heatmap (B,1,H,W) | None, info)``, higher score = better, heatmap
high = problem, differentiable w.r.t. ``images`` (their own parameters are frozen).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..rewards.base import RewardOutput
from .ckpt import load_module_weights
from .nets import ArtifactNet, SafetyNet


def _default(name: str) -> Path:
    from . import weights_path

    return weights_path(name)


def _to64(images: torch.Tensor) -> torch.Tensor:
    """Resize to the 64 px the networks were trained on (identity at 64 px)."""
    if images.shape[-2:] == (64, 64):
        return images
    return F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)


def _run(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``net`` on ``images`` at 64 px, moving the net to the images' device first (the trainer moves
    the model, not the reward)."""
    weight = next(net.parameters())
    if weight.device != images.device:
        net.to(images.device)
    return net(_to64(images.float()))


class _Frozen(torch.nn.Module):
    differentiable = True

    def __init__(self, net: torch.nn.Module, weights: str | Path) -> None:
        super().__init__()
        self.net = load_module_weights(net, weights).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always eval: no dropout / norm statistics
        return super().train(False)


class WorldArtifactReward(_Frozen):
    """Per-pixel artifact heatmap (sigmoid of :class:`ArtifactNet`); score = -severity.

    ``severity`` = percentage of the image area flagged (mean heatmap x 100), so a clean image
    scores about 0 and a typical broken patch about -2.
    """

    name = "world_artifact"

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__(ArtifactNet(), weights or _default("artifact_reward"))

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> RewardOutput:
        h, w = images.shape[-2:]
        logit = _run(self.net, images)
        heat = torch.sigmoid(logit)
        if (h, w) != (64, 64):
            heat = F.interpolate(heat, size=(h, w), mode="bilinear")
        severity = heat.mean(dim=(1, 2, 3)) * 100.0
        return RewardOutput(score=-severity, heatmap=heat, info={"severity": severity.detach()})


class WorldSafetyReward(_Frozen):
    """Image-level classifier of the unwanted element (magenta blob); no heatmap.

    ``score="logprob"`` (default) gives ``log p(clean)`` (non-saturating gradient for
    fine-tuning); ``score="prob"`` gives ``1 - p(unwanted)`` in [0, 1].
    """

    name = "world_safety"

    def __init__(self, weights: str | Path | None = None, score: str = "logprob") -> None:
        if score not in ("logprob", "prob"):
            raise ValueError(f"score must be 'logprob' or 'prob', got {score!r}")
        super().__init__(SafetyNet(), weights or _default("safety_reward"))
        self.score_type = score

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> RewardOutput:
        logit = _run(self.net, images)
        p_unwanted = torch.sigmoid(logit)
        score = -F.softplus(logit) if self.score_type == "logprob" else 1 - p_unwanted
        return RewardOutput(score=score, heatmap=None,
                            info={"p_unwanted": p_unwanted.detach(), "logit": logit.detach()})


class WorldArtifactBoxes:
    """A score-only artifact *detector* (for GRPO): boxes around the regions where the artifact model's
    map is >= ``threshold``; score = -(percentage of the image inside boxes); heatmap = the boxes.
    Piecewise constant in the pixels, so it has no useful gradient (``differentiable = False``). Not
    the evaluation judge: that is :class:`~focusnfix.world.judges.DefectJudge`, a separate network."""

    name, differentiable = "world_artifact_boxes", False

    def __init__(self, threshold: float = 0.5, weights: str | Path | None = None) -> None:
        self.model, self.threshold = WorldArtifactReward(weights), float(threshold)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> RewardOutput:
        from ..rewards.masks import boxes

        heat = self.model(images, prompts).heatmap
        box = boxes((heat >= self.threshold).float())
        area = box.mean(dim=(1, 2, 3)) * 100.0
        return RewardOutput(score=-area, heatmap=box, info={"box_area": area})


class WorldSafetyDecision:
    """A score-only safety decision (for GRPO): 1 when the safety classifier says clean (p < 0.5), else
    0; no heatmap, no gradient (a yes/no judge, like a VLM's answer)."""

    name, differentiable = "world_safety_decision", False

    def __init__(self, weights: str | Path | None = None) -> None:
        self.model = WorldSafetyReward(weights, score="prob")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> RewardOutput:
        p = self.model(images, prompts).info["p_unwanted"]
        return RewardOutput(score=(p < 0.5).float(), heatmap=None, info={"p_unwanted": p})


class WorldUnwantedBoxes:
    """A score-only detector of the unwanted element (for GRPO): a fixed colour rule, no network.
    Pixels near the element's magenta (R and B high, G low, checked on the 64 px image) that form a
    region of at least ``min_area`` pixels are boxed; score = -(percentage of the image inside boxes);
    heatmap = the boxes. No shape colour or background of the world is magenta, so the rule separates
    them (docs/grpo.md gives its precision and recall on the world's ground truth). Not the evaluation
    judge (:class:`~focusnfix.world.judges.DefectJudge`, a trained network)."""

    name, differentiable = "world_unwanted_boxes", False

    def __init__(self, min_area: int = 4, red: float = 0.6, green: float = 0.35, blue: float = 0.55) -> None:
        self.min_area, self.red, self.green, self.blue = int(min_area), float(red), float(green), float(blue)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> RewardOutput:
        from ..rewards.masks import boxes, remove_small

        small = _to64(images.float())
        r, g, b = small[:, 0:1], small[:, 1:2], small[:, 2:3]
        hit = ((r > self.red) & (g < self.green) & (b > self.blue)).float()
        box = boxes(remove_small(hit, self.min_area))
        if box.shape[-2:] != images.shape[-2:]:
            box = F.interpolate(box, size=images.shape[-2:], mode="nearest")
        area = box.mean(dim=(1, 2, 3)) * 100.0
        return RewardOutput(score=-area, heatmap=box, info={"box_area": area})


__all__ = ["WorldArtifactReward", "WorldSafetyReward", "WorldArtifactBoxes", "WorldSafetyDecision",
           "WorldUnwantedBoxes"]
