"""The processes of a training run, through its accelerate ``Accelerator``: creating it, sharding the frozen
UNet (FSDP), and the collectives of a step (gradient and log averaging, finiteness checks over ranks).

:class:`Ranks` holds the accelerator and whether the UNet is sharded; the rest are plain functions.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

import torch

from ..backbones.sharding import full, local, reshard_after_forward, shard_unet
from ..errors import FocusNFixError, RunFailed, os_error_message


class Ranks:
    """The run's processes. ``sharded``: the frozen UNet is (to be) sharded over them (``train.fsdp`` or an
    accelerate FSDP config, more than one process), decided when built; :meth:`shard` then does it."""

    def __init__(self, accelerator, fsdp: bool):
        from accelerate.utils import DistributedType  # accelerate (heavy): imported when a trainer is built

        self.accelerator = accelerator
        self.sharded = (fsdp or accelerator.distributed_type == DistributedType.FSDP) and accelerator.num_processes > 1

    def shard(self, unet: torch.nn.Module, mixed_precision: str) -> None:
        """FSDP: shard the frozen UNet over the ranks (nothing unless :attr:`sharded`)."""
        if not self.sharded:
            return
        acc = self.accelerator
        if mixed_precision == "fp16":
            raise FocusNFixError("train.mixed_precision=fp16 is not supported with FSDP (its loss scaler does not "
                                 "handle sharded gradients); use train.mixed_precision=bf16")
        if any("lora_magnitude_vector" in n for n, _ in unet.named_parameters()):  # an accelerate FSDP config
            raise FocusNFixError("lora.use_dora is not supported with FSDP (DoRA's norm needs each whole frozen "
                                 "weight); set lora.use_dora=false or train without sharding")
        shard_unet(unet, acc.device, acc.num_processes, reshard_after_forward(getattr(acc.state, "fsdp_plugin", None)))

    def holds_state(self) -> bool:
        """Whether this rank must read the LoRA / optimizer state: the main process writes it, and a
        sharded state is gathered by every rank (a collective)."""
        return self.sharded or self.accelerator.is_main_process

    def any_rank(self, flag: bool) -> bool:
        """True if ``flag`` holds on any rank (a collective: every rank calls it)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def norm_and_weights_finite(self, params: list[torch.Tensor], norm: torch.Tensor) -> tuple[float, bool]:
        """(the gradients' norm before clipping, every LoRA weight is finite on every rank): read from the
        device in one sync (sharded: the weights' flag after one all-reduce, a collective)."""
        ok = all_finite(local(p.detach()) for p in params)
        if self.sharded:
            norm = full(norm)
            ok = self.accelerator.reduce((~ok).float().reshape(1), reduction="sum").reshape(()) == 0
        grad_norm, ok = torch.stack([norm.detach().float().reshape(()), ok.float()]).tolist()
        return grad_norm, ok == 1.0

    def average_gradients(self, params: list[torch.Tensor], nonfinite: float) -> tuple[bool, bool]:
        """Data parallel: mean of the LoRA gradients over ranks (one all-reduce).

        Returns (every rank's loss was finite, every averaged gradient is finite). Sharded (FSDP),
        the gradients arrive averaged (reduce-scatter); only the two checks span the ranks."""
        acc = self.accelerator
        if self.sharded:
            ok = all_finite(local(p.grad) for p in params if p.grad is not None)
            flags = acc.reduce(torch.stack([torch.tensor(nonfinite, device=acc.device), (~ok).float().to(acc.device)]),
                               reduction="sum")
            bad_loss, bad_grad = flags.tolist()
            return bad_loss == 0.0, bad_grad == 0.0
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if acc.num_processes == 1:
            return nonfinite == 0.0, bool(all_finite(grads))  # one host sync for all tensors
        flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([nonfinite], device=grads[0].device)])
        flat = acc.reduce(flat, reduction="mean")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()
        return float(flat[-1]) == 0.0, bool(torch.isfinite(flat[:-1]).all())

    def average_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """The logs' mean over ranks (one all-reduce)."""
        if self.accelerator.num_processes == 1 or not logs:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))


def all_finite(tensors) -> torch.Tensor:
    """Whether every element of every tensor is finite, as one 0-d bool tensor on their device (no host
    sync until it is read)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def make_accelerator(cpu: bool, timeout_s: float = 300.0, **kwargs):
    """An Accelerator (process group, device, reductions); a second Trainer in the same process may set
    ``cpu`` otherwise. ``timeout_s``: how long a collective waits for the other processes
    (``train.collective_timeout``; set when this call creates the process group)."""
    from accelerate import Accelerator  # accelerate (heavy): imported when a trainer is built
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    try:
        return Accelerator(cpu=cpu, kwargs_handlers=handlers, **kwargs)
    except ValueError:  # accelerate keeps a process-wide state; reset it (keeps the distributed setup)
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(cpu=cpu, kwargs_handlers=handlers, **kwargs)


@contextmanager
def run_failures(accelerator, timeout_s: float, kept: Callable[[], str]) -> Iterator[None]:
    """A disk that fills up (any OSError), or with several processes a collective that times out or fails
    (``train.collective_timeout``: ``timeout_s``), ends as a one-line :class:`RunFailed` naming what is
    ``kept()`` to resume from."""
    try:
        yield
    except OSError as e:
        raise RunFailed(f"{os_error_message(e)}; {kept()}: then rerun with --resume") from e
    except RuntimeError as e:
        if accelerator.num_processes > 1 and collective_failure(e):
            raise RunFailed(f"a collective operation timed out after train.collective_timeout={timeout_s:g} s or "
                            f"failed ({first_line(e)}): another process of the job died or hangs; {kept()}") from e
        raise


def collective_failure(e: BaseException) -> bool:
    """Whether an error comes from the process group (a timeout, a peer that vanished)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e).lower()
    return any(k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset",
                                   "broken pipe"))


def first_line(e: BaseException) -> str:
    """The gist of a backend error, without its source-location prefixes: ``Timed out waiting 5000ms ...``."""
    lines = [re.sub(r"\[[^\]]*\]\s*", "", ln).strip() for ln in str(e).splitlines()]
    return next((ln for ln in lines if ln), type(e).__name__)[:60]
