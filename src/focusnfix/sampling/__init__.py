"""One deterministic sampler for everything: inference, the frozen reference I0, DRaFT-K, and the GRPO rollout.

* :mod:`.conditioning`: :class:`Conditioning` (text conditioning c) and :func:`conditioning_rows`;
* :mod:`.steps`: the step rules (DDIM, flow Euler, and their stochastic counterparts), each built for one
  schedule, and the Gaussian log-density of a stochastic transition;
* :mod:`.loop`: the sampler loop :func:`sample`, its row-chunked gradient checkpointing, and :func:`generate`.

The backbone supplies the step rule: DDIM with eta = 0 for the UNet families (SD 1.x/2.x, SDXL) or
Euler on the rectified-flow ODE for the flow-matching transformers (SD3, FLUX).
"""
from __future__ import annotations

from .conditioning import SHARED_CONDITIONING, Conditioning, conditioning_rows
from .loop import (Guidance, ModelFn, Transitions, chunked_checkpoint, draw_k, generate, grad_checkpointing_on,
                   row_chunks, sample, sample_stochastic)
from .steps import (DDIMStep, FlowEulerStep, FlowSDEStep, StochasticDDIMStep, epsilon_from_x0, gaussian_log_prob,
                    model_output_from, predicted_x0)

__all__ = [
    "Conditioning", "SHARED_CONDITIONING", "conditioning_rows",
    "DDIMStep", "StochasticDDIMStep", "FlowEulerStep", "FlowSDEStep", "gaussian_log_prob",
    "predicted_x0", "epsilon_from_x0", "model_output_from",
    "ModelFn", "Guidance", "Transitions", "row_chunks", "chunked_checkpoint", "grad_checkpointing_on", "draw_k",
    "sample", "sample_stochastic", "generate",
]
