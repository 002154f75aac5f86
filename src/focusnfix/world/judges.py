"""Independent judges of the world (evaluation only; never used as training rewards).

* :class:`AlignmentOracle` checks every attribute the caption names (shape, colour, background,
  position, size) with a separately trained multi-head classifier.
* :class:`DefectJudge` detects both defects at image level with its own architecture, data
  pool and seed (different from the rewards').
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .ckpt import load_module_weights
from .data import ATTRIBUTES, parse_caption
from .nets import JudgeNet, OracleNet
from .rewards import _default, _run


@dataclass
class AlignmentResult:
    """Per-image results: ``all_correct (B,)`` in {0,1}; ``fraction (B,)`` of named attributes
    right; ``correct[attr] (B,)`` in {0,1} or NaN when the prompt does not name ``attr``;
    ``predicted[attr]`` the oracle's reading of each image."""

    all_correct: torch.Tensor
    fraction: torch.Tensor
    correct: dict[str, torch.Tensor]
    predicted: dict[str, list[str]]


class AlignmentOracle(torch.nn.Module):
    """``oracle(images (B,3,H,W) in [0,1], prompts) -> AlignmentResult``."""

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        net = OracleNet()
        self.net = load_module_weights(net, weights or _default("alignment_oracle")).eval()
        self.net.requires_grad_(False)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The attribute values the oracle reads off each image."""
        logits = _run(self.net, images)
        return {k: [ATTRIBUTES[k][i] for i in v.argmax(1).tolist()] for k, v in logits.items()}

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> AlignmentResult:
        pred = self.predict(images)
        wanted = [parse_caption(p) for p in prompts]
        correct = {
            k: torch.tensor([float(pred[k][i] == w[k]) if k in w else float("nan")
                             for i, w in enumerate(wanted)])
            for k in ATTRIBUTES
        }
        stack = torch.stack(list(correct.values()), 1)  # (B, n_attr)
        named = ~torch.isnan(stack)
        hits = torch.nan_to_num(stack, nan=0.0).sum(1)
        fraction = hits / named.sum(1).clamp(min=1)
        return AlignmentResult(all_correct=(fraction == 1).float(), fraction=fraction,
                               correct=correct, predicted=pred)


class DefectJudge(torch.nn.Module):
    """``judge(images) -> {"artifact": (B,), "unwanted": (B,)}`` probabilities in [0, 1]."""

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        self.net = load_module_weights(JudgeNet(), weights or _default("defect_judge")).eval()
        self.net.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        p = torch.sigmoid(_run(self.net, images))
        return {"artifact": p[:, 0], "unwanted": p[:, 1]}


__all__ = ["AlignmentOracle", "AlignmentResult", "DefectJudge"]
