"""What a training step draws and how fast it learns: the step's micro-batches (deterministic in
``(train.seed, step)``) and the learning-rate schedule."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import Config
from ..methods.base import Batch
from ..sampling import draw_k


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


def make_batches(cfg: Config, prompts: list[str], step: int, rank: int = 0, world: int = 1) -> list[Batch]:
    """This process's ``grad_accum`` micro-batches of optimizer step ``step``, deterministic in ``train.seed``.

    All ``batch_size * grad_accum * world`` trajectories of the step are drawn at once and share one
    K; rank r takes its contiguous share. So (batch b, accumulation a, world w) sees the same
    trajectories as (batch b, accumulation a*w, one process) and as (batch b*a, accumulation 1).
    """
    t = cfg.train
    n = t.batch_size * t.grad_accum * world
    rng = np.random.default_rng([t.seed, step])
    idx = rng.integers(0, len(prompts), size=n)
    seeds = rng.integers(0, cfg.data.seed_pool or 2**31 - 1, size=n)
    k = draw_k(cfg.sampler.k, cfg.sampler.k_max, torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1))))
    early = ()  # objective.trajectory_weight: J steps of the first T-K, shared by the step's trajectories
    if cfg.objective.trajectory_weight > 0 and cfg.sampler.steps > k:
        count = min(cfg.objective.trajectory_steps, cfg.sampler.steps - k)
        early = tuple(sorted(int(i) for i in rng.choice(cfg.sampler.steps - k, size=count, replace=False)))
    mine = range(rank * t.batch_size * t.grad_accum, (rank + 1) * t.batch_size * t.grad_accum, t.batch_size)
    return [Batch(prompts=[prompts[i] for i in idx[j: j + t.batch_size]],
                  seeds=[int(s) for s in seeds[j: j + t.batch_size]], k=k, step=step, early=early)
            for j in mine]


def continue_schedule(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """A resume that changed train.lr or train.steps: the optimizer's LR and the schedule (whose length comes
    from the new train.steps) continue from the checkpoint's step with the new base LR ``lr``."""
    fn = scheduler.lr_lambdas[0]
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
