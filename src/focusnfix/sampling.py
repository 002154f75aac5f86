"""One DDIM (eta = 0) sampler for everything: inference, the frozen reference I0, and DRaFT-K.

The first T-K steps run under ``torch.no_grad()``; gradient flows only through the last K UNet
calls and the VAE decode (DRaFT-K, Clark et al. 2023, Sec. 4). Inference-time methods (reward
guidance, SLD) wrap the model function: ``guidance(model_fn) -> model_fn`` (k-diffusion style), so
the sampler never knows about them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .backbones.sd import Conditioning

ModelFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
Guidance = Callable[[ModelFn], ModelFn]


def draw_k(k: int, k_max: int | None, generator: torch.Generator | None = None) -> int:
    """K for one trajectory: fixed ``k``, or uniform on ``[k, k_max]`` (drawn once, never per step)."""
    if k_max is None or k_max == k:
        return k
    return int(torch.randint(k, k_max + 1, (1,), generator=generator).item())


def ddim_sample(
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
) -> torch.Tensor:
    """Run T = ``steps`` DDIM steps from x_T = ``noise``; return the final latents x_0.

    Only the last ``k`` steps record gradients (``k = 0``: no gradient at all). ``callback(i, t, x)``
    is called after each step with the new latents (detached). ``first``/``last`` run only steps
    ``first <= i < last`` of the T (``noise`` is then the latents before step ``first``, and the
    result the latents after step ``last - 1``), so a trajectory can be split and resumed.
    """
    if not 0 <= k <= steps:
        raise ValueError(f"K must satisfy 0 <= K <= T, got K={k}, T={steps}")
    scheduler = backbone.scheduler
    scheduler.set_timesteps(steps, device=noise.device)
    model_fn = guidance(backbone.model_fn) if guidance is not None else backbone.model_fn
    x = noise
    last = steps if last is None else last
    for i, t in enumerate(scheduler.timesteps):
        if not first <= i < last:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= steps - k):
            if grad_checkpointing and torch.is_grad_enabled():
                out = checkpoint(model_fn, x, t, cond, use_reentrant=False)
            else:
                out = model_fn(x, t, cond)
            x = scheduler.step(out, t, x, eta=0.0, return_dict=False)[0]
        if callback is not None:
            callback(i, t, x.detach())
    return x


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
        latents = ddim_sample(backbone, cond, backbone.initial_noise(seeds), steps, guidance=guidance)
        return backbone.decode(latents)


def model_output_from(scheduler, eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The model output (epsilon or v, per the scheduler's prediction type) for a given (ε, x̂_0) pair."""
    if scheduler.config.prediction_type == "v_prediction":
        a = scheduler.alphas_cumprod.to(eps.device)[t].to(eps.dtype)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return eps
