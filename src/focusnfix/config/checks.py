"""Range checks of every config field and size limits of free-form values (used by
:meth:`focusnfix.config.Config.validate`): numbers are finite (checked when read) and within the
ranges below, so a typo fails with one line naming the key instead of deep inside a run."""
from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError, short

MAX_SIDE = 16384  # px: larger images than any model makes; a typo such as 5120000 fails here, not in an allocation
MAX_SEED = 2**63  # seeds go to torch.Generator.manual_seed (a 64-bit integer)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def check_ranges(cfg) -> None:
    """The range of every numeric field of a :class:`~focusnfix.config.Config`, and the sizes of its
    strings and lists (one :class:`ConfigError` line naming the key, its range and the value)."""
    from ..prompts import MAX_PROMPT_CHARS

    m, lo, s, g, d, t = cfg.model, cfg.lora, cfg.sampler, cfg.grpo, cfg.data, cfg.train
    big = 2**31 - 1
    _in("model.resolution", m.resolution, 1, MAX_SIDE, "px")
    _in("sampler.height", s.height, 1, MAX_SIDE, "px")
    _in("sampler.width", s.width, 1, MAX_SIDE, "px")
    _in("lora.rank", lo.rank, 1, 4096)
    _in("lora.alpha", lo.alpha, 0.0, 1e6, lo_open=True)
    _in("lora.dropout", lo.dropout, 0.0, 1.0, hi_open=True)
    _in("sampler.steps", s.steps, 1, 1000)
    _in("sampler.checkpoint_chunks", s.checkpoint_chunks, 1, 4096)
    _in("sampler.guidance_scale", s.guidance_scale, 0.0, 1e4)
    _in("mask.dilate", cfg.mask.dilate, 0, MAX_SIDE, "px")
    _in("mask.blur", cfg.mask.blur, 0.0, MAX_SIDE, "px")
    _in("mask.min_area", cfg.mask.min_area, 0, MAX_SIDE**2, "px")
    _in("objective.lam", cfg.objective.lam, 0.0, 1e12)
    _in("objective.eps", cfg.objective.eps, 0.0, 1.0)
    _in("grpo.group_size", g.group_size, 2, 4096)
    _in("grpo.clip_range", g.clip_range, 0.0, 1e6, lo_open=True)
    _in("grpo.adv_clip", g.adv_clip, 0.0, 1e6, lo_open=True)
    _in("grpo.timesteps", g.timesteps, 1, 1000)
    _in("data.seed_pool", d.seed_pool, 1, MAX_SEED)
    for seed in d.sample_seeds:
        _in("data.sample_seeds", seed, 0, MAX_SEED - 1)
    _in("train.steps", t.steps, 1, 10**9)
    _in("train.batch_size", t.batch_size, 1, 4096)
    _in("train.grad_accum", t.grad_accum, 1, 2**20)
    _check(t.batch_size * t.grad_accum <= 2**20, "train.grad_accum",
           f"times train.batch_size must be at most {2**20} trajectories per step, got {t.batch_size * t.grad_accum}")
    _in("train.lr", t.lr, 0.0, 1e3, lo_open=True)
    _in("train.warmup_steps", t.warmup_steps, 0, 10**9)
    _in("train.weight_decay", t.weight_decay, 0.0, 1e3)
    _in("train.adam_beta1", t.adam_beta1, 0.0, 1.0, hi_open=True)
    _in("train.adam_beta2", t.adam_beta2, 0.0, 1.0, hi_open=True)
    _in("train.adam_eps", t.adam_eps, 0.0, 1.0, lo_open=True)
    _in("train.max_grad_norm", t.max_grad_norm, 0.0, 1e12)
    _in("train.seed", t.seed, 0, 2**32 - 1)
    _in("train.log_every", t.log_every, 1, big)
    _in("train.sample_every", t.sample_every, 0, big)
    _in("train.checkpoint_every", t.checkpoint_every, 0, big)
    _in("train.keep_checkpoints", t.keep_checkpoints, 1, 10**6)
    _in("train.max_bad_steps", t.max_bad_steps, 1, big)
    _in("train.reference_cache_items", t.reference_cache_items, 1, 10**8)
    _in("train.reference_cache_mb", t.reference_cache_mb, 0.0, 2.0**40, "MiB")
    _in("train.collective_timeout", t.collective_timeout, 0.0, 7 * 24 * 3600.0, "s", lo_open=True)
    _check(bool(t.output_dir.strip()), "train.output_dir", "is empty; give a folder")
    _check(bool(t.reference_cache.strip()), "train.reference_cache", "is empty; use off, memory or a folder")
    _check(t.report_to in ("none", "tensorboard", "wandb", "all"), "train.report_to",
           f"must be none, tensorboard, wandb or all, got {short(t.report_to)}")
    _check(not t.push_to_hub or bool(t.hub_repo_id), "train.push_to_hub",
           "needs train.hub_repo_id (e.g. you/sd14-fnf); set it, or push later with `focusnfix push RUN --repo-id ID`")
    if t.hub_repo_id is not None:
        from ..runs.hub import check_repo_id

        check_repo_id(t.hub_repo_id, "train.hub_repo_id", ConfigError)
    _check(bool(cfg.reward.name.strip()), "reward.name", "is empty; give a reward name or package.module:attr")
    _check(len(s.negative_prompt) <= MAX_PROMPT_CHARS, "sampler.negative_prompt",
           f"is {len(s.negative_prompt)} characters long (max {MAX_PROMPT_CHARS})")
    for key, prompts in (("data.prompts", d.prompts), ("data.sample_prompts", d.sample_prompts)):
        long = next((p for p in prompts if len(p) > MAX_PROMPT_CHARS), None)
        _check(long is None, key, f"holds a prompt of {len(long or '')} characters (max {MAX_PROMPT_CHARS}); shorten it")
    _check(lo.targets is None or all(x.strip() for x in lo.targets), "lora.targets", "holds an empty name")


def _in(key: str, value, lo, hi, unit: str = "", lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` (None = unset, fine) within [lo, hi] (open ends as asked), else one line naming ``key``."""
    if value is None:
        return
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        unit = f" {unit}" if unit else ""
        raise ConfigError(f"{key} must be in {left}{_num(lo)}, {_num(hi)}{right}{unit}, got {short(value)}")


def _num(x) -> str:
    """A range bound: 2**31 - 1 and 2**63 as such, other numbers as they are."""
    for k in (31, 32, 63):
        if x == 2**k:
            return f"2**{k}"
        if x == 2**k - 1:
            return f"2**{k} - 1"
    return f"{x:g}" if isinstance(x, float) else str(x)


MAX_NODES, MAX_DEPTH = 10_000, 32


def check_size(value: Any, key: str) -> None:
    """A free-form mapping (``reward.args``) of at most MAX_NODES values, MAX_DEPTH levels deep, every
    number finite: a YAML alias bomb or a runaway nesting fails here with one line."""
    stack, seen = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError(f"{key} is too large or too deeply nested (at most {MAX_NODES} values, {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{key} holds a non-finite number ({node}); use a finite value")
        elif isinstance(node, str) and "\x00" in node:
            raise ConfigError(f"{key} holds a NUL character; remove it")
