"""The world's flow-matching model: a tiny ``StableDiffusion3Pipeline`` (rectified flow, MMDiT) that
reuses the UNet world's trained VAE, text encoder and tokenizer and has its own small transformer.

Layout of the pipeline folder (see docs/world.md, "The flow world"):

* ``transformer``: ``SD3Transformer2DModel`` on the VAE's 4 x 16 x 16 latents, patch 2 (64 image
  tokens), ``layers`` joint blocks of width ``heads * head_dim``;
* ``vae``: the world's ``AutoencoderKL`` (``shift_factor`` 0.0: SD3 decodes ``z / scaling + shift``);
* ``text_encoder`` and ``text_encoder_2``: ``CLIPTextModelWithProjection`` carrying the world's CLIP
  text weights, with a frozen *identity* ``text_projection`` (so the pooled embedding is the
  EOS-pooled state the text encoder was trained to encode the attributes into);
* ``tokenizer`` / ``tokenizer_2``: the world tokenizer (16 positions); ``text_encoder_3`` /
  ``tokenizer_3``: None, so the pipeline fills the T5 slot with zeros (``max_sequence_length`` = 256
  tokens by default);
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler``, static ``shift`` (1.0: no shift, see below).

Conditioning as the pipeline builds it: the penultimate hidden states of both CLIP encoders side by
side ``(B, 16, 128)`` followed by 256 zero tokens ``(B, 256, 128)``; pooled ``(B, 128)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class FlowModelConfig:
    """Sizes of the transformer and the sampler's shift; defaults are the committed model's."""

    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    qk_norm: str | None = "rms_norm"  # SD3.5's QK RMS-norm: steadier attention logits at a high LR
    # Esser et al. (2024) shift the schedule towards noise by alpha = sqrt(m / n) (m pixels relative to
    # a 256^2 base), which gives alpha < 1 at 64 px, and FLUX's token-count rule extrapolates to ~1.6 at
    # 64 tokens; with flat shapes decided early either way, we keep the plain rectified-flow schedule.
    shift: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


FLOW_TINY = FlowModelConfig(layers=2, heads=2, head_dim=8)


def build_transformer(cfg: FlowModelConfig, latent_channels: int, text_width: int, pooled_width: int):
    """``SD3Transformer2DModel`` on 16x16 latents (patch 2: 8x8 = 64 image tokens); the context is
    two CLIP encoders side by side (``2 * text_width``), the pooled input ``2 * pooled_width``."""
    from diffusers import SD3Transformer2DModel

    width = cfg.heads * cfg.head_dim
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=cfg.layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
        joint_attention_dim=2 * text_width, caption_projection_dim=width, pooled_projection_dim=2 * pooled_width,
        pos_embed_max_size=8, qk_norm=cfg.qk_norm,
    )


def build_flow_scheduler(shift: float = 1.0):
    """Rectified-flow Euler scheduler, 1000 training timesteps (t = 1000 sigma), static ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def with_projection(text_encoder):
    """A ``CLIPTextModelWithProjection`` with ``text_encoder``'s weights and an identity projection."""
    import copy

    from transformers import CLIPTextModelWithProjection

    cfg = copy.deepcopy(text_encoder.config)
    cfg.projection_dim = cfg.hidden_size
    te = CLIPTextModelWithProjection(cfg)
    te.text_model.load_state_dict(text_encoder.state_dict())
    with torch.no_grad():
        te.text_projection.weight.copy_(torch.eye(cfg.hidden_size))
    return te.eval().requires_grad_(False)


def flow_vae(vae):
    """The world's VAE with ``shift_factor`` 0.0 written into its config (SD3 adds it when decoding)."""
    if vae.config.get("shift_factor") is None:
        vae.register_to_config(shift_factor=0.0)
    return vae


def assemble_flow_pipeline(vae, text_encoder, tokenizer, transformer, shift: float = 1.0):
    """A ``StableDiffusion3Pipeline`` from the world's parts (both CLIP slots: the same weights)."""
    import copy

    from diffusers import StableDiffusion3Pipeline

    te = with_projection(text_encoder)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=build_flow_scheduler(shift), vae=flow_vae(vae),
        text_encoder=te, tokenizer=tokenizer, text_encoder_2=copy.deepcopy(te), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> dict[str, torch.Tensor | int]:
    """Conditioning exactly as ``pipe`` builds it, with the zero T5 slot folded into one token.

    Returns ``embeds (N, L_clip + 1, D)`` (the last token is the zero slot), ``pooled (N, P)`` and
    ``repeats``, how many identical zero tokens that last token stands for (see
    :class:`RepeatedTokenJointAttention`).
    """
    embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, device="cpu", do_classifier_free_guidance=False)
    n_clip = pipe.tokenizer_max_length
    tail = embeds[:, n_clip:]
    if tail.shape[1] == 0 or tail.abs().max() != 0:
        raise ValueError("expected the pipeline's zero T5 slot after the CLIP tokens (text_encoder_3=None)")
    return {"embeds": embeds[:, : n_clip + 1].contiguous(), "pooled": pooled, "repeats": tail.shape[1]}


class RepeatedTokenJointAttention:
    """SD3 joint attention in which the last context token stands for ``repeats`` identical tokens.

    The pipeline's zero T5 slot gives 256 identical context tokens; every per-token operation of the
    joint blocks keeps them identical, and in softmax attention ``repeats`` identical keys weigh
    exactly as one key whose logit is raised by ``log(repeats)``. So the transformer's output on
    ``[clip tokens, 1 zero token]`` with this processor equals its output on the full sequence with
    diffusers' processor (tested), at a quarter of the training cost.
    """

    def __init__(self, repeats: int):
        self.log_repeats = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        n = hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H*d) -> (B, H, L, d)
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        cq, ck, cv = (heads(f(encoder_hidden_states)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)  # added to every query's logits
        bias[0, -1] = self.log_repeats
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).flatten(2).to(q.dtype)
        x, c = out[:, :n], out[:, n:]
        x = attn.to_out[1](attn.to_out[0](x))
        return x, (c if attn.context_pre_only else attn.to_add_out(c))
