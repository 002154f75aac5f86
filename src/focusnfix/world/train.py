"""Training of the world's generative model: VAE, text encoder, UNet (resumable, CPU-friendly).

Layout of an output folder ``out``::

    out/tokenizer/        vocab.json, merges.txt (+ transformers files)
    out/vae/              AutoencoderKL (save_pretrained)
    out/text_encoder/     CLIPTextModel (save_pretrained)
    out/pipeline/         the final StableDiffusionPipeline folder
    out/ckpt/<stage>/     resumable checkpoints (safetensors + json)

Every step draws its data from ``(seed, step)`` only, so a resumed run continues the same
trajectory. Mixed precision: bf16 autocast on CPU (fast on AMX CPUs), fp32 master weights.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .ckpt import load_checkpoint, save_checkpoint
from .model import (
    WorldModelConfig, assemble_pipeline, build_scheduler, build_text_encoder, build_unet,
    build_vae, save_pipeline,
)
from .tokenizer import MAX_LENGTH, build_tokenizer


@dataclass
class StageConfig:
    """Steps / batch / learning rate of one stage, plus its data seed."""

    steps: int
    batch: int
    lr: float
    seed: int
    ckpt_every: int = 250
    stop_at: int | None = None  # stop (checkpointed) after this step, as if interrupted


@dataclass
class GenTrainConfig:
    """All generative stages. ``unet_pool`` images are encoded once and reused."""

    model: WorldModelConfig
    vae: StageConfig
    text: StageConfig
    unet: StageConfig
    unet_pool: int = 16384
    # The tiny UNet reproduces the thin checkerboard artifact less often than it sees it
    # (17 % of samples from 40 % of training images), so the last ``late_steps`` draw from a
    # second pool with ``late_p_artifact`` to land the samples' artifact rate in 25-60 %.
    late_steps: int = 600
    late_p_artifact: float = 0.8
    late_pool: int = 8192
    caption_dropout: float = 0.1  # p(caption -> "") so classifier-free guidance works
    ema: float = 0.999
    bf16: bool = True


DEFAULT = GenTrainConfig(
    model=WorldModelConfig(),
    vae=StageConfig(steps=1500, batch=32, lr=1e-3, seed=101),
    text=StageConfig(steps=300, batch=128, lr=2e-3, seed=102),
    unet=StageConfig(steps=3800, batch=64, lr=1e-3, seed=103),
)


def tiny_config() -> GenTrainConfig:
    """A seconds-long configuration for tests."""
    from .model import TINY

    return GenTrainConfig(
        model=TINY,
        vae=StageConfig(steps=3, batch=4, lr=2e-3, seed=1, ckpt_every=2),
        text=StageConfig(steps=3, batch=8, lr=2e-3, seed=2, ckpt_every=2),
        unet=StageConfig(steps=3, batch=4, lr=1e-3, seed=3, ckpt_every=2),
        unet_pool=8,
        late_steps=1,
        late_pool=8,
    )


def _lr(stage: StageConfig, step: int) -> float:
    """Linear warm-up (5 %) then cosine decay to 10 % of the peak."""
    warm = max(1, stage.steps // 20)
    if step < warm:
        return stage.lr * (step + 1) / warm
    p = (step - warm) / max(1, stage.steps - warm)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _run(name, stage, modules, opt, step_fn, out, resume, extra_state=None) -> dict:
    """Generic resumable loop: ``step_fn(step) -> loss float``; returns the stage's log."""
    ck = Path(out) / "ckpt" / name
    start, log = 0, {"losses": []}
    if resume and (ck / "state.json").exists():
        st = load_checkpoint(ck, modules, opt)
        start, log = st["step"], st["log"]
    t0 = time.time()
    end = stage.steps if stage.stop_at is None else min(stage.steps, stage.stop_at)
    bar = tqdm(range(start, end), desc=f"world/{name}", initial=start, total=stage.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(stage, step)
        loss = step_fn(step)
        log["losses"].append(round(float(loss), 5))
        bar.set_postfix(loss=f"{loss:.4f}")
        if (step + 1) % stage.ckpt_every == 0 or step + 1 == end:
            log["seconds"] = log.get("seconds", 0.0) + time.time() - t0
            t0 = time.time()
            save_checkpoint(ck, modules, opt, {"step": step + 1, "log": log, **(extra_state or {})})
    return log


def optimizer_ema_step(loss: torch.Tensor, model, ema, opt, ema_decay: float, step: int) -> float:
    """One update of ``model`` (backward, gradient norm clipped to 1, ``opt.step``) and of its EMA copy
    ``ema`` (decay ``min(ema_decay, (1 + step) / (10 + step))``); returns the loss as a float. Shared by the
    UNet and the flow transformer stages."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    d = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - d)
    return loss.item()


def _autocast(cfg: GenTrainConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


def train_vae(cfg: GenTrainConfig, out: str | Path, resume: bool = False) -> dict:
    """AutoencoderKL on world images in [-1, 1]: L1 + MSE (defect pixels weighted x5) + KL."""
    torch.manual_seed(cfg.vae.seed)
    vae = build_vae(cfg.model)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)

    def step_fn(step: int) -> float:
        b = data.make_batch(cfg.vae.batch, cfg.vae.seed, start=step * cfg.vae.batch)
        x = b.images * 2 - 1
        w = 1 + 4 * ((b.artifact_masks + b.unwanted_masks) > 0).float()
        with _autocast(cfg):
            post = vae.encode(x).latent_dist
            g = torch.Generator().manual_seed(cfg.vae.seed * 1_000_003 + step)
            rec = vae.decode(post.sample(generator=g)).sample
        rec = rec.float()
        loss = ((rec - x).abs() * w).mean() + ((rec - x) ** 2 * w).mean()
        loss = loss + 1e-6 * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    log = _run("vae", cfg.vae, {"vae": vae}, opt, step_fn, out, resume)
    with torch.no_grad():  # scale latents to unit variance, as SD's 0.18215
        x = data.make_batch(256, cfg.vae.seed + 1).images * 2 - 1
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(Path(out) / "vae", safe_serialization=True)
    return log


def _caption_batch(n: int, seed: int, step: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    import numpy as np

    rng = np.random.default_rng([seed, step])
    attrs = [data.random_attributes(rng) for _ in range(n)]
    return [data.caption(a) for a in attrs], data.labels_of(attrs)


def train_text(cfg: GenTrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Tokenizer files + CLIPTextModel pre-trained to encode the caption's attributes.

    Heads (discarded afterwards): per-attribute classifiers on the EOS-pooled state and a token
    identity head on every position, so the hidden states UNet cross-attends to carry each word.
    """
    tok = build_tokenizer(Path(out) / "tokenizer")
    tok.save_pretrained(Path(out) / "tokenizer")
    torch.manual_seed(cfg.text.seed)
    te = build_text_encoder(cfg.model, len(tok), tok.bos_token_id, tok.eos_token_id)
    h = cfg.model.text_hidden
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(h, len(v)) for k, v in data.ATTRIBUTES.items()})
    heads["token"] = torch.nn.Linear(h, len(tok))
    opt = torch.optim.AdamW(list(te.parameters()) + list(heads.parameters()), lr=cfg.text.lr)

    def step_fn(step: int) -> float:
        caps, labels = _caption_batch(cfg.text.batch, cfg.text.seed, step)
        ids = tok(caps, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
        o = te(ids)
        loss = sum(F.cross_entropy(heads[k](o.pooler_output), labels[k]) for k in labels)
        loss = loss + F.cross_entropy(heads["token"](o.last_hidden_state).flatten(0, 1), ids.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    log = _run("text", cfg.text, {"te": te, "heads": heads}, opt, step_fn, out, resume)
    te.save_pretrained(Path(out) / "text_encoder", safe_serialization=True)
    return log


@torch.no_grad()
def encode_latents(vae, n: int, seed: int, p_artifact: float = 0.4) -> dict:
    """Latent posteriors ``mean``, ``std`` ``(n, C, 16, 16)`` of ``n`` training images of stream
    ``seed``, their ``captions``, the sorted distinct captions plus ``""`` (``uniq``, the last one for
    caption dropout) and each image's caption ``index`` into ``uniq``."""
    means, stds, caps = [], [], []
    for s in range(0, n, 256):
        b = data.make_batch(min(256, n - s), seed, start=s, p_artifact=p_artifact)
        post = vae.encode(b.images * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        caps += b.captions
    uniq = sorted(set(caps)) + [""]
    index = torch.tensor([uniq.index(c) for c in caps])
    return {"mean": torch.cat(means), "std": torch.cat(stds), "captions": caps, "uniq": uniq, "index": index}


@torch.no_grad()
def _encode_pool(vae, te, tok, n: int, seed: int, p_artifact: float = 0.4) -> dict[str, torch.Tensor]:
    """Latent posteriors of ``n`` training images and the embeddings of their captions."""
    pool = encode_latents(vae, n, seed, p_artifact)
    ids = tok(pool["uniq"], padding="max_length", max_length=MAX_LENGTH, truncation=True,
              return_tensors="pt").input_ids
    emb = te(ids).last_hidden_state
    return {"mean": pool["mean"], "std": pool["std"], "emb": emb, "index": pool["index"]}


def train_unet(cfg: GenTrainConfig, out: str | Path, resume: bool = False) -> dict:
    """UNet epsilon-prediction with min-SNR(5) weighting, frozen text encoder, EMA weights."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    out = Path(out)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    te = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer", model_max_length=MAX_LENGTH)
    pools = [_encode_pool(vae, te, tok, cfg.unet_pool, cfg.unet.seed)]
    if cfg.late_steps:
        pools.append(_encode_pool(vae, te, tok, cfg.late_pool, cfg.unet.seed + 1, cfg.late_p_artifact))
    sf = vae.config.scaling_factor
    torch.manual_seed(cfg.unet.seed)
    unet = build_unet(cfg.model)
    ema = build_unet(cfg.model).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet.lr, weight_decay=1e-2)
    sched = build_scheduler()
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)

    def step_fn(step: int) -> float:
        pool = pools[-1] if step >= cfg.unet.steps - cfg.late_steps else pools[0]
        empty = pool["emb"][-1]
        g = torch.Generator().manual_seed(cfg.unet.seed * 1_000_003 + step)
        bs = cfg.unet.batch
        idx = torch.randint(0, len(pool["index"]), (bs,), generator=g)
        z0 = pool["mean"][idx] + pool["std"][idx] * torch.randn(pool["mean"][idx].shape, generator=g)
        z0 = z0 * sf
        t = torch.randint(0, 1000, (bs,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        zt = sched.add_noise(z0, eps, t)
        cond = pool["emb"][pool["index"][idx]].clone()
        drop = torch.rand(bs, generator=g) < cfg.caption_dropout
        cond[drop] = empty
        with _autocast(cfg):
            pred = unet(zt, t, cond).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 for epsilon prediction
        loss = (w * ((pred.float() - eps) ** 2).mean(dim=(1, 2, 3))).mean()
        return optimizer_ema_step(loss, unet, ema, opt, cfg.ema, step)

    log = _run("unet", cfg.unet, {"unet": unet, "ema": ema}, opt, step_fn, out, resume)
    pipe = assemble_pipeline(vae, te, tok, ema)
    save_pipeline(pipe, out / "pipeline")
    for name in ("vocab.json", "merges.txt"):  # CLIP-format files too (older transformers)
        shutil.copy2(out / "tokenizer" / name, out / "pipeline" / "tokenizer" / name)
    return log
