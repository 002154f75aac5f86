"""``train.eval_every``: a held-out evaluation during training (Flow-GRPO's ``eval_freq``).

Every N optimizer steps and after the last one, the LoRA as the run shows it (the EMA's with ``train.ema``) samples
every ``data.eval_prompts`` prompt with every ``data.eval_seeds`` seed (the sampler's settings, no gradient; the
deterministic sampler, so a pair gives the same image whenever the weights are the same), and the mean training
reward (``eval/reward``) and each ``train.eval_judges`` judge's mean score (``eval/judge_NAME``, judges parsed as
``focusnfix eval --judge`` parses them: :mod:`focusnfix.rewards.judges`) join that step's ``metrics.jsonl`` row and
the trackers, with the seconds it took (``eval/seconds``; not in the step's ``seconds``).

It does not change the training trajectory: it takes no gradient, touches neither the optimizer nor the reference
cache, and runs with torch's, numpy's and Python's generators saved and restored (a reward or judge that draws
random numbers draws them from a fork). With several processes the pairs are split over the ranks and the sums
added up (one all-reduce); with a sharded UNet every rank samples every pair (the forward is a collective).
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ..config import Config
from ..prompts import config_eval_prompts
from ..rewards.base import call_reward
from ..rewards.judges import judge_score, parse_judges
from ..rewards.registry import build_reward
from ..sampling import generate


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """torch's CPU (and ``device``'s CUDA) generator, numpy's and Python's as they were before, after."""
    state_py, state_np = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(state_py)
            np.random.set_state(state_np)


class PeriodicEval:
    """Built with the trainer (bad judge names, a judge's missing extra and a missing prompt file fail before
    training); called on every rank at the steps :meth:`due` names, it returns the ``eval/*`` values."""

    def __init__(self, cfg: Config, backbone, reward, ranks, ema):
        t = cfg.train
        self.cfg, self.backbone, self.reward, self.ranks, self.ema = cfg, backbone, reward, ranks, ema
        self.every = t.eval_every
        prompts = config_eval_prompts(cfg.data) if t.eval_every else []
        self.pairs = [(p, seed) for p in prompts for seed in cfg.data.eval_seeds]
        specs = parse_judges(t.eval_judges, "train.eval_judges")
        with isolated_rng(ranks.accelerator.device):  # a judge's random init does not move the run's generators
            self.judges = [(spec, build_reward(spec.name, **spec.args)) for spec in specs]

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (from 1) is evaluated: every ``train.eval_every`` and the last."""
        return bool(self.every) and (step % self.every == 0 or step == self.cfg.train.steps)

    def __call__(self) -> dict[str, float]:
        """The mean reward and judge scores over the eval pairs, as ``{"eval/reward": ..., "eval/judge_x": ...}``."""
        acc, s = self.ranks.accelerator, self.cfg.sampler
        pairs = self.pairs if self.ranks.sharded else self.pairs[acc.process_index::acc.num_processes]
        keys = ["eval/reward"] + [f"eval/{spec.key}" for spec, _ in self.judges]
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64)  # the sums, then the number of images
        start = time.perf_counter()
        size = self.cfg.train.eval_batch_size
        with isolated_rng(acc.device), self.ema.applied(), torch.no_grad():
            for i in range(0, len(pairs), size):
                prompts, seeds = [p for p, _ in pairs[i: i + size]], [x for _, x in pairs[i: i + size]]
                images = generate(self.backbone, prompts, seeds, s.steps, s.guidance_scale, s.negative_prompt)
                scores = [call_reward(self.reward, images, prompts).score.detach().float()]
                scores += [judge_score(spec, judge, images, prompts) for spec, judge in self.judges]
                sums += torch.tensor([float(x.double().sum()) for x in scores] + [float(len(prompts))],
                                     dtype=torch.float64)
        if acc.num_processes > 1 and not self.ranks.sharded:
            sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
        n = float(sums[-1])
        means = {key: float(sums[j]) / n for j, key in enumerate(keys)} if n else {}
        return {**means, "eval/seconds": time.perf_counter() - start}
