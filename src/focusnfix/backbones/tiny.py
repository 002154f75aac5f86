"""Tiny, randomly initialised Stable Diffusion pipelines built in code (tests, smoke runs).

Everything is built offline: a character-level CLIP BPE tokenizer is written to disk in the
openai CLIP file format (``vocab.json`` + ``merges.txt``), and the UNet, VAE and text encoder are
the real diffusers / transformers classes at tiny sizes.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def byte_symbols() -> list[str]:
    """The 256 printable unicode symbols CLIP's byte-level BPE uses for raw bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:  # bytes without a printable glyph are shifted past 255, as CLIP does
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_clip_tokenizer(folder: str | Path, words: list[str] = (), max_length: int = 16) -> Path:
    """Write a CLIP-format BPE tokenizer to ``folder``; return the folder.

    The vocabulary holds every byte symbol (alone and with the ``</w>`` word end), the two special
    tokens, and optionally whole ``words`` reachable through explicit merges, so any text tokenizes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = byte_symbols()
    vocab: list[str] = base + [s + "</w>" for s in base]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: ((w o) r) d</w>
            pair = (pieces[0], pieces[1])
            merged = pair[0] + pair[1]
            if f"{pair[0]} {pair[1]}" not in merges:
                merges.append(f"{pair[0]} {pair[1]}")
            if merged not in vocab:
                vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += list(SPECIAL_TOKENS)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    config = {"model_max_length": max_length, "bos_token": SPECIAL_TOKENS[0],
              "eos_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[1],
              "pad_token": SPECIAL_TOKENS[1], "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def build_tiny_pipeline(
    folder: str | Path | None = None,
    sample_size: int = 8,
    prediction_type: str = "epsilon",
    seed: int = 0,
    max_length: int = 16,
    sd2_style: bool = False,
):
    """Build a tiny random ``StableDiffusionPipeline`` (images are ``4 * sample_size`` px).

    Saved with ``save_pretrained`` to ``folder`` when given. ``prediction_type`` is ``"epsilon"``
    or ``"v_prediction"``; ``sd2_style`` uses SD 2.x's UNet options (linear projections in the
    transformer blocks, per-block head dims, upcast attention).
    """
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        return _build(folder, sample_size, prediction_type, max_length, sd2_style)


def _build(folder, sample_size, prediction_type, max_length, sd2_style):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2_style else 8, use_linear_projection=sd2_style,
        upcast_attention=sd2_style, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=sample_size * 4,
    )
    tok_dir = write_clip_tokenizer(tempfile.mkdtemp(prefix="focusnfix-tok-"), max_length=max_length)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                              model_max_length=max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe


def build_tiny_sdxl_pipeline(folder: str | Path | None = None, sample_size: int = 8, seed: int = 0,
                             max_length: int = 16):
    """A tiny random ``StableDiffusionXLPipeline`` (two text encoders, text_time conditioning)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_xl(folder, sample_size, max_length)


def _build_xl(folder, sample_size, max_length):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=sample_size * 4, scaling_factor=0.13025, force_upcast=True,
    )
    tok_dir = write_clip_tokenizer(tempfile.mkdtemp(prefix="focusnfix-tok-"), max_length=max_length)
    tokenizers = [CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=max_length)
                  for _ in range(2)]
    common = dict(vocab_size=len(tokenizers[0]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=max_length, hidden_act="gelu",
                  bos_token_id=tokenizers[0].bos_token_id, eos_token_id=tokenizers[0].eos_token_id,
                  pad_token_id=tokenizers[0].pad_token_id, projection_dim=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(**common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**common))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe


def build_tiny_clip(folder: str | Path, seed: int = 0, image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3)) -> Path:
    """Save a tiny random ``CLIPModel`` (+ tokenizer and image statistics) to ``folder`` for CLIP rewards."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    folder = Path(folder)
    write_clip_tokenizer(folder, words=["red", "cat"], max_length=16)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = CLIPConfig(
            text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4),
            projection_dim=16,
        )
        CLIPModel(cfg).save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(image_mean),
                                                                 "image_std": list(image_std)}))
    return folder
