"""Stable Diffusion 3 / 3.5 backbone: three text encoders (CLIP-L, CLIP-G, T5-XXL), pooled projections,
true classifier-free guidance, and the joint-attention transformer (MMDiT) as denoiser.

Reuses ``StableDiffusion3Pipeline.encode_prompt``; one model call is the pipeline's transformer call
with CFG applied, so the sampler reproduces ``StableDiffusion3Pipeline.__call__`` for the same latents.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..sampling import Conditioning
from .flow import FlowBackbone
from .sd import _negatives


class SD3Backbone(FlowBackbone):
    """Frozen SD3/3.5 parts around a diffusers ``StableDiffusion3Pipeline``."""

    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    max_shift_default = 1.16  # StableDiffusion3Pipeline's default when the scheduler config has no max_shift

    def _encode(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> Conditioning:
        cfg = guidance_scale > 1.0
        with torch.no_grad():
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                list(prompts), None, None, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                negative_prompt=_negatives(negative_prompt, len(prompts)))
        if cfg:
            pos, pooled = torch.cat([neg, pos]), torch.cat([neg_pooled, pooled])
        return Conditioning(embeds=pos, guidance_scale=guidance_scale, added={"pooled_projections": pooled})

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity v with CFG applied: ``v_u + w (v_c - v_u)``."""
        x_in = torch.cat([x, x]) if cond.cfg else x
        out = self.unet(hidden_states=x_in, timestep=t.expand(x_in.shape[0]),
                        encoder_hidden_states=cond.embeds.to(x_in.dtype),
                        pooled_projections=cond.added["pooled_projections"].to(x_in.dtype), return_dict=False)[0]
        if cond.cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance_scale * (text - uncond)
        return out
