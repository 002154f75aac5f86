"""Where inference runs: ``--device auto|cpu|cuda[:N]|mps`` and ``--dtype float32|float16|bfloat16``.

``auto`` is the first CUDA GPU when there is one (else Apple ``mps`` when available, else the CPU).
Initial noise is always drawn on the CPU per seed (:meth:`SDBackbone.initial_noise`), so images do
not depend on the device's random generator or on how jobs are batched.
"""
from __future__ import annotations

import re

import torch

from .errors import FocusNFixError

DTYPE_NAMES = ("float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``spec`` (``auto``/None, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); a one-line
    :class:`FocusNFixError` for a malformed name or a device this machine does not have."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if not _DEVICE.match(spec):
        raise FocusNFixError(f"--device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FocusNFixError(f"--device {spec} but no CUDA GPU is visible to torch; use --device cpu (or auto)")
        index = int(spec.partition(":")[2] or torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise FocusNFixError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0 ... "
                                 f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if spec == "mps" and not _mps_available():
        raise FocusNFixError("--device mps but torch reports no MPS device; use --device cpu (or auto)")
    return torch.device(spec)


def check_dtype(name: str | None, default: str = "float32") -> str:
    """The dtype name (``float32``, ``float16`` or ``bfloat16``; None = ``default``) or a one-line error."""
    name = default if name is None else name
    if name not in DTYPE_NAMES:
        raise FocusNFixError(f"--dtype {name!r} is not supported; use one of {', '.join(DTYPE_NAMES)}")
    return name


def check_batch_size(n: int) -> int:
    if n < 1:
        raise FocusNFixError(f"--batch-size must be >= 1, got {n}")
    return n


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by torch on ``device`` since the last reset (MiB); None off CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
