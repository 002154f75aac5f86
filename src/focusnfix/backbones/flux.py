"""FLUX.1 backbone: CLIP (pooled) + T5 conditioning, guidance-distilled (the guidance scale is an input
of the transformer: one pass, no CFG batch), 2x2-packed latents with position ids, 16-channel VAE with
scaling and shift.

Reuses ``FluxPipeline.encode_prompt`` and its latent packing helpers, so the sampler reproduces
``FluxPipeline.__call__`` (without true CFG) for the same packed latents.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import FocusNFixError
from ..sampling import Conditioning
from .flow import FlowBackbone


class FluxBackbone(FlowBackbone):
    """Frozen FLUX.1 parts around a diffusers ``FluxPipeline``. ``guidance_scale`` is the distilled
    guidance (FLUX.1-dev: 3.5; schnell ignores it); negative prompts need true CFG, which is not used."""

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # latents are packed in 2x2 patches

    def image_seq_len(self) -> int:
        return (self.height // self.size_multiple) * (self.width // self.size_multiple)

    def schedule(self, steps: int) -> dict:
        """As ``FluxPipeline``: sigmas linspace(1, 1/T, T) (unless the config uses its own flow sigmas),
        shifted by μ from the token count."""
        kwargs: dict = {"mu": self.shift_mu()} if self.scheduler.config.get("use_dynamic_shifting", False) else {}
        if self.scheduler.config.get("use_flow_sigmas", False):
            return {"num_inference_steps": steps, **kwargs}
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), **kwargs}

    # -- conditioning --------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> Conditioning:
        if negative_prompt:
            raise FocusNFixError("FLUX.1 is guidance-distilled: negative prompts (true CFG) are not supported; "
                                 "leave sampler.negative_prompt empty")
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(list(prompts), None, device=self.device,
                                                               num_images_per_prompt=1)
        guidance = torch.full((len(prompts),), float(guidance_scale), device=self.device, dtype=torch.float32)
        # Conditioning.guidance_scale 1: no CFG batch; the distilled guidance travels in ``added``
        return Conditioning(embeds=embeds, guidance_scale=1.0,
                            added={"pooled_projections": pooled, "txt_ids": text_ids, "guidance": guidance})

    # -- x_T ------------------------------------------------------------------------------------
    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (batch, self.unet.config.in_channels // 4, self.height // f, self.width // f)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Packed x_T ``(B, h/2 * w/2, 4C)``: per-seed ``(1, C, h, w)`` noise on CPU, then 2x2-packed."""
        _, c, h, w = self.latent_shape(1)
        noise = [torch.randn((1, c, h, w), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        x = torch.cat(noise).to(self.device, self.unet.dtype)
        return self.pipe._pack_latents(x, len(seeds), c, h, w)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The latent-grid mask packed like the latents: ``(B, h/2 * w/2, 4C)``."""
        grid = super().latent_mask(mask)
        b, c, h, w = grid.shape[0], *self.latent_shape(1)[1:]
        return self.pipe._pack_latents(grid.expand(b, c, h, w), b, c, h, w)

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe._unpack_latents(latents, self.height, self.width, self.vae_scale_factor)

    # -- one model evaluation -----------------------------------------------------------------------
    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity v for packed latents ``x``, with the distilled guidance as an input."""
        a = cond.added
        h, w = self.height // self.size_multiple, self.width // self.size_multiple
        img_ids = self.pipe._prepare_latent_image_ids(x.shape[0], h, w, x.device, x.dtype)
        guidance = a["guidance"].to(x.device) if self.unet.config.guidance_embeds else None
        timestep = t.expand(x.shape[0]).to(x.dtype)
        return self.unet(hidden_states=x, timestep=timestep / 1000, guidance=guidance,
                         pooled_projections=a["pooled_projections"].to(x.dtype),
                         encoder_hidden_states=cond.embeds.to(x.dtype),
                         txt_ids=a["txt_ids"], img_ids=img_ids, return_dict=False)[0]
