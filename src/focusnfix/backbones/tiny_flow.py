"""Tiny, randomly initialised flow-matching pipelines built in code: ``StableDiffusion3Pipeline`` and
``FluxPipeline`` with the real diffusers / transformers classes at tiny sizes (tests, smoke runs).

The T5 tokenizer is a character-level Unigram model built with ``tokenizers`` (no download); the CLIP
tokenizers are those of :mod:`focusnfix.backbones.tiny`.
"""
from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch

from .tiny import write_clip_tokenizer


def t5_tokenizer(max_length: int = 32):
    """A T5 tokenizer (``T5TokenizerFast``) over lowercase letters, digits and punctuation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = list(string.ascii_lowercase + string.digits + ",.'-")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                           model_max_length=max_length)


def _t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def _clip(with_projection: bool, max_length: int, hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = write_clip_tokenizer(tempfile.mkdtemp(prefix="focusnfix-tok-"), max_length=max_length)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=max_length, hidden_act="gelu",
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=projection)
    return tokenizer, (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(latent_channels: int, scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=scaling,
                         shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)


def build_tiny_sd3_pipeline(folder: str | Path | None = None, seed: int = 0, shift: float = 3.0, max_length: int = 16):
    """A tiny ``StableDiffusion3Pipeline`` in the SD3.5-Medium layout (QK RMS-norm, one dual-attention
    block), 32 px by default (VAE factor 4, patch 2); scheduler with a static ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok1, enc1 = _clip(True, max_length)
        tok2, enc2 = _clip(True, max_length)
        tok3 = t5_tokenizer(max_length)
        enc3 = _t5_encoder(len(tok3), d_model=64)  # joint attention width >= both CLIP widths side by side
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64,
            pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))
        vae = _vae(16, scaling=1.5305, shift=0.0609)  # SD3's VAE constants
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=enc1,
                                        tokenizer=tok1, text_encoder_2=enc2, tokenizer_2=tok2, text_encoder_3=enc3,
                                        tokenizer_3=tok3)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe


def build_tiny_flux_pipeline(folder: str | Path | None = None, seed: int = 0, guidance_embeds: bool = True,
                             max_length: int = 16):
    """A tiny ``FluxPipeline`` (FLUX.1-dev layout: double and single blocks, guidance embedding, dynamic
    shift), 32 px by default (VAE factor 4, 2x2 packing)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok1, enc1 = _clip(False, max_length)
        tok2 = t5_tokenizer(max_length)
        enc2 = _t5_encoder(len(tok2), d_model=32)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
        vae = _vae(4, scaling=0.3611, shift=0.1159)  # FLUX's VAE constants
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=enc1, tokenizer=tok1,
                            text_encoder_2=enc2, tokenizer_2=tok2)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe
