"""Crash-safe run-folder I/O: atomic folders and files, resumable checkpoints without pickles.

A checkpoint folder ``checkpoints/step-000123/`` holds ``lora.safetensors`` (trainable tensors),
``optimizer.safetensors`` + ``optimizer.json``, ``scheduler.json``, ``trainer.json`` (with ``train.ema``, also
``ema.safetensors``: the moving average of the LoRA) and, written
last, ``manifest.json`` with each file's SHA-256. RNG state needs no file: the trainer reseeds every
step from ``(train.seed, step, rank)``, so the step number determines it. It is written to a
temporary sibling, fsynced and renamed, so a crash never leaves a half-written ``step-*`` folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainingDiverged, safetensors_os_error

MANIFEST = "manifest.json"
TENSOR_FILES = ("ema",)  # optional tensor files of a checkpoint beside lora.safetensors (read when present)


def fault_requested(name: str, step: int) -> bool:
    """Whether ``FOCUSNFIX_FAULT`` asks for a fault at this point (and, with ``FOCUSNFIX_FAULT_RANK``, in
    this process of a distributed job)."""
    spec = os.environ.get("FOCUSNFIX_FAULT")
    if not spec or spec != f"{name}@{step}":
        return False
    rank = os.environ.get("FOCUSNFIX_FAULT_RANK")
    return rank is None or rank == os.environ.get("RANK", "0")


def fault_point(name: str, step: int) -> None:
    """Crash-test hook: SIGKILL this process at a named point when ``FOCUSNFIX_FAULT`` asks for it.

    ``FOCUSNFIX_FAULT=checkpoint-middle@3`` kills the process halfway through writing the checkpoint
    of step 3; ``after-step@5`` right after optimizer step 5 (the points: ``config-write@0``,
    ``after-step``, ``metrics-torn`` (half a line written first), ``checkpoint-middle``,
    ``checkpoint-complete`` (written, not yet renamed), ``checkpoint-saved`` (renamed, old ones not yet
    pruned), ``prune-middle``, ``lora-middle``, ``before-summary``; ``eval-batch`` after an eval's N-th
    image). ``FOCUSNFIX_FAULT_SIGNAL=STOP`` freezes the process instead (a hung rank);
    ``FOCUSNFIX_FAULT_RANK=R`` limits it to rank R. Unset (always, outside tests): no-op.
    """
    if fault_requested(name, step):
        sig = os.environ.get("FOCUSNFIX_FAULT_SIGNAL", "KILL")
        os.kill(os.getpid(), signal.SIGSTOP if sig == "STOP" else signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync, and rename; on failure (disk full) the
    temporary file is removed and ``path`` is untouched. OSErrors name ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from None  # name the file meant, not its temporary
        raise


@contextmanager
def io_errors(path: str | Path) -> Iterator[None]:
    """Re-raise safetensors' I/O errors (``... (os error 28)``) and OSErrors without a file name as
    OSErrors naming ``path``, so the CLI's one-line message says where the disk filled up."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        os_error = safetensors_os_error(e, path)
        if os_error is None:
            raise
        raise os_error from None
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def nonfinite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN or Inf, else None."""
    return next((name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())),
                None)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success fsync its files and rename it to ``final`` (replacing it)."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = final.with_name(f".old-{final.name}")
        if final.exists():  # set aside, not deleted, until the new folder is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def optimizer_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer state as (tensors for safetensors, JSON metadata). Sharded (FSDP) state is
    gathered into whole tensors, so every rank must call this."""
    from ..backbones.sharding import full

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = full(value.detach()).cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_files`; per-parameter state is laid out like its (maybe sharded) parameter."""
    from ..backbones.sharding import shard_like

    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        param = params[int(idx)] if int(idx) < len(params) else None
        if torch.is_tensor(value) and param is not None and value.shape == param.shape:
            value = shard_like(param, value)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, step: int, lora: dict[str, torch.Tensor],
                    optimizer: tuple[dict[str, torch.Tensor], dict],
                    scheduler: torch.optim.lr_scheduler.LRScheduler, extra: dict | None = None,
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a complete checkpoint atomically to ``folder`` and return it. ``lora`` comes from
    :func:`focusnfix.lora.lora_state`, ``optimizer`` from :func:`optimizer_files`; ``tensors``: more tensor files,
    ``NAME.safetensors`` for each of :data:`TENSOR_FILES` given (``ema``: ``train.ema``'s average)."""
    bad = nonfinite_tensor(lora)
    if bad is not None:  # never save (and later call "good") a diverged state
        raise TrainingDiverged(f"refusing to save checkpoint {Path(folder).name}: LoRA tensor {bad} holds NaN or Inf")
    with io_errors(folder), atomic_dir(folder) as tmp:
        save_file({k: v.contiguous() for k, v in lora.items()}, tmp / "lora.safetensors")
        for name, values in (tensors or {}).items():
            assert name in TENSOR_FILES, name
            save_file({k: v.contiguous() for k, v in values.items()}, tmp / f"{name}.safetensors")
        tensors, meta = optimizer
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        fault_point("checkpoint-middle", step)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **(extra or {})}))
        files = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        fault_point("checkpoint-complete", step)
    return Path(folder)


def is_complete(folder: Path) -> bool:
    """True if ``folder`` has a manifest and every listed file matches its checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).is_file() and sha256(folder / name) == digest
                   for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def list_checkpoints(root: str | Path) -> list[Path]:
    """``step-*`` folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)


def latest_checkpoint(root: str | Path, quiet: bool = False) -> Path | None:
    """The newest complete checkpoint; incomplete or corrupted ones are skipped with a warning
    (``quiet``: without)."""
    for ckpt in reversed(list_checkpoints(root)):
        if is_complete(ckpt):
            return ckpt
        if not quiet:
            warnings.warn(f"skipping incomplete or corrupted checkpoint {ckpt}", stacklevel=2)
    return None


def checkpoint_step(folder: Path) -> int:
    """The step of a complete checkpoint (from its manifest)."""
    return int(json.loads((folder / MANIFEST).read_text())["step"])


def read_lora(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a checkpoint folder."""
    return load_file(folder / "lora.safetensors")


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """Every file of a checkpoint folder read into memory (raises whatever the readers raise on a damaged file):
    ``lora``, ``optimizer`` (tensors, metadata), ``scheduler``, ``trainer`` (``trainer.json``, with its step) and
    each of :data:`TENSOR_FILES` the checkpoint has (``ema``)."""
    files = {"lora": read_lora(folder),
             "optimizer": (load_file(folder / "optimizer.safetensors"),
                           json.loads((folder / "optimizer.json").read_text())),
             "scheduler": json.loads((folder / "scheduler.json").read_text()),
             "trainer": json.loads((folder / "trainer.json").read_text())}
    files.update({name: load_file(folder / f"{name}.safetensors") for name in TENSOR_FILES
                  if (folder / f"{name}.safetensors").is_file()})
    if not isinstance(files["trainer"].get("step"), int) \
            or not {"param_groups", "scalars"} <= set(files["optimizer"][1]):
        raise ValueError("trainer.json or optimizer.json lacks a required key")
    return files


def load_training_state(files: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore optimizer and scheduler state from :func:`read_checkpoint`'s ``files``; return ``trainer.json`` (its
    step and extras)."""
    optimizer_from_files(optimizer, *files["optimizer"])
    scheduler.load_state_dict(files["scheduler"])
    return files["trainer"]


def prune_checkpoints(root: str | Path, keep: int, step: int = -1) -> None:
    """Delete all but the newest ``keep`` checkpoints (each one's manifest first, so a deletion cut
    short leaves a folder that is plainly incomplete)."""
    for old in list_checkpoints(root)[:-keep]:
        (old / MANIFEST).unlink(missing_ok=True)
        fault_point("prune-middle", step)
        shutil.rmtree(old, ignore_errors=True)
