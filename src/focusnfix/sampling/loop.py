"""The one sampler loop: inference, the frozen reference I0, DRaFT-K, and the GRPO rollout.

The backbone supplies the step rule (:mod:`focusnfix.sampling.steps`), built for the T steps on the
latents' device. The first T-K steps run under ``torch.no_grad()``; gradient flows only through the
last K model calls and the VAE decode (DRaFT-K, Clark et al. 2023, Sec. 4). Inference-time methods
(reward guidance, SLD) wrap the model function: ``guidance(model_fn) -> model_fn`` (k-diffusion style),
so the sampler never knows about them. A stochastic rule with a :class:`Transitions` record draws each
transition's noise and records its log-probability (the GRPO rollout).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .conditioning import Conditioning, conditioning_rows
from .steps import gaussian_log_prob

ModelFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
Guidance = Callable[[ModelFn], ModelFn]


def row_chunks(n: int, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` (at most ``n``, at least 1) consecutive row ranges ``(a, b)`` of nearly equal size covering
    ``n`` rows: the chunks of a checkpointed model call or VAE decode."""
    chunks = max(1, min(int(chunks), n))
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    return list(zip(bounds, bounds[1:]))


def chunked_checkpoint(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                       chunks: int) -> torch.Tensor:
    """``model_fn(x, t, cond)`` under gradient checkpointing, as ``chunks`` calls on consecutive rows
    (each with its CFG halves: :func:`conditioning_rows`), each checkpointed on its own.

    Backward then recomputes one chunk at a time, so the recomputation holds 1/chunks of one call's
    activations (the peak of a checkpointed step). Every layer of the denoisers is per-sample
    (no batch statistics), so the result equals the one-call result up to float rounding; the FLOPs
    are the same, plus one call's fixed overhead per extra chunk."""
    spans = row_chunks(x.shape[0], chunks)
    if len(spans) == 1:
        return checkpoint(model_fn, x, t, cond, use_reentrant=False)
    outs = [checkpoint(model_fn, x[a:b], t, conditioning_rows(cond, list(range(a, b))), use_reentrant=False)
            for a, b in spans]
    return torch.cat(outs)


def grad_checkpointing_on(setting: bool | str, k: int) -> bool:
    """``sampler.grad_checkpointing``: true, false, or ``auto`` = on for trajectories with K >= 4, where
    the K model calls' saved activations (K times one call's) outweigh the rest of the step's memory;
    the recomputation costs about one extra forward of the K calls. The gradient is the same either way."""
    if setting == "auto":
        return k >= 4
    return bool(setting)


def draw_k(k: int, k_max: int | None, generator: torch.Generator | None = None) -> int:
    """K for one trajectory: fixed ``k``, or uniform on ``[k, k_max]`` (drawn once, never per step)."""
    if k_max is None or k_max == k:
        return k
    return int(torch.randint(k, k_max + 1, (1,), generator=generator).item())


class Transitions:
    """The record of a stochastic trajectory: draws each transition's noise and keeps what GRPO needs.

    The transition noise of trajectory b comes from its own CPU generator seeded from ``seeds[b]``
    (independent of x_T's), so rollouts are the same on every device and batch split. ``xs`` holds
    x_T ... x_0, ``log_probs[i]`` the per-element log-density of the transition x_i -> x_{i+1} taken,
    ``stds[i]`` its standard deviation."""

    def __init__(self, noise: torch.Tensor, seeds):
        self.gens = [torch.Generator("cpu").manual_seed(int(s) + (1 << 40)) for s in seeds]
        self.xs: list[torch.Tensor] = [noise]
        self.log_probs: list[torch.Tensor] = []
        self.stds: list[torch.Tensor] = []

    def step(self, rule, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_{i+1} ~ N(rule.mean, rule.std^2 I), recorded."""
        mean, std = rule.mean(out, i, t, x), rule.std(i, t)
        eps = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in self.gens]).to(mean)
        x = mean + std.to(mean) * eps
        self.log_probs.append(gaussian_log_prob(x, mean, std))
        self.xs.append(x)
        self.stds.append(std)
        return x


def sample(
    backbone,
    cond: Conditioning,
    noise: torch.Tensor,
    steps: int,
    k: int = 0,
    guidance: Guidance | None = None,
    grad_checkpointing: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    first: int = 0,
    last: int | None = None,
    chunks: int = 1,
    rule=None,
    record: Transitions | None = None,
) -> torch.Tensor:
    """Run T = ``steps`` steps of the backbone's step rule from x_T = ``noise``; return the final latents.

    Only the last ``k`` steps record gradients (``k = 0``: no gradient at all). ``callback(i, t, x)``
    is called after each step with the new latents (detached). ``first``/``last`` run only steps
    ``first <= i < last`` of the T (``noise`` is then the latents before step ``first``, and the
    result the latents after step ``last - 1``), so a trajectory can be split and resumed.
    ``chunks``: with ``grad_checkpointing``, each gradient-carrying call runs as that many checkpointed
    row chunks (:func:`chunked_checkpoint`). ``rule``: the step rule for the T steps (default: the
    backbone's deterministic ``step_rule(steps, noise.device)``). ``record``: with a stochastic ``rule``,
    each step draws its transition noise and is recorded there (:class:`Transitions`).
    """
    if not 0 <= k <= steps:
        raise ValueError(f"K must satisfy 0 <= K <= T, got K={k}, T={steps}")
    rule = backbone.step_rule(steps, noise.device) if rule is None else rule
    model_fn = guidance(backbone.model_fn) if guidance is not None else backbone.model_fn
    x = noise
    last = steps if last is None else last
    for i, t in enumerate(rule.timesteps):
        if not first <= i < last:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= steps - k):
            if grad_checkpointing and torch.is_grad_enabled():
                out = chunked_checkpoint(model_fn, x, t, cond, chunks)
            else:
                out = model_fn(x, t, cond)
            x = rule(out, i, t, x) if record is None else record.step(rule, out, i, t, x)
        if callback is not None:
            callback(i, t, x.detach())
    return x


def sample_stochastic(backbone, cond: Conditioning, noise: torch.Tensor, steps: int, rule,
                      seeds) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`sample` with the stochastic ``rule`` (:class:`~focusnfix.sampling.steps.StochasticDDIMStep` or
    :class:`~focusnfix.sampling.steps.FlowSDEStep`, built for the ``steps``) from x_T = ``noise``, without
    gradient, recorded (:class:`Transitions`, noise from ``seeds``): the GRPO rollout.

    Returns ``(timesteps (T,), xs, log_probs (T, B, *latent), stds (T,))``: ``xs`` holds x_T ... x_0
    (T + 1 latents), ``log_probs[i]`` the per-element log-density of the transition x_i -> x_{i+1} taken."""
    record = Transitions(noise, seeds)
    with torch.no_grad():
        sample(backbone, cond, noise, steps, rule=rule, record=record)
    return rule.timesteps, record.xs, torch.stack(record.log_probs), torch.stack(record.stds)


def generate(backbone, prompts, seeds, steps: int = 20, guidance_scale: float = 7.5,
             negative_prompt: str = "", guidance: Guidance | None = None) -> torch.Tensor:
    """Inference: images ``(B, 3, H, W)`` in [0, 1] for ``prompts`` and noise ``seeds``, no gradient."""
    with torch.no_grad():
        cond = backbone.encode(prompts, negative_prompt, guidance_scale)
        latents = sample(backbone, cond, backbone.initial_noise(seeds), steps, guidance=guidance)
        return backbone.decode(latents)
