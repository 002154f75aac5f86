"""One deterministic sampler for everything: inference, the frozen reference I0, and DRaFT-K.

The backbone supplies the step rule: DDIM with eta = 0 for the UNet families (SD 1.x/2.x, SDXL) or
Euler on the rectified-flow ODE for the flow-matching transformers (SD3, FLUX). The first T-K steps
run under ``torch.no_grad()``; gradient flows only through the last K model calls and the VAE decode
(DRaFT-K, Clark et al. 2023, Sec. 4). Inference-time methods (reward guidance, SLD) wrap the model
function: ``guidance(model_fn) -> model_fn`` (k-diffusion style), so the sampler never knows about them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..backbones.sd import Conditioning

ModelFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
Guidance = Callable[[ModelFn], ModelFn]


class DDIMStep:
    """x_t -> x_{t-1} by DDIM with eta = 0 (Song et al. 2021, eq. 12): diffusers' ``DDIMScheduler.step``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def timesteps(self, steps: int, device: torch.device) -> torch.Tensor:
        self.scheduler.set_timesteps(steps, device=device)
        return self.scheduler.timesteps

    def __call__(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(out, t, x, eta=0.0, return_dict=False)[0]

    def x0(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return predicted_x0(self.scheduler, out, x, t)

    def output_for(self, x0: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model output (epsilon or v) whose x̂0 at step t is ``x0``."""
        return model_output_from(self.scheduler, epsilon_from_x0(self.scheduler, x0, x, t), x0, t)


class StochasticDDIMStep(DDIMStep):
    """DDIM with eta > 0 (Song et al. 2021, eq. 12 and 16), the policy of DDPO / GRPO: a Gaussian
    transition x_{t-1} ~ N(mu_theta(x_t), sigma_t^2 I) with

        sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)   (a = alpha-bar)

    and mu_theta the DDIM update with the direction term shrunk by sigma_t (diffusers'
    ``DDIMScheduler.step(eta=...)`` without its noise). eta = 1 is DDPM's posterior variance."""

    def __init__(self, scheduler, eta: float):
        super().__init__(scheduler)
        self.eta = float(eta)

    def std(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """sigma_t of step ``i`` (from timestep ``t``; a 0-d tensor)."""
        s = self.scheduler
        prev = int(t) - s.config.num_train_timesteps // s.num_inference_steps
        a_t = s.alphas_cumprod[int(t)]
        a_prev = s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod
        return self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()

    def mean(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """mu_theta(x_t): the eta-DDIM update before its noise is added."""
        return self.scheduler.step(out, t, x, eta=self.eta, variance_noise=torch.zeros_like(x), return_dict=False)[0]

    def __call__(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t-1} = mu + sigma_t * noise (``noise`` ~ N(0, I); None: the mean)."""
        mean = self.mean(out, i, t, x)
        return mean if noise is None else mean + self.std(i, t).to(mean) * noise.to(mean)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-element log N(x; mean, std^2) (same shape as ``x``)."""
    var = std.to(mean) ** 2
    return -((x - mean) ** 2) / (2 * var) - std.to(mean).log() - 0.5 * math.log(2 * math.pi)


class FlowEulerStep:
    """Euler on the rectified-flow ODE dx/dσ = v (Esser et al. 2024): ``x_next = x + (σ_next - σ) v``,
    the deterministic step of diffusers' ``FlowMatchEulerDiscreteScheduler`` (float32 update, cast back).

    ``schedule(steps)`` gives the ``set_timesteps`` keywords of the family's pipeline (custom sigmas,
    the resolution-dependent shift ``mu``), so σ_0..σ_T (σ_T = 0) equal the pipeline's exactly."""

    def __init__(self, scheduler, schedule: Callable[[int], dict]):
        self.scheduler, self.schedule = scheduler, schedule
        self.sigmas: torch.Tensor | None = None

    def timesteps(self, steps: int, device: torch.device) -> torch.Tensor:
        self.scheduler.set_timesteps(device=device, **self.schedule(steps))
        self.sigmas = self.scheduler.sigmas.to(device)
        return self.scheduler.timesteps

    def __call__(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) + (self.sigmas[i + 1] - self.sigmas[i]) * out).to(out.dtype)

    def x0(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x̂0 = x - σ v (x = (1 - σ) x0 + σ ε and v = ε - x0)."""
        return x - self.sigmas[i].to(x.dtype) * out

    def output_for(self, x0: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The velocity whose x̂0 is ``x0``: v = (x - x0) / σ."""
        return (x - x0) / self.sigmas[i].to(x.dtype)


class FlowSDEStep(FlowEulerStep):
    """The stochastic counterpart of the flow ODE for policy gradients (Flow-GRPO, Liu et al. 2025, eq. 9):
    the SDE with the same marginals as dx = v dt,

        dx = [v + s_t^2 / (2 t) (x + (1 - t) v)] dt + s_t dw,   s_t = a sqrt(t / (1 - t)),

    discretised by Euler-Maruyama over the pipeline's sigmas (t = sigma, dt = sigma_next - sigma < 0):
    x_next ~ N(mu, (s_t sqrt(-dt))^2 I) with mu = x + [v + s_t^2 / (2 t) (x + (1 - t) v)] dt. ``a`` is
    the noise level (``grpo.eta``; Flow-GRPO uses 0.7); a = 0 is the Euler ODE step. At t = 1 the
    1 / (1 - t) of s_t uses the next sigma instead (s_t would be infinite)."""

    def __init__(self, scheduler, schedule: Callable[[int], dict], noise_level: float):
        super().__init__(scheduler, schedule)
        self.a = float(noise_level)

    def _s(self, i: int) -> torch.Tensor:
        sigma = self.sigmas[i]
        denominator = 1 - (self.sigmas[1] if float(sigma) >= 1.0 else sigma)
        return self.a * (sigma / denominator).sqrt()

    def std(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """The transition's standard deviation s_t sqrt(-dt) at step ``i``."""
        return self._s(i) * (self.sigmas[i] - self.sigmas[i + 1]).sqrt()

    def mean(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma, dt, s = self.sigmas[i], self.sigmas[i + 1] - self.sigmas[i], self._s(i)
        drift = out + s**2 / (2 * sigma) * (x + (1 - sigma) * out)
        return x + drift * dt

    def __call__(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.mean(out, i, t, x)
        return mean if noise is None else mean + self.std(i, t).to(mean) * noise.to(mean)


SHARED_CONDITIONING = ("txt_ids",)  # inputs of ``Conditioning.added`` that are not per row (FLUX's text position ids)


def conditioning_rows(cond: Conditioning, index: list[int]) -> Conditioning:
    """The conditioning of trajectories ``index`` of ``cond`` (repeats allowed), without encoding again:
    under CFG both halves [negative; positive] are taken, so the result is again [negative; positive]."""
    rows = cond.embeds.shape[0]
    n = rows // 2 if cond.cfg else rows
    picked = list(index) + ([i + n for i in index] if cond.cfg else [])
    where = torch.tensor(picked, device=cond.embeds.device)

    def take(key: str, value):
        if key in SHARED_CONDITIONING or not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != rows:
            return value
        return value.index_select(0, where.to(value.device))

    added = {k: take(k, v) for k, v in cond.added.items()} if cond.added else cond.added
    return Conditioning(embeds=take("embeds", cond.embeds), guidance_scale=cond.guidance_scale, added=added)




def chunked_checkpoint(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, chunks: int) -> torch.Tensor:
    """``model_fn(x, t, cond)`` under gradient checkpointing, as ``chunks`` calls on consecutive rows
    (each with its CFG halves: :func:`conditioning_rows`), each checkpointed on its own.

    Backward then recomputes one chunk at a time, so the recomputation holds 1/chunks of one call's
    activations (the peak of a checkpointed step). Every layer of the denoisers is per-sample
    (no batch statistics), so the result equals the one-call result up to float rounding; the FLOPs
    are the same, plus one call's fixed overhead per extra chunk."""
    n = x.shape[0]
    chunks = max(1, min(int(chunks), n))
    if chunks == 1:
        return checkpoint(model_fn, x, t, cond, use_reentrant=False)
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    outs = [checkpoint(model_fn, x[a:b], t, conditioning_rows(cond, list(range(a, b))), use_reentrant=False)
            for a, b in zip(bounds, bounds[1:])]
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
) -> torch.Tensor:
    """Run T = ``steps`` steps of the backbone's step rule from x_T = ``noise``; return the final latents.

    Only the last ``k`` steps record gradients (``k = 0``: no gradient at all). ``callback(i, t, x)``
    is called after each step with the new latents (detached). ``first``/``last`` run only steps
    ``first <= i < last`` of the T (``noise`` is then the latents before step ``first``, and the
    result the latents after step ``last - 1``), so a trajectory can be split and resumed.
    ``chunks``: with ``grad_checkpointing``, each gradient-carrying call runs as that many checkpointed
    row chunks (:func:`chunked_checkpoint`).
    """
    if not 0 <= k <= steps:
        raise ValueError(f"K must satisfy 0 <= K <= T, got K={k}, T={steps}")
    rule = backbone.step_rule
    timesteps = rule.timesteps(steps, noise.device)
    model_fn = guidance(backbone.model_fn) if guidance is not None else backbone.model_fn
    x = noise
    last = steps if last is None else last
    for i, t in enumerate(timesteps):
        if not first <= i < last:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= steps - k):
            if grad_checkpointing and torch.is_grad_enabled():
                out = chunked_checkpoint(model_fn, x, t, cond, chunks)
            else:
                out = model_fn(x, t, cond)
            x = rule(out, i, t, x)
        if callback is not None:
            callback(i, t, x.detach())
    return x


ddim_sample = sample  # the name from when DDIM was the only step rule


def predicted_x0(scheduler, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x̂_0 from the model output at step t (epsilon or v prediction), DDIM eq. (12)."""
    a = scheduler.alphas_cumprod.to(x.device)[t].to(x.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * model_output
    return (x - (1 - a).sqrt() * model_output) / a.sqrt()


def epsilon_from_x0(scheduler, x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The epsilon that makes x̂_0 = ``x0`` at step t."""
    a = scheduler.alphas_cumprod.to(x.device)[t].to(x.dtype)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def generate(backbone, prompts, seeds, steps: int = 20, guidance_scale: float = 7.5,
             negative_prompt: str = "", guidance: Guidance | None = None) -> torch.Tensor:
    """Inference: images ``(B, 3, H, W)`` in [0, 1] for ``prompts`` and noise ``seeds``, no gradient."""
    with torch.no_grad():
        cond = backbone.encode(prompts, negative_prompt, guidance_scale)
        latents = sample(backbone, cond, backbone.initial_noise(seeds), steps, guidance=guidance)
        return backbone.decode(latents)


def model_output_from(scheduler, eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model output (epsilon or v, per the scheduler's prediction type) for a given (ε, x̂_0) pair."""
    if scheduler.config.prediction_type == "v_prediction":
        a = scheduler.alphas_cumprod.to(eps.device)[t].to(eps.dtype)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return eps


def sample_stochastic(backbone, cond: Conditioning, noise: torch.Tensor, steps: int, rule, seeds) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sample T = ``steps`` stochastic steps of ``rule`` (:class:`StochasticDDIMStep` or
    :class:`FlowSDEStep`) from x_T = ``noise`` without gradient (the GRPO rollout).

    Returns ``(timesteps (T,), xs, log_probs (T, B, *latent), stds (T,))``: ``xs`` holds x_T ... x_0
    (T + 1 latents), ``log_probs[i]`` the per-element log-density of the transition x_i -> x_{i+1}
    taken. The transition noise of trajectory b comes from its own CPU generator seeded from
    ``seeds[b]`` (independent of x_T's), so rollouts are the same on every device and batch split."""
    timesteps = rule.timesteps(steps, noise.device)
    gens = [torch.Generator("cpu").manual_seed(int(s) + (1 << 40)) for s in seeds]
    xs, log_probs, stds = [noise], [], []
    x = noise
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            out = backbone.model_fn(x, t, cond)
            mean, std = rule.mean(out, i, t, x), rule.std(i, t)
            eps = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in gens]).to(mean)
            x = mean + std.to(mean) * eps
            log_probs.append(gaussian_log_prob(x, mean, std))
            xs.append(x)
            stds.append(std)
    return timesteps, xs, torch.stack(log_probs), torch.stack(stds)
