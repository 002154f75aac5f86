"""Training of the flow world's transformer: rectified flow on the UNet world's frozen VAE latents
and text encoder (resumable, CPU-friendly, like :mod:`focusnfix.world.train`).

Layout of an output folder ``out``::

    out/pipeline/            the final StableDiffusion3Pipeline folder (EMA weights)
    out/samples.png          a grid of EMA samples (held-out noise seeds) when ``preview`` > 0
    out/ckpt/transformer/    resumable checkpoints (safetensors + json)

The VAE, text encoder and tokenizer come from ``base``: a folder with ``vae/``, ``text_encoder/``
and ``tokenizer/`` (the committed world pipeline, or a ``world train`` output folder).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .flow import (
    FLOW_TINY, FlowModelConfig, RepeatedTokenJointAttention, assemble_flow_pipeline, build_transformer,
    encode_captions,
)
from .model import save_pipeline
from .tokenizer import MAX_LENGTH
from .train import StageConfig, _autocast, _run, encode_latents, optimizer_ema_step


@dataclass
class FlowTrainConfig:
    """The transformer stage. Pools, caption dropout, EMA and mixed precision as the UNet world's."""

    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    stage: StageConfig = field(default_factory=lambda: StageConfig(steps=3500, batch=64, lr=5e-4, seed=104))
    pool: int = 16384  # pre-encoded training images (p_artifact 0.4, as the UNet world)
    late_steps: int = 0  # the last steps may draw from an artifact-richer pool (UNet world: 600)
    late_p_artifact: float = 0.8
    late_pool: int = 8192
    caption_dropout: float = 0.1  # p(caption -> "") so classifier-free guidance works
    ema: float = 0.999
    bf16: bool = True
    # sigma ~ logit-normal: sigmoid(N(logit_mean, logit_std^2)) (Esser et al. 2024, "rf/lognorm(0.00, 1.00)"),
    # then the scheduler's static shift, so training sees the sigmas sampling visits
    logit_mean: float = 0.0
    logit_std: float = 1.0
    preview: int = 32  # EMA samples written to out/samples.png at the end (0: none)


DEFAULT_FLOW = FlowTrainConfig()


def tiny_flow_config() -> FlowTrainConfig:
    """A seconds-long configuration for tests."""
    return FlowTrainConfig(model=FLOW_TINY, stage=StageConfig(steps=3, batch=4, lr=1e-3, seed=5, ckpt_every=2),
                           pool=8, late_steps=1, late_pool=8, preview=0)


def load_world_parts(base: str | Path):
    """The UNet world's ``AutoencoderKL``, ``CLIPTextModel`` and ``CLIPTokenizer`` from ``base``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    base = Path(base)
    vae = AutoencoderKL.from_pretrained(base / "vae", local_files_only=True).eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer", model_max_length=MAX_LENGTH, local_files_only=True)
    return vae, te, tok


def flow_pool(pipe, n: int, seed: int, p_artifact: float = 0.4) -> dict:
    """Latent posteriors of ``n`` training images with the pipeline's conditioning of their captions."""
    pool = encode_latents(pipe.vae, n, seed, p_artifact)
    return {**pool, **encode_captions(pipe, pool["uniq"])}


def sample_sigmas(cfg: FlowTrainConfig, n: int, g: torch.Generator) -> torch.Tensor:
    """``(n,)`` training sigmas in (0, 1): logit-normal, then the scheduler's shift."""
    s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=g))
    a = cfg.model.shift
    return a * s / (1 + (a - 1) * s)


def train_flow(cfg: FlowTrainConfig, out: str | Path, base: str | Path, resume: bool = False) -> dict:
    """Velocity prediction ``v = eps - x0`` on ``x_sigma = (1 - sigma) x0 + sigma eps`` (MSE), frozen
    VAE and text encoders, EMA weights; writes ``out/pipeline``. Returns the stage's log."""
    out = Path(out)
    vae, te, tok = load_world_parts(base)
    torch.manual_seed(cfg.stage.seed)
    dims = (vae.config.latent_channels, te.config.hidden_size, te.config.hidden_size)
    transformer = build_transformer(cfg.model, *dims)
    ema = build_transformer(cfg.model, *dims).requires_grad_(False)
    ema.load_state_dict(transformer.state_dict())
    pipe = assemble_flow_pipeline(vae, te, tok, ema, cfg.model.shift)  # its encoders build the conditioning
    pools = [flow_pool(pipe, cfg.pool, cfg.stage.seed)]
    if cfg.late_steps:
        pools.append(flow_pool(pipe, cfg.late_pool, cfg.stage.seed + 1, cfg.late_p_artifact))
    transformer.set_attn_processor(RepeatedTokenJointAttention(pools[0]["repeats"]))
    sf = vae.config.scaling_factor
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.stage.lr, weight_decay=1e-2)

    def step_fn(step: int) -> float:
        pool = pools[-1] if step >= cfg.stage.steps - cfg.late_steps else pools[0]
        g = torch.Generator().manual_seed(cfg.stage.seed * 1_000_003 + step)
        bs = cfg.stage.batch
        idx = torch.randint(0, len(pool["index"]), (bs,), generator=g)
        x0 = (pool["mean"][idx] + pool["std"][idx] * torch.randn(pool["mean"][idx].shape, generator=g)) * sf
        eps = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(cfg, bs, g)
        x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
        cond = pool["index"][idx].clone()
        cond[torch.rand(bs, generator=g) < cfg.caption_dropout] = len(pool["uniq"]) - 1  # "" for CFG
        with _autocast(cfg):
            v = transformer(hidden_states=x, encoder_hidden_states=pool["embeds"][cond],
                            pooled_projections=pool["pooled"][cond], timestep=sigma * 1000).sample
        loss = ((v.float() - (eps - x0)) ** 2).mean()
        return optimizer_ema_step(loss, transformer, ema, opt, cfg.ema, step)

    log = _run("transformer", cfg.stage, {"transformer": transformer, "ema": ema}, opt, step_fn, out, resume)
    save_pipeline(pipe, out / "pipeline")
    for folder in ("tokenizer", "tokenizer_2"):  # CLIP-format files too (older transformers)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy2(Path(base) / "tokenizer" / name, out / "pipeline" / folder / name)
    if cfg.preview:
        preview(pipe, out / "samples.png", cfg.preview)
    return log


@torch.no_grad()
def preview(pipe, path: str | Path, n: int = 32) -> torch.Tensor:
    """A PNG grid of ``n`` samples (grammar prompts in order, held-out noise seeds, 20 steps, CFG 5)."""
    from . import data
    from .gates import HELDOUT_NOISE_SEED, generate, grammar_prompts

    prompts = grammar_prompts()[:: max(1, len(grammar_prompts()) // n)][:n]
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, prompts, [HELDOUT_NOISE_SEED + i for i in range(n)])
    data.save_grid(images, str(path))
    return images
