"""SDXL backbone: two text encoders, pooled embeddings and ``add_time_ids`` micro-conditioning.

Same sampler, objective and trainer as SD 1.x; only prompt encoding and the UNet's extra inputs
differ. The refiner is not used. The VAE is upcast to float32 when its config asks for it
(``force_upcast``: the SDXL VAE overflows in float16).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..sampling import Conditioning
from .sd import SDBackbone, _negatives


class SDXLBackbone(SDBackbone):
    """Frozen SDXL parts around a diffusers ``StableDiffusionXLPipeline``."""

    def __init__(self, pipe, resolution: int | None = None, height: int | None = None, width: int | None = None):
        super().__init__(pipe, resolution=resolution, height=height, width=width)
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)

    def time_ids(self, batch: int) -> torch.Tensor:
        """SDXL micro-conditioning per image, ``(B, 6)``: original size (h, w), crop top-left (0, 0), target
        size (h, w), as ``StableDiffusionXLPipeline`` sets them by default for a ``height`` x ``width`` image."""
        h, w = self.height, self.width
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=self.device)
        return ids.repeat(batch, 1)

    def _encode(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> Conditioning:
        """Both text encoders via the pipeline's ``encode_prompt``; pooled embeds and time ids in ``added``."""
        cfg = guidance_scale > 1.0
        with torch.no_grad():
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                negative_prompt=_negatives(negative_prompt, len(prompts)),
            )
        ids = self.time_ids(len(prompts))
        if cfg:
            pos, pooled, ids = torch.cat([neg, pos]), torch.cat([neg_pooled, pooled]), torch.cat([ids, ids])
        return Conditioning(embeds=pos, guidance_scale=guidance_scale, added={"text_embeds": pooled, "time_ids": ids})
