"""Reward Guidance: inference-time steering by the reward's gradient on the predicted clean image,
with an optional region constraint (the two inference-time baselines of the Focus-N-Fix paper).

At each step i in the window ``[start, end)`` (fractions of the T steps):

    x̂0 = predicted_x0(x_t, model output)                 (DDIM eq. 12; flow models: x̂0 = x_t − σ v)
    g  = ∂ r(D(x̂0), c) / ∂ x̂0                          (D = VAE decoder; latent-space gradient)
    g  ← g ⊙ M↓    (region-constrained variant only)
    x̂0' = x̂0 + s · g,   ε' = (x_t − √ᾱ_t x̂0') / √(1 − ᾱ_t)

and the sampler continues with ε' (converted back to v for v-prediction models; for flow models the
velocity v' = (x_t − x̂0') / σ that gives x̂0'). The region
constraint M↓ is the mask M(Î0) of the *base* model's image for the same (prompt, seed),
max-pooled to the latent grid, so a latent cell may change when any of its pixels is flagged;
outside it the guidance adds nothing (the sample can still drift there through later steps).
``scale = 0`` reproduces the base images exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..backbones.sd import Conditioning
from ..rewards.base import call_reward


class RewardGuidance:
    """``guidance(model_fn) -> model_fn``. ``mask``: ``(B,1,H,W)`` image-space problem mask or None."""

    def __init__(self, backbone, reward, prompts: Sequence[str], scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0, steps: int = 20, mask: torch.Tensor | None = None):
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"reward guidance window must satisfy 0 <= start <= end <= 1, got [{start}, {end}]")
        self.backbone, self.reward, self.prompts = backbone, reward, list(prompts)
        self.scale, self.first, self.last = float(scale), int(start * steps), int(end * steps)
        self.rule = backbone.step_rule(steps, backbone.device)  # x̂0 and its inverse at step i: DDIM or flow
        self.latent_mask = None
        if mask is not None:
            self.latent_mask = backbone.latent_mask(mask.to(backbone.device))

    def __call__(self, model_fn):
        state = {"step": 0}

        def fn(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            out = model_fn(x, t, cond)
            i = state["step"]
            state["step"] += 1
            if self.scale == 0.0 or not self.first <= i < self.last:
                return out
            with torch.enable_grad():
                x0 = self.rule.x0(out.detach(), i, t, x.detach()).requires_grad_(True)
                images = self.backbone.decode(x0)
                score = call_reward(self.reward, images, self.prompts).score
                (grad,) = torch.autograd.grad(score.sum(), x0)
            if self.latent_mask is not None:
                grad = grad * self.latent_mask.to(grad)
            x0_new = x0.detach() + self.scale * grad
            return self.rule.output_for(x0_new, i, t, x)

        return fn
