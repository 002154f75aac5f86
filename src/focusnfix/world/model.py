"""The world's tiny Stable-Diffusion-1.x-format model: the real diffusers / transformers classes
at small sizes, assembled into a ``StableDiffusionPipeline`` folder.

Shapes: images ``(B, 3, 64, 64)`` in [-1, 1] for the VAE (pipelines take / return [0, 1]);
latents ``(B, 4, 16, 16)``; text ``(B, 16)`` token ids -> ``(B, 16, 64)`` hidden states.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .tokenizer import MAX_LENGTH


@dataclass
class WorldModelConfig:
    """Sizes of the three networks; defaults are the committed model's."""

    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels: 64 px -> 16x16 latents
    latent_channels: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 96)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 2  # diffusers' legacy name: the number of heads
    norm_groups: int = 4  # few groups: per-channel norms would erase flat colours
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


TINY = WorldModelConfig(
    vae_channels=(8, 16, 16), text_hidden=32, text_layers=1, text_heads=2,
    unet_channels=(16, 32, 32), unet_head_dim=2, norm_groups=8,
)


def build_vae(cfg: WorldModelConfig):
    """``AutoencoderKL``: 64 px RGB <-> ``latent_channels`` x 16 x 16 (with 3 levels)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=64,
        mid_block_add_attention=False,
    )


def build_text_encoder(cfg: WorldModelConfig, vocab_size: int, bos_id: int, eos_id: int):
    """A tiny ``CLIPTextModel`` (causal transformer, pooled at EOS)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tcfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 4,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=cfg.text_hidden,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(tcfg)


def build_unet(cfg: WorldModelConfig):
    """``UNet2DConditionModel`` on 16x16 latents; cross-attention below the top level (speed)."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_head_dim,
        norm_num_groups=cfg.norm_groups,
    )


def build_scheduler():
    """SD 1.x noise schedule (scaled-linear betas, 1000 steps) as a ``DDIMScheduler``."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet):
    """A ``StableDiffusionPipeline`` without safety checker, DDIM scheduler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, out_dir: str | Path) -> Path:
    """``save_pretrained`` in safetensors; returns the folder."""
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def load_pipeline(path: str | Path, device: str | torch.device = "cpu"):
    """``StableDiffusionPipeline.from_pretrained(path, local_files_only=True)`` on ``device``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
