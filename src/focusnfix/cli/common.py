"""Flags and checks shared by the ``sample`` and ``eval`` subcommands: device flags, output folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import MAX_SIDE
from ..devices import check_batch_size, check_dtype, resolve_device
from ..errors import FocusNFixError
from ..runs.files import check_writable_folder


def device_flags(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
    """--device, --dtype, --batch-size, --height, --width (shared by sample and eval)."""
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N "
                   "(default: auto)")
    p.add_argument("--dtype", default=dtype_default, help="weights: float32, float16 or bfloat16 (default: "
                   + (dtype_default or "the config's model.dtype") + ")")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4); the images do not "
                   "depend on it beyond float rounding")
    p.add_argument("--height", type=int, help="image height in px (default: the model's or the config's)")
    p.add_argument("--width", type=int, help="image width in px (default: the model's or the config's)")


def check_device_flags(args: argparse.Namespace):
    """Validate the shared flags before anything is loaded; return the torch device."""
    check_batch_size(args.batch_size)
    if args.batch_size > 4096:
        raise FocusNFixError(f"--batch-size must be <= 4096, got {args.batch_size}")
    if args.dtype is not None:
        check_dtype(args.dtype)
    for side in ("height", "width"):
        value = getattr(args, side)
        if value is not None and value < 1:
            raise FocusNFixError(f"--{side} must be >= 1 px, got {value}")
        if value is not None and value > MAX_SIDE:
            raise FocusNFixError(f"--{side} must be <= {MAX_SIDE} px, got {value}")
    return resolve_device(args.device)


def check_out_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work on an output folder that cannot be made: a part of the path is a file, the path is too
    long, or the nearest existing folder is not writable (:func:`~focusnfix.runs.files.check_writable_folder`)."""
    return check_writable_folder(path, flag)


def exists(path: str) -> bool:
    """Whether ``path`` exists; False for a word that cannot be a path (too long, a NUL byte)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte
        return False
