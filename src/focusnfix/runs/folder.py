"""The run folder (``train.output_dir``) as a whole: whether a run may start there, its lock, the leftovers of
an interrupted write, and ``summary.json``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import FocusNFixError, os_error_message, short_path
from .checkpoint import atomic_write_text, checkpoint_step, fault_point, latest_checkpoint
from .locking import FolderLock
from .metrics_log import read_metrics


def check_output_dir(out: Path, resume: bool, holding_lock: bool = False) -> None:
    """Fail early (before anything is written) on an unusable run folder. A folder holds a run once it
    has a complete checkpoint; one left by a run that died before its first checkpoint starts afresh."""
    try:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    except OSError as e:  # e.g. a path component too long
        raise FocusNFixError(f"train.output_dir: {os_error_message(e, out)}") from None
    if blocker is not None:
        raise FocusNFixError(f"train.output_dir {short_path(out)}: {short_path(blocker)} is a file; choose a folder")
    if not holding_lock:
        run_lock(out).check()  # another trainer writing here: say so first
    if out.exists() and not resume and latest_checkpoint(out / "checkpoints", quiet=True) is not None:
        raise FocusNFixError(f"run folder {short_path(out)} already holds a run; pass --resume or choose another "
                             "train.output_dir")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise FocusNFixError(f"cannot write to {short_path(parent)}; choose a writable train.output_dir")


def run_lock(out: Path) -> FolderLock:
    """The run folder's lock (``out/.lock``), held by the main process of a training run."""
    return FolderLock(out / ".lock", "run folder", out, "another `focusnfix train` is writing it: wait for it to "
                      "finish or choose another train.output_dir")


def kept_checkpoint(out: Path) -> str:
    """What a failed run in ``out`` leaves to resume from, for its one-line message."""
    ckpt = latest_checkpoint(out / "checkpoints", quiet=True)
    if ckpt is None:
        return "no checkpoint was saved yet, so a rerun starts from step 0"
    return f"the last good checkpoint {short_path(ckpt, 60)} (step {checkpoint_step(ckpt)}) is intact"


def remove_leftovers(out: Path) -> None:
    """The ``.tmp-*`` folders of a write interrupted by a crash (a checkpoint, ``lora/`` or an export)."""
    for leftover in (out / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out.glob(".tmp-*"):  # an interrupted lora/ write
        shutil.rmtree(leftover, ignore_errors=True)


def write_summary(out: Path, method: str, steps: int, processes: int, samples: Path) -> None:
    """``summary.json``: the method, steps, number of processes, the first and last metrics rows and the final
    sample grid (``samples``, inside ``out``), written atomically."""
    rows = read_metrics(out / "metrics.jsonl")
    summary = {"method": method, "steps": steps, "processes": processes,
               "final": rows[-1] if rows else {}, "first": rows[0] if rows else {},
               "samples": str(samples.relative_to(out))}
    fault_point("before-summary", steps)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
