"""Safe Latent Diffusion (Schramowski et al., CVPR 2023) as a guidance function for the one sampler.

diffusers' ``StableDiffusionPipelineSafe`` is deprecated, so the guidance term is implemented here
from the paper (eqs. 3-8) and checked against that pipeline in the tests. With CFG on, each step
evaluates the UNet on [uncond; prompt; safety concept] and replaces the CFG direction by

    ε̃ = ε_u + s_g · ((ε_p − ε_u) − γ),     γ = μ ⊙ (ε_S − ε_u) + s_m · ν        (eqs. 3, 4, 7)
    μ = clip(|ε_p − ε_S| · s_S, max 1) where ε_p − ε_S < λ, else 0                (eqs. 5, 6)
    ν ← β_m · ν + (1 − β_m) · γ                                                   (eq. 8)

γ is subtracted only from step ``warmup_steps`` on; ν (momentum) builds up from the first step.
``sld_guidance_scale`` (s_S) <= 1 or no CFG disables SLD (base images exactly).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..backbones.sd import Conditioning
from ..errors import FocusNFixError

DEFAULT_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
                   " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism,"
                   " weapons, child"
                   " abuse, brutality, cruelty")  # the SLD paper's concept (Schramowski et al. 2023, Sec. 4)


@dataclass(frozen=True)
class SLDConfig:
    """SLD hyper-parameters: warm-up δ, scale s_S, threshold λ, momentum scale s_m, momentum β_m."""

    warmup_steps: int = 10
    guidance_scale: float = 1000.0
    threshold: float = 0.01
    momentum_scale: float = 0.3
    mom_beta: float = 0.4


PRESETS = {  # the paper's hyper-parameter configurations (Schramowski et al. 2023, Sec. 5)
    "weak": SLDConfig(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SLDConfig(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SLDConfig(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SLDConfig(0, 5000.0, 1.0, 0.5, 0.7),
}
# short option names (``sld:scale=...,warmup=...``) -> SLDConfig fields, with their types
OPTIONS = {"scale": ("guidance_scale", float), "warmup": ("warmup_steps", int), "threshold": ("threshold", float),
           "momentum": ("momentum_scale", float), "beta": ("mom_beta", float)}


def sld_config(preset: str = "medium", **overrides) -> SLDConfig:
    """A preset's :class:`SLDConfig` with some values replaced, by short name (``scale``, ``warmup``,
    ``threshold``, ``momentum``, ``beta``; see :data:`OPTIONS`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown SLD preset {preset!r}; valid: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown SLD option(s) {unknown}; valid: {', '.join(OPTIONS)}")
    values = {OPTIONS[k][0]: OPTIONS[k][1](v) for k, v in overrides.items()}
    if values.get("warmup_steps", 0) < 0:
        raise ValueError(f"SLD warmup must be >= 0, got {values['warmup_steps']}")
    if not 0.0 <= values.get("mom_beta", 0.0) <= 1.0:
        raise ValueError(f"SLD beta (momentum decay) must be in [0, 1], got {values['mom_beta']}")
    return replace(PRESETS[preset], **values)


class SLDGuidance:
    """``guidance(model_fn) -> model_fn`` for :func:`focusnfix.sampling.sample` (SD 1.x / 2.x backbones)."""

    def __init__(self, backbone, preset: str | SLDConfig = "medium", concept: str = DEFAULT_CONCEPT):
        if backbone.denoiser != "unet":
            raise FocusNFixError(f"SLD is defined for the UNet families (SD 1.x/2.x, SDXL); {type(backbone).__name__} "
                                 "is a flow-matching transformer: compare with rg or rg-region instead")
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ValueError(f"unknown SLD preset {preset!r}; valid: {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        self.backbone, self.cfg = backbone, preset
        with torch.no_grad():
            self.concept = backbone.pipe.encode_prompt([concept], backbone.device, 1, False)[0]  # (1, L, D)

    def __call__(self, model_fn):
        backbone, c = self.backbone, self.cfg
        state = {"step": 0, "momentum": None}

        def fn(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
            if not cond.cfg or c.guidance_scale <= 1.0:
                return model_fn(x, t, cond)
            b = x.shape[0]
            embeds = torch.cat([cond.embeds, self.concept.to(cond.embeds).expand(b, -1, -1)])
            x_in = backbone.scheduler.scale_model_input(torch.cat([x, x, x]), t)
            out = backbone.unet(x_in, t, encoder_hidden_states=embeds.to(x_in.dtype), return_dict=False)[0]
            e_u, e_p, e_s = out.chunk(3)
            direction = e_p - e_u
            diff = e_p - e_s
            mu = torch.where(diff >= c.threshold, torch.zeros_like(diff),
                             (diff.abs() * c.guidance_scale).clamp(max=1.0))
            momentum = state["momentum"] if state["momentum"] is not None else torch.zeros_like(direction)
            gamma = mu * (e_s - e_u) + c.momentum_scale * momentum
            state["momentum"] = c.mom_beta * momentum + (1 - c.mom_beta) * gamma
            if state["step"] >= c.warmup_steps:
                direction = direction - gamma
            state["step"] += 1
            return e_u + cond.guidance_scale * direction

        return fn
