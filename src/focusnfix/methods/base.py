"""Shared method types: what the trainer calls (:class:`Method`), what it hands a method when it builds it
(:class:`MethodContext`), a training batch, and the frozen reference (Î0, M(Î0)) with its stored form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch


@dataclass
class Batch:
    """Trajectories to sample: one prompt c and one noise seed (x_T) each, and K for the batch.

    K is drawn once when the batch is made and used for the whole trajectory (never per step).
    """

    prompts: list[str]
    seeds: list[int]
    k: int
    step: int = 0  # the optimizer step (from 0) the batch belongs to: schedules such as objective.lam_warmup
    early: tuple[int, ...] = ()  # steps among the first T-K carrying objective.trajectory_weight's term (sorted)


@dataclass
class Reference:
    """Frozen-model output for a batch: Î0 ``(B,3,H,W)``, mask M ``(B,1,H,W)``, and the raw map
    the mask came from (reward heatmap or saliency) ``(B,1,H,W)`` when just computed (None when read
    from the reference cache, which keeps only what the loss uses)."""

    images: torch.Tensor
    mask: torch.Tensor
    heatmap: torch.Tensor | None = None


@dataclass(frozen=True)
class MethodContext:
    """What the trainer hands a method besides backbone, reward and config; a method takes what it uses.

    ``make_cache``: builds the run's reference cache (an object with ``get(prompt, seed)`` and
    ``put(prompt, seed, entry)``, or None); called once, by a method that needs a reference, when it is
    built (the cache's fingerprint reads the whole frozen weights: before sharding). ``lockstep``: sharded
    training, ``bool -> true on any rank?`` (a collective), else None. ``batch_reference``: run the
    reference and the trained pass as one batch (off under ``model.compile``); None: ``train.batch_reference``.
    """

    make_cache: Callable[[], Any] | None = None
    lockstep: Callable[[bool], bool] | None = None
    batch_reference: bool | None = None


class Method(Protocol):
    """A training method as the trainer sees it; built as ``cls(backbone, reward, cfg, context)`` from the
    catalogue (:mod:`focusnfix.config.methods`)."""

    needs_reference: bool  # whether the loss reads the frozen model's Î0 and M(Î0)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's loss (with gradient into the LoRA) and its logs (floats)."""
        ...

    def preview(self, prompts: list[str], seeds: list[int]) -> dict[str, torch.Tensor]:
        """``reference``, ``mask`` and ``images`` rows of a sample grid (no gradient)."""
        ...

    def after_step(self, logs: dict[str, float]) -> None:
        """Called after each optimizer step that was taken, with the step's logs averaged over micro-batches and
        ranks (the same on every rank): state updated per step, e.g. the budget's multiplier."""
        ...

    def state_dict(self) -> dict:
        """The method's own training state (JSON numbers), saved in every checkpoint; ``{}`` for none."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output on resume."""
        ...


def compact(entry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stored form of a reference: CPU tensors, ``images`` as they are (float32; see below), ``mask``
    as uint8 when every value is 0 or 1 (lossless), else unchanged (a soft mask from ``mask.blur``).

    Î0 stays float32: the constraint's gradient is λ (Î − Î0) / ‖Î − Î0‖, and early in training
    ‖Î − Î0‖ is as small as the LoRA's effect (exactly 0 at step 0), while float16 would move every
    pixel of Î0 by up to 2**-12 (bfloat16: 2**-9): over 3·H·W pixels ‖δ‖ ~ 1.4e-4·sqrt(3·H·W) (0.016 at
    64 px, 0.13 at 512 px), which would turn the constraint's gradient direction by ~‖δ‖ / ‖Î − Î0‖,
    i.e. change it completely while ‖Î − Î0‖ is below that."""
    out = {}
    for key in ("images", "mask"):
        value = entry[key].detach().cpu().contiguous()
        if key == "mask" and value.is_floating_point() and bool(((value == 0) | (value == 1)).all()):
            value = value.to(torch.uint8)
        out[key] = value
    return out


def expand(entry: dict[str, torch.Tensor], device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A stored entry as the loss reads it: float tensors on ``device`` (an old file's ``heatmap`` is dropped)."""
    return {key: entry[key].to(device, dtype if not entry[key].is_floating_point() else entry[key].dtype)
            for key in ("images", "mask")}
