"""Training loop on accelerate: AdamW on the LoRA parameters only, LR schedule, accumulation,
clipping, mixed precision, metrics, sample grids and atomic, resumable checkpoints.

All randomness of a step (prompt choice, noise seeds, K) is derived from ``(train.seed, step)``, so a resumed run continues exactly the same trajectory.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import load_backbone
from .checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import Config, save_config
from .errors import FocusNFixError
from .images import save_preview_grid
from .lora import add_lora, load_lora_state, lora_state, save_lora
from .methods import METHODS, Batch
from .prompts import resolve_prompts
from .registry import build_reward
from .sampling import draw_k


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at a given optimizer step."""
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return fn


def make_batches(cfg: Config, prompts: list[str], step: int) -> list[Batch]:
    """The ``grad_accum`` micro-batches of optimizer step ``step``, deterministic in ``train.seed``.

    All ``batch_size * grad_accum`` trajectories of the step are drawn at once and share one K, so
    (batch b, accumulation a) sees the same trajectories as (batch b*a, accumulation 1).
    """
    t = cfg.train
    n = t.batch_size * t.grad_accum
    rng = np.random.default_rng([t.seed, step])
    idx = rng.integers(0, len(prompts), size=n)
    seeds = rng.integers(0, cfg.data.seed_pool or 2**31 - 1, size=n)
    k = draw_k(cfg.sampler.k, cfg.sampler.k_max, torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1))))
    return [Batch(prompts=[prompts[i] for i in idx[j: j + t.batch_size]], seeds=[int(s) for s in seeds[j: j + t.batch_size]], k=k)
            for j in range(0, n, t.batch_size)]


def check_output_dir(out: Path, resume: bool) -> None:
    """Fail early (before anything is written) on an unusable run folder."""
    if out.exists() and not out.is_dir():
        raise FocusNFixError(f"train.output_dir {str(out)!r} is a file; choose a folder")
    if out.exists() and not resume and (out / "checkpoints").exists():
        raise FocusNFixError(f"run folder {str(out)!r} already holds a run; pass --resume or choose another train.output_dir")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise FocusNFixError(f"cannot write to {str(parent)!r}; choose a writable train.output_dir")


class Trainer:
    """Builds backbone, LoRA, reward and method from a :class:`Config` and trains.

    ``reward`` may be passed as an object to bypass the registry (Python API).
    """

    def __init__(self, cfg: Config, reward=None, backbone=None):
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        self.prompts = resolve_prompts(cfg.data.prompts, cfg.data.prompt_file)
        self.accelerator = _accelerator(cfg.train.mixed_precision, cfg.train.cpu)
        set_seed(cfg.train.seed)
        self.backbone = backbone or load_backbone(cfg.model.path, cfg.model.dtype, cfg.model.revision, cfg.model.resolution)
        self.backbone.to(self.accelerator.device)
        self.reward = reward if reward is not None else build_reward(cfg.reward.name, **cfg.reward.args)
        self.params = add_lora(self.backbone.unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t.lr_schedule, t.warmup_steps, t.steps))
        self.optimizer, self.scheduler = self.accelerator.prepare(self.optimizer, self.scheduler)
        self.method = METHODS[cfg.method](self.backbone, self.reward, cfg)
        self.step = 0

    # -- state ----------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore the newest complete checkpoint; False if there is none."""
        ckpt = latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        self.step, lora = load_checkpoint(ckpt, self.optimizer, self.scheduler)
        load_lora_state(self.backbone.unet, lora)
        _truncate_metrics(self.out / "metrics.jsonl", self.step)
        return True

    def save_checkpoint(self) -> Path:
        folder = save_checkpoint(self.out / "checkpoints" / f"step-{self.step:06d}", self.step,
                                 lora_state(self.backbone.unet), self.optimizer, self.scheduler)
        prune_checkpoints(self.out / "checkpoints", self.cfg.train.keep_checkpoints)
        return folder

    # -- one optimizer step ---------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        t = self.cfg.train
        totals: dict[str, float] = {}
        for batch in make_batches(self.cfg, self.prompts, self.step):
            with self.accelerator.autocast():
                loss, logs = self.method.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower train.lr or check the reward")
            self.accelerator.backward(loss / t.grad_accum)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / t.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {**totals, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    # -- the loop ---------------------------------------------------------------------------------
    def sample_grid(self, name: str) -> Path:
        d = self.cfg.data
        prompts = d.sample_prompts or self.prompts[:4]
        pairs = [(p, s) for p in prompts for s in d.sample_seeds]
        preview = self.method.preview([p for p, _ in pairs], [s for _, s in pairs])
        return save_preview_grid(preview, self.out / "samples" / f"{name}.png")

    def train(self, resume: bool = False, progress: bool = True) -> Path:
        t = self.cfg.train
        if resume and not self.resume():
            raise FocusNFixError(f"--resume given but {str(self.out / 'checkpoints')!r} has no complete checkpoint")
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "config.yaml")
        writer = _tensorboard(self.out)
        bar = tqdm(total=t.steps, initial=self.step, desc=f"{self.cfg.method} train", disable=not progress, dynamic_ncols=True)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as metrics:
            while self.step < t.steps:
                start = time.perf_counter()
                logs = self.train_step()
                logs = {"step": self.step, **logs, "seconds": time.perf_counter() - start}
                if self.step % t.log_every == 0 or self.step == t.steps:
                    metrics.write(json.dumps(logs) + "\n")
                    metrics.flush()
                    if writer is not None:
                        for key, value in logs.items():
                            writer.add_scalar(f"train/{key}", value, self.step)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("reward", "constraint") if k in logs})
                bar.update(1)
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_grid(f"step-{self.step:06d}")
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < t.steps:
                    self.save_checkpoint()
        bar.close()
        self.finish()
        return self.out

    def finish(self) -> None:
        """Final checkpoint, diffusers-format LoRA in ``lora/``, final sample grid, ``summary.json``."""
        lora = self.cfg.lora
        self.save_checkpoint()
        from .checkpoint import atomic_dir

        with atomic_dir(self.out / "lora") as tmp:
            save_lora(self.backbone.unet, tmp, lora.rank, lora.alpha, lora.targets, type(self.backbone.pipe))
        grid_path = self.sample_grid("final")
        rows = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = {"method": self.cfg.method, "steps": self.step, "final": rows[-1] if rows else {},
                   "first": rows[0] if rows else {}, "samples": str(grid_path.relative_to(self.out))}
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))


def _accelerator(mixed_precision: str, cpu: bool):
    """An Accelerator; a second Trainer in the same process may use other precision settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError:  # accelerate keeps a process-wide state; reset it (keeps the distributed setup)
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(cfg: Config, resume: bool = False, reward=None, progress: bool = True) -> Path:
    """Train ``cfg`` and return the run folder (the Python API of ``focusnfix train``)."""
    check_output_dir(Path(cfg.train.output_dir), resume)
    return Trainer(cfg, reward=reward).train(resume=resume, progress=progress)
