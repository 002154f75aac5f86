"""Composite rewards: a weighted sum of rewards, each with its own mask settings.

    r(I, c) = Σ_i w_i · r_i(I, c)        M(I0) = ∪_i M_i(I0)  (or ∩_i)

Configured as::

    reward:
      name: sum
      args:
        combine: union                       # or intersection
        terms:
          - {name: nsfw, weight: 1.0, mask: {source: saliency, threshold: 0.3, dilate: 8}}
          - {name: clip-score, weight: 0.01, args: {model: openai/clip-vit-large-patch14}, mask: {threshold: 0.6}}

A term's ``mask`` keys are those of the top-level ``mask`` section; keys it leaves out take the
defaults of :class:`focusnfix.config.MaskConfig`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import FocusNFixError
from .masks import heatmap_to_mask, saliency_map
from .base import TERMS, RewardOutput, call_reward, reward_name


def problem_map(reward, images: torch.Tensor, prompts: Sequence[str],
                source: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(map, score)``: the map a mask is thresholded from (the reward's heatmap, or gradient
    saliency when it has none) and the reward's score of ``images``."""
    with torch.no_grad():
        out = call_reward(reward, images, prompts)
    heat = out.heatmap if source in ("auto", "heatmap") else None
    if heat is None and source == "heatmap":
        raise FocusNFixError(f"mask.source=heatmap but reward {reward.name!r} returns no heatmap; use saliency or auto")
    if heat is None:
        heat = saliency_map(reward, images, prompts)
    return heat.float(), out.score.detach()


def mask_from(reward, images: torch.Tensor, prompts: Sequence[str], m) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, map)`` for one reward with mask settings ``m`` (a :class:`~focusnfix.config.MaskConfig`).

    Images whose score is already ``>= m.skip_above`` get an empty mask: nothing to fix, so the
    region constraint then covers the whole image (saliency maps are normalised per image and would
    otherwise mark arbitrary regions of clean images)."""
    if m.source == "none":  # M = 0: the constraint covers the whole image (the global comparison)
        empty = torch.zeros_like(images[:, :1])
        return empty, empty
    heat, score = problem_map(reward, images, prompts, m.source)
    mask = heatmap_to_mask(heat, m.threshold, m.quantile, m.dilate, m.blur, m.min_area)
    if m.skip_above is not None:
        mask = mask * (score < m.skip_above).to(mask).view(-1, 1, 1, 1)
    return mask, heat


def problem_mask(reward, images: torch.Tensor, prompts: Sequence[str], m) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, map)``: a composite reward makes its own (per-term settings), else :func:`mask_from` with ``m``."""
    if hasattr(reward, "problem_mask"):
        return reward.problem_mask(images, prompts)
    return mask_from(reward, images, prompts, m)


class WeightedSum:
    """``score = Σ w_i r_i``; ``heatmap``: the element-wise max of the terms' heatmaps (unweighted)
    (those that have one).

    :meth:`problem_mask` makes each term's mask with its own settings and combines them, so a
    heatmap reward and a saliency reward can share one run.
    """

    name = "sum"

    def __init__(self, terms: list[dict[str, Any]], combine: str = "union"):
        from ..config import MaskConfig, from_dict
        from .registry import build_reward

        if combine not in ("union", "intersection"):
            raise FocusNFixError(f"reward.args.combine must be union or intersection, got {combine!r}")
        if not terms:
            raise FocusNFixError("reward.args.terms is empty; give at least one {name: ..., weight: ...}")
        self.combine, self.terms = combine, []
        for i, term in enumerate(terms):
            unknown = set(term) - {"name", "args", "weight", "mask"}
            if "name" not in term or unknown:
                raise FocusNFixError(f"reward.args.terms[{i}] needs `name` and may have args, weight, mask; "
                                     f"got {sorted(term)}")
            reward = build_reward(term["name"], **(term.get("args") or {}))
            mask = from_dict(MaskConfig, term.get("mask") or {}, f"reward.args.terms[{i}].mask.")
            self.terms.append((reward, float(term.get("weight", 1.0)), mask))
        self.differentiable = all(r.differentiable for r, _, _ in self.terms)
        self.term_names = term_names([reward_name(r) for r, _, _ in self.terms])

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        outs = [(call_reward(r, images, prompts), w) for r, w, _ in self.terms]
        score = sum(w * o.score for o, w in outs)
        heats = [o.heatmap for o, _ in outs if o.heatmap is not None]
        heat = torch.stack(heats).amax(0) if heats else None
        terms = {name: o.score.detach() for (o, _), name in zip(outs, self.term_names)}
        info = {**{f"{name}/score": t for name, t in terms.items()}, TERMS: terms}
        return RewardOutput(score=score, heatmap=heat, info=info)

    def problem_mask(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, map)``: per-term masks combined by union (max) or intersection (min)."""
        masks, maps = zip(*(mask_from(r, images, prompts, m) for r, _, m in self.terms))
        reduce = torch.amax if self.combine == "union" else torch.amin
        return reduce(torch.stack(masks), 0), torch.stack(maps).amax(0)


def term_names(names: list[str]) -> list[str]:
    """The terms' names in logs: each reward's name, numbered from the second of the same name on
    (``clip-zeroshot``, ``clip-zeroshot-2``)."""
    out, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out
