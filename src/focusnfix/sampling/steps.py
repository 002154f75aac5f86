"""Step rules x_t -> x_{t-1} of the sampler, each built for one schedule (T steps on one device).

A rule holds its schedule as fixed values from construction, as in k-diffusion: ``rule.timesteps``
(and ``rule.sigmas`` for the flow rules) never change, and nothing is primed by hand. The arithmetic is
diffusers' own: each rule sets the schedule once on a private copy of the backbone's scheduler
(``set_timesteps``) and steps with ``scheduler.step`` where the pipelines do, so the sampler reproduces
the pipelines exactly. The backbone's own scheduler is never changed.

Rules: DDIM with eta = 0 (UNet families), Euler on the rectified-flow ODE (SD3, FLUX), and their
stochastic counterparts for policy gradients (eta-DDIM, the Flow-GRPO SDE) with Gaussian transitions.
"""
from __future__ import annotations

import copy
import math

import torch


def scheduled(scheduler, device: torch.device, **set_timesteps):
    """A private copy of ``scheduler`` with ``set_timesteps(device=device, **set_timesteps)`` applied."""
    private = copy.deepcopy(scheduler)
    private.set_timesteps(device=device, **set_timesteps)
    return private


class DDIMStep:
    """x_t -> x_{t-1} by DDIM with eta = 0 (Song et al. 2021, eq. 12): diffusers' ``DDIMScheduler.step``,
    for ``steps`` steps on ``device``."""

    def __init__(self, scheduler, steps: int, device: torch.device):
        self.scheduler = scheduled(scheduler, device, num_inference_steps=steps)
        self.timesteps: torch.Tensor = self.scheduler.timesteps

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
    ``DDIMScheduler.step(eta=...)`` without its noise). eta = 1 is DDPM's posterior variance.

    Both radicands, sigma_t^2 / eta^2 and the direction term's 1 - a_prev - sigma_t^2, are clamped at 0 before their
    square roots: on a zero-terminal-SNR schedule (a_t = 0 at the first step) with eta = 1, sigma_t^2 = 1 - a_prev
    exactly and float32 rounds the direction term to about -6e-8 for many step counts, which diffusers' step turns
    into NaN."""

    def __init__(self, scheduler, eta: float, steps: int, device: torch.device):
        super().__init__(scheduler, steps, device)
        self.eta = float(eta)

    def _alphas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, a_prev) of the step from timestep ``t``, as diffusers' step picks them."""
        s = self.scheduler
        prev = int(t) - s.config.num_train_timesteps // s.num_inference_steps
        return s.alphas_cumprod[int(t)], s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod

    def std(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """sigma_t of step ``i`` (from timestep ``t``; a 0-d tensor)."""
        a_t, a_prev = self._alphas(t)
        return self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()

    def mean(self, out: torch.Tensor, i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """mu_theta(x_t): the eta-DDIM update before its noise is added. diffusers' deterministic step
        sqrt(a_prev) x̂0 + sqrt(1 - a_prev) ε̂ (its x̂0 clipping and thresholding included), with the direction's
        coefficient sqrt(1 - a_prev) replaced by sqrt(max(0, 1 - a_prev - sigma_t^2))."""
        a_t, a_prev = self._alphas(t)
        deterministic = self.scheduler.step(out, t, x, eta=0.0, return_dict=False)[0]
        shrunk = (1 - a_prev - self.std(i, t) ** 2).clamp_min(0).sqrt() - (1 - a_prev).sqrt()
        return deterministic + shrunk.to(deterministic) * predicted_epsilon(self.scheduler, out, x, t)

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

    ``schedule`` holds the ``set_timesteps`` keywords of the family's pipeline for T steps (custom sigmas,
    the resolution-dependent shift ``mu``: the backbone's ``schedule(steps)``), so σ_0..σ_T (σ_T = 0)
    equal the pipeline's exactly."""

    def __init__(self, scheduler, schedule: dict, device: torch.device):
        self.scheduler = scheduled(scheduler, device, **schedule)
        self.timesteps: torch.Tensor = self.scheduler.timesteps
        self.sigmas: torch.Tensor = self.scheduler.sigmas.to(device)

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

    def __init__(self, scheduler, schedule: dict, noise_level: float, device: torch.device):
        super().__init__(scheduler, schedule, device)
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


# -- DDIM's x̂0 arithmetic (epsilon or v prediction), used by the DDIM rules and by reward guidance ----------
def predicted_x0(scheduler, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x̂_0 from the model output at step t (epsilon or v prediction), DDIM eq. (12)."""
    a = scheduler.alphas_cumprod.to(x.device)[t].to(x.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * model_output
    return (x - (1 - a).sqrt() * model_output) / a.sqrt()


def predicted_epsilon(scheduler, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε̂ from the model output at step t, as diffusers' DDIM step derives it (epsilon, v or sample prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    a = scheduler.alphas_cumprod.to(x.device)[t].to(x.dtype)
    if kind == "v_prediction":
        return a.sqrt() * model_output + (1 - a).sqrt() * x
    return (x - a.sqrt() * model_output) / (1 - a).sqrt()


def epsilon_from_x0(scheduler, x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The epsilon that makes x̂_0 = ``x0`` at step t."""
    a = scheduler.alphas_cumprod.to(x.device)[t].to(x.dtype)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def model_output_from(scheduler, eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model output (epsilon or v, per the scheduler's prediction type) for a given (ε, x̂_0) pair."""
    if scheduler.config.prediction_type == "v_prediction":
        a = scheduler.alphas_cumprod.to(eps.device)[t].to(eps.dtype)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return eps
