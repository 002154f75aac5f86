"""``train.ema``: an exponential moving average of the LoRA weights (Polyak averaging), the weights the run shows.

After optimizer step ``s`` (counted from 0) each averaged tensor moves toward its trained one,
``ema <- d_s ema + (1 - d_s) θ`` with ``d_s = min(d, (1 + s) / (10 + s))`` (diffusers' ``EMAModel`` warm-up: early
steps are not held near the initial LoRA for 1 / (1 - d) steps). Skipped steps (non-finite) do not update it.
The average starts at the initial LoRA (B = 0: θ0) and stays float32 on the parameters' device (sharded like them).

What it is used for: ``lora/`` and the ``train.export_lora_steps`` exports, the sample grids and
``train.eval_every``'s evaluation (:meth:`EMA.applied` swaps it into the model and back, bit for bit). Checkpoints
hold it beside the trained weights (``ema.safetensors``), so a resumed run continues the same average. With
``train.ema = 0`` (the default) every method is a no-op and nothing is saved.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..backbones.sharding import full, shard_like
from ..errors import FocusNFixError


class EMA:
    """The moving average of ``params`` (the LoRA parameters by name, as :func:`~focusnfix.backbones.lora.
    lora_parameters` gives them) with decay ``decay``; off (every method a no-op) for 0."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.decay, self.params = float(decay), params
        self.shadow = {n: p.detach().clone() for n, p in params.items()} if decay > 0 else {}

    def __bool__(self) -> bool:
        return bool(self.shadow)

    def rate(self, step: int) -> float:
        """d_s: the decay of the update after optimizer step ``step`` (from 0)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average toward the current weights after optimizer step ``step`` (from 0)."""
        if not self:
            return
        weight = 1.0 - self.rate(step)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), weight)

    def state(self) -> dict[str, torch.Tensor] | None:
        """The average as whole CPU tensors by parameter name (for checkpoints and exports; sharded: gathered, a
        collective every rank calls); None when off."""
        if not self:
            return None
        return {n: full(t).cpu().clone() for n, t in self.shadow.items()}

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The checkpoint's extra tensor files: ``{"ema": state}``, or ``{}`` when off (nothing saved)."""
        return {"ema": self.state()} if self else {}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        """Restore :meth:`state`'s output (from a checkpoint); when on, a checkpoint without it is refused."""
        if not self:
            return
        if state is None or set(state) != set(self.shadow):
            raise FocusNFixError("the checkpoint holds no EMA of this LoRA (ema.safetensors) for train.ema; resume "
                                 "with the train.ema it was saved with")
        for name, t in self.shadow.items():
            t.copy_(shard_like(self.params[name], state[name]))

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model with the averaged weights while inside; the trained weights back, bit for bit, after."""
        if not self:
            yield
            return
        with torch.no_grad():
            trained = {n: p.detach().clone() for n, p in self.params.items()}
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(trained[n])
