"""Stable Diffusion 1.x / 2.x backbone: prompt encoding, initial noise, one UNet call, VAE decode.

Reuses the pipeline's public pieces (``encode_prompt``, ``scheduler.step``, ``vae.decode``) so the
sampler reproduces ``StableDiffusionPipeline.__call__`` exactly for the same inputs.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import FocusNFixError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Conditioning:
    """Text conditioning c. ``embeds`` is ``(2B, L, D)`` = [negative; positive] under CFG, else ``(B, L, D)``.

    ``added`` holds extra UNet inputs in the same batch order (SDXL: pooled ``text_embeds`` and
    ``time_ids``), or None.
    """

    embeds: torch.Tensor
    guidance_scale: float
    added: dict[str, torch.Tensor] | None = None

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0


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

    @property
    def step_rule(self):
        """The sampler's step rule for this family: DDIM (eta = 0) on ``self.scheduler``."""
        from ..sampling import DDIMStep

        return DDIMStep(self.scheduler)

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """An image-space mask ``(B,1,H,W)`` on the sampler's latent grid (max-pooled: a latent cell counts
        when any of its pixels does), broadcastable against the latents."""
        import torch.nn.functional as F

        return F.adaptive_max_pool2d(mask.float(), tuple(self.latent_shape(1)[-2:]))

    def stochastic_rule(self, eta: float):
        """The policy of GRPO: DDIM with ``eta`` > 0 (:class:`~focusnfix.sampling.StochasticDDIMStep`)."""
        from ..sampling import StochasticDDIMStep

        return StochasticDDIMStep(self.scheduler, eta)

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
            pos, neg = self.pipe.encode_prompt(list(prompts), self.device, 1, cfg, negative_prompt=_negatives(negative_prompt, len(prompts)))
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
        out = self.unet(x_in, t, encoder_hidden_states=cond.embeds.to(x_in.dtype), added_cond_kwargs=added, return_dict=False)[0]
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
            n = z.shape[0]
            chunks = max(1, min(int(chunks), n))
            bounds = [round(i * n / chunks) for i in range(chunks + 1)]
            img = torch.cat([checkpoint(run, z[a:b], use_reentrant=False) for a, b in zip(bounds, bounds[1:])])
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


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_backbone(path: str, dtype: str = "float32", revision: str | None = None, resolution: int | None = None,
                  device: str | torch.device | None = None, attention: str = "default",
                  height: int | None = None, width: int | None = None) -> SDBackbone:
    """Load an SD 1.x/2.x or SDXL pipeline from a local folder, a hub id, ``tiny`` (random, 32 px),
    ``world`` (the built-in world's trained 64 px model) or ``world-flow`` (its SD3-format flow model).

    Images are ``height`` x ``width`` px; each defaults to ``resolution``, else the model's own size.

    The family is read from the pipeline's ``model_index.json``. Weights must be safetensors
    (pickled ``.bin`` files are refused). Errors are one-line :class:`FocusNFixError` messages.
    """
    if path == "tiny":
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
    elif path == "world":  # the built-in world's committed pipeline
        from ..world import pipeline_path

        pipe = _from_pretrained(str(pipeline_path()), DTYPES[dtype], None)
    elif path == "world-flow":  # the built-in world's committed flow-matching (SD3-format) pipeline
        from ..world import flow_pipeline_path

        pipe = _from_pretrained(str(flow_pipeline_path()), DTYPES[dtype], None)
    else:
        pipe = _from_pretrained(path, DTYPES[dtype], revision)
    from . import FAMILIES

    backbone = FAMILIES[type(pipe).__name__](pipe, resolution=resolution, height=height, width=width)
    backbone.set_attention(attention)
    if device is not None:
        backbone.to(device)
    return backbone


def _pipeline_class(path: str, local: bool, revision: str | None):
    import diffusers

    from . import FAMILIES

    try:
        name = diffusers.DiffusionPipeline.load_config(path, revision=revision, local_files_only=local)["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise FocusNFixError(f"could not read the pipeline config of {path!r}: {str(e).strip().splitlines()[0]}") from None
    if name not in FAMILIES:
        raise FocusNFixError(f"model {path!r} is a {name}; supported pipelines: {', '.join(FAMILIES)}")
    return getattr(diffusers, name)


def _check_components(folder: Path) -> None:
    """Every component ``model_index.json`` lists (with a class) has its folder: a clear error instead
    of diffusers' "no file named config.json"."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    unused = {"safety_checker", "feature_extractor", "image_encoder"}  # not loaded (safety checker passed as None)
    missing = [name for name, value in index.items() if not name.startswith("_") and name not in unused
               and isinstance(value, list) and value[0] is not None and not (folder / name).is_dir()]
    if missing:
        raise FocusNFixError(f"model folder {str(folder)!r} lacks {', '.join(m + '/' for m in missing)} (listed in its "
                             "model_index.json); copy or download the complete pipeline")


def _absent_components(folder: Path, cls) -> dict:
    """Required components a local folder lists as null (an SD3 folder saved without T5: ``text_encoder_3``,
    ``tokenizer_3``), passed as None, diffusers' documented way to load a pipeline without them."""
    import inspect
    import json

    index = json.loads((folder / "model_index.json").read_text())
    params = inspect.signature(cls.__init__).parameters
    return {name: None for name, value in index.items() if name in params and name not in cls._optional_components
            and isinstance(value, list) and value[0] is None}


def _from_pretrained(path: str, dtype: torch.dtype, revision: str | None):
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise FocusNFixError(f"model.path {path!r} is not a diffusers pipeline folder (no model_index.json)")
    elif not _HUB_ID.match(path):
        raise FocusNFixError(f"model.path {path!r} does not exist; give a diffusers folder or a hub id like org/name")
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FocusNFixError(
            f"model.path {path!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE is set); "
            "download it first or give a local folder"
        )
    source = str(local) if local.exists() else path
    cls = _pipeline_class(source, local.exists(), revision)
    if local.exists():
        _check_components(local)
    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype -> dtype; keep both working
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
                if cls.__name__ == "StableDiffusionPipeline" else {}
            if local.exists():
                extra = {**_absent_components(local, cls), **extra}
            return cls.from_pretrained(source, torch_dtype=dtype, revision=revision, use_safetensors=True,
                                       local_files_only=local.exists(), **extra)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FocusNFixError(f"could not load model {path!r}: {first}") from e
