"""Stable Diffusion 1.x / 2.x backbone: prompt encoding, initial noise, one UNet call, VAE decode.

Reuses the pipeline's public pieces (``encode_prompt``, ``scheduler.step``, ``vae.decode``) so the
sampler reproduces ``StableDiffusionPipeline.__call__`` exactly for the same inputs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import FocusNFixError
from ..sampling import Conditioning, DDIMStep, StochasticDDIMStep, row_chunks

__all__ = ["Conditioning", "SDBackbone", "ddim_scheduler"]  # Conditioning: re-exported from focusnfix.sampling


class SDBackbone:
    """Frozen SD 1.x/2.x parts around a diffusers ``StableDiffusionPipeline``.

    All base weights are frozen (``requires_grad=False``); LoRA adapters added later are the only
    trainable parameters. The scheduler is a DDIM scheduler built from the pipeline's config, so
    epsilon- and v-prediction models both work.
    """

    denoiser = "unet"  # the pipeline component that denoises (and its prefix in diffusers' LoRA files)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")  # default lora.targets: the attention projections
    default_sample_size = 64  # latent px, when the denoiser's config has no sample_size

    def __init__(self, pipe, resolution: int | None = None, height: int | None = None, width: int | None = None):
        self.pipe = pipe
        pipe.set_progress_bar_config(disable=True)
        # ``unet`` is the denoiser of every family (a UNet, or the transformer of SD3/FLUX): one name for
        # LoRA, sharding, compile and the reference cache
        self.unet, self.vae, self.text_encoder = getattr(pipe, self.denoiser), pipe.vae, pipe.text_encoder
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        self.scheduler = self.make_scheduler(pipe.scheduler.config)
        self.cache_conditioning = False  # the trainer turns it on: its text encoders never change
        self._encoded: OrderedDict[tuple, Conditioning] = OrderedDict()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = getattr(self.unet.config, "sample_size", None) or self.default_sample_size  # latent px: int or (h, w)
        default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
        self.height = height or resolution or default_h * self.vae_scale_factor
        self.width = width or resolution or default_w * self.vae_scale_factor
        for key, value in (("height", self.height), ("width", self.width)):
            if value % self.size_multiple:
                raise FocusNFixError(
                    f"image {key} {value} is not divisible by {self.size_multiple} (this model's VAE factor"
                    f"{' times its patch size' if self.size_multiple != self.vae_scale_factor else ''}); "
                    f"set sampler.{key} (or model.resolution) to a multiple of {self.size_multiple}"
                )

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE factor; transformers also need whole patches)."""
        return self.vae_scale_factor

    @staticmethod
    def make_scheduler(config):
        return ddim_scheduler(config)

    def step_rule(self, steps: int, device: torch.device) -> DDIMStep:
        """The sampler's step rule for this family and T = ``steps`` steps on ``device``: DDIM (eta = 0) on a
        copy of ``self.scheduler`` set for that schedule."""
        return DDIMStep(self.scheduler, steps, device)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """An image-space mask ``(B,1,H,W)`` on the sampler's latent grid (max-pooled: a latent cell counts
        when any of its pixels does), broadcastable against the latents."""
        import torch.nn.functional as F

        return F.adaptive_max_pool2d(mask.float(), tuple(self.latent_shape(1)[-2:]))

    def stochastic_rule(self, eta: float, steps: int, device: torch.device) -> StochasticDDIMStep:
        """The policy of GRPO for T = ``steps`` steps on ``device``: DDIM with ``eta`` > 0
        (:class:`~focusnfix.sampling.StochasticDDIMStep`)."""
        return StochasticDDIMStep(self.scheduler, eta, steps, device)

    @property
    def resolution(self) -> int | tuple[int, int]:
        """The image side in px when square, else ``(height, width)``."""
        return self.height if self.height == self.width else (self.height, self.width)

    def set_attention(self, kind: str = "default") -> None:
        """Attention implementation of UNet and VAE: ``sdpa`` (fused torch kernel), ``eager`` (plain
        matmul-softmax, the reference), or ``default`` (leave diffusers' choice)."""
        if kind == "default":
            return
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        for module in (self.unet, self.vae):
            module.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())

    # -- devices ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str) -> "SDBackbone":
        self.pipe.to(device)
        return self

    # -- conditioning c --------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], negative_prompt: str = "", guidance_scale: float = 7.5) -> Conditioning:
        """Text conditioning for ``prompts``. With ``cache_conditioning`` on, repeated requests (the
        reference and the trained pass of a step, a fixed prompt pool) come from a small LRU cache; it
        must stay off while text-encoder weights can change (e.g. loading a LoRA into the pipeline)."""
        if not self.cache_conditioning:
            return self._encode(prompts, negative_prompt, guidance_scale)
        key = (tuple(prompts), negative_prompt, float(guidance_scale), str(self.device))
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        cond = self._encode(prompts, negative_prompt, guidance_scale)
        self._encoded[key] = cond
        if len(self._encoded) > 64:
            self._encoded.popitem(last=False)
        return cond

    def _encode(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> Conditioning:
        """Encode prompts (and the negative prompt for CFG) with the pipeline's ``encode_prompt``."""
        cfg = guidance_scale > 1.0
        with torch.no_grad():
            pos, neg = self.pipe.encode_prompt(list(prompts), self.device, 1, cfg,
                                               negative_prompt=_negatives(negative_prompt, len(prompts)))
        embeds = torch.cat([neg, pos]) if cfg else pos
        return Conditioning(embeds=embeds, guidance_scale=guidance_scale)

    # -- x_T ------------------------------------------------------------------------------
    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (batch, self.unet.config.in_channels, self.height // f, self.width // f)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T for each seed: ``(B, C, h, w)``, drawn on CPU so it is the same on every device."""
        shape = self.latent_shape(1)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        x = torch.cat(noise).to(self.device, self.unet.dtype)
        return x * getattr(self.scheduler, "init_noise_sigma", 1.0)  # flow schedulers start at unit noise

    # -- one model evaluation ---------------------------------------------------------------
    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's prediction (epsilon or v, per the scheduler config) with CFG applied."""
        x_in = torch.cat([x, x]) if cond.cfg else x
        x_in = self.scheduler.scale_model_input(x_in, t)
        added = {k: v.to(x_in.dtype) for k, v in cond.added.items()} if cond.added else None
        out = self.unet(x_in, t, encoder_hidden_states=cond.embeds.to(x_in.dtype), added_cond_kwargs=added,
                        return_dict=False)[0]
        if cond.cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance_scale * (text - uncond)
        return out

    # -- images -----------------------------------------------------------------------------
    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """The sampler's latents as the VAE's ``(B, C, h, w)`` (FLUX samples packed 2x2 patches)."""
        return latents

    def decode(self, latents: torch.Tensor, grad_checkpointing: bool = False, chunks: int = 1) -> torch.Tensor:
        """Latents -> images ``(B, 3, H, W)`` in [0, 1] (the pipeline's ``output_type='pt'``).

        ``grad_checkpointing``: the decode is recomputed in backward, in ``chunks`` row chunks, each
        checkpointed on its own (the recomputation then holds 1/chunks of the decoder's activations;
        every decoder layer is per-sample, so the images equal the one-call ones up to float rounding)."""
        def run(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z, return_dict=False)[0]

        config = self.vae.config
        z = self.unpack(latents).to(self.vae.dtype)
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(z)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(z)
            z = z * std / config.scaling_factor + mean
        else:  # SD3 and FLUX VAEs also shift: z / scaling + shift
            z = z / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        if grad_checkpointing and torch.is_grad_enabled():
            img = torch.cat([checkpoint(run, z[a:b], use_reentrant=False) for a, b in row_chunks(z.shape[0], chunks)])
        else:
            img = run(z)
        return (img.float() / 2 + 0.5).clamp(0, 1)


def ddim_scheduler(config):
    """The deterministic DDIM (eta = 0) scheduler for a pipeline's scheduler config, with the conventions of
    diffusers' Stable Diffusion pipelines fixed: ``clip_sample=False`` (latents are never clipped to
    [-1, 1]; a DDIM built from a PNDM/Euler config that lacks the key would default to True) and
    ``steps_offset=1`` (``StableDiffusionPipeline.__init__`` fixes both; every SD/SDXL release config
    has them). Other settings (``set_alpha_to_one``, ``timestep_spacing``, prediction type, betas) come
    from the config as in diffusers' documented ``DDIMScheduler.from_config(pipe.scheduler.config)``."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config, clip_sample=False, steps_offset=1)


def _negatives(negative_prompt: str, n: int) -> list[str] | None:
    """None for an empty negative prompt, as the pipelines' own default (SDXL then uses zeros)."""
    return [negative_prompt] * n if negative_prompt else None
