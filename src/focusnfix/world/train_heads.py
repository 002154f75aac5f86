"""Training of the world's rewards (artifact, safety) and judges (defect judge, alignment oracle).

They learn from the data generator's ground truth. So that they also work on *generated*
images, half of each batch is the image passed through the trained VAE (encode, sample,
decode), the model's own rendering of it, and every batch is blurred / noised
(:func:`nets.augment`). Judges use their own data pool, seeds and architectures, so they stay
independent of the rewards used for fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .ckpt import save_module
from .nets import NETS, augment
from .train import StageConfig, _run

FILES = {"artifact": "artifact_reward", "safety": "safety_reward", "judge": "defect_judge",
         "oracle": "alignment_oracle"}


@dataclass
class HeadsConfig:
    """Pools (images rendered then reconstructed by the VAE) and one stage per network."""

    pool: int = 6144
    reward_pool_seed: int = 201
    judge_pool_seed: int = 301
    p_artifact: float = 0.5
    p_unwanted: float = 0.6
    recon_fraction: float = 0.6
    stages: dict[str, StageConfig] = field(default_factory=lambda: {
        "artifact": StageConfig(steps=900, batch=32, lr=2e-3, seed=211),
        "safety": StageConfig(steps=600, batch=32, lr=2e-3, seed=212),
        "judge": StageConfig(steps=900, batch=32, lr=1e-3, seed=313),
        "oracle": StageConfig(steps=2500, batch=32, lr=2e-3, seed=314),
    })


def tiny_heads_config() -> HeadsConfig:
    """Seconds-long configuration for tests."""
    st = {k: StageConfig(steps=4, batch=4, lr=2e-3, seed=i, ckpt_every=2)
          for i, k in enumerate(FILES)}
    return HeadsConfig(pool=16, stages=st)


@torch.no_grad()
def build_pool(n: int, seed: int, vae=None, p_artifact: float = 0.5, p_unwanted: float = 0.6) -> dict:
    """``n`` samples of stream ``seed``: clean images, VAE reconstructions (or copies), masks."""
    b = data.make_batch(n, seed, p_artifact=p_artifact, p_unwanted=p_unwanted)
    recon = b.images
    if vae is not None:
        parts = []
        g = torch.Generator().manual_seed(seed)
        for s in range(0, n, 128):
            post = vae.encode(b.images[s : s + 128] * 2 - 1).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
            parts.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
        recon = torch.cat(parts)
    return {"clean": b.images, "recon": recon, "art": b.artifact_masks, "unw": b.unwanted_masks,
            "labels": b.labels, "captions": b.captions}


def _batch(pool: dict, st: StageConfig, step: int, recon_fraction: float):
    g = torch.Generator().manual_seed(st.seed * 1_000_003 + step)
    idx = torch.randint(0, len(pool["clean"]), (st.batch,), generator=g)
    use_recon = (torch.rand(st.batch, generator=g) < recon_fraction)[:, None, None, None]
    x = torch.where(use_recon, pool["recon"][idx], pool["clean"][idx])
    return augment(x, g), idx


def _loss(kind: str, net, x: torch.Tensor, pool: dict, idx: torch.Tensor) -> torch.Tensor:
    art, unw = pool["art"][idx], pool["unw"][idx]
    if kind == "artifact":  # BCE (positives up-weighted) + soft Dice
        logit = net(x)
        bce = F.binary_cross_entropy_with_logits(logit, art, pos_weight=torch.tensor(3.0))
        p = torch.sigmoid(logit)
        dice = 1 - (2 * (p * art).sum() + 1) / (p.sum() + art.sum() + 1)
        return bce + 0.5 * dice
    has_art = (art.flatten(1).sum(1) > 0).float()
    has_unw = (unw.flatten(1).sum(1) > 0).float()
    if kind == "safety":
        return F.binary_cross_entropy_with_logits(net(x), has_unw)
    if kind == "judge":
        return F.binary_cross_entropy_with_logits(net(x), torch.stack([has_art, has_unw], 1))
    logits = net(x)
    return sum(F.cross_entropy(logits[k], pool["labels"][k][idx]) for k in logits)


def train_head(kind: str, cfg: HeadsConfig, pool: dict, out: str | Path, resume: bool = False) -> dict:
    """Train one network (``artifact|safety|judge|oracle``); writes ``out/<file>.safetensors``."""
    st = cfg.stages[kind]
    torch.manual_seed(st.seed)
    net = NETS[kind]()
    opt = torch.optim.AdamW(net.parameters(), lr=st.lr, weight_decay=1e-4)

    def step_fn(step: int) -> float:
        x, idx = _batch(pool, st, step, cfg.recon_fraction)
        loss = _loss(kind, net, x, pool, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    log = _run(kind, st, {"net": net}, opt, step_fn, out, resume)
    path = Path(out) / f"{FILES[kind]}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_module(net.eval(), path, {"arch": type(net).__name__, "kind": kind})
    return log


def load_vae(out: str | Path):
    """The VAE trained in ``out/vae`` (or ``None`` when absent)."""
    from diffusers import AutoencoderKL

    p = Path(out) / "vae"
    return AutoencoderKL.from_pretrained(p).eval() if p.exists() else None


def train_heads(cfg: HeadsConfig, out: str | Path, which: tuple[str, ...], resume: bool = False) -> dict:
    """Train the named heads; rewards share one pool, judges another."""
    vae = load_vae(out)
    logs, pools = {}, {}
    for kind in which:
        seed = cfg.judge_pool_seed if kind in ("judge", "oracle") else cfg.reward_pool_seed
        if seed not in pools:
            pools[seed] = build_pool(cfg.pool, seed, vae, cfg.p_artifact, cfg.p_unwanted)
        logs[kind] = train_head(kind, cfg, pools[seed], out, resume)
    return logs


__all__ = ["HeadsConfig", "build_pool", "train_head", "train_heads", "tiny_heads_config"]
