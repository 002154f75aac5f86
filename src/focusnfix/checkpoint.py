"""Crash-safe run-folder I/O: atomic folders and files, resumable checkpoints without pickles.

A checkpoint folder ``checkpoints/step-000123/`` holds ``lora.safetensors`` (trainable tensors),
``optimizer.safetensors`` + ``optimizer.json``, ``scheduler.json``, ``trainer.json`` and, written
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

MANIFEST = "manifest.json"


def fault_point(name: str, step: int) -> None:
    """Crash-test hook: SIGKILL this process at a named point when ``FOCUSNFIX_FAULT`` asks for it.

    ``FOCUSNFIX_FAULT=checkpoint-middle@3`` kills the process halfway through writing the checkpoint
    of step 3; ``after-step@5`` right after optimizer step 5. Unset (always, outside tests): no-op.
    """
    spec = os.environ.get("FOCUSNFIX_FAULT")
    if spec and spec == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


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
    """Write ``text`` to ``path`` via a temporary file, fsync, and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    from .sharding import full

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
    from .sharding import shard_like

    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        param = params[int(idx)] if int(idx) < len(params) else None
        if torch.is_tensor(value) and param is not None and value.shape == param.shape:
            value = shard_like(param, value)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, step: int, lora: dict[str, torch.Tensor], optimizer: tuple[dict[str, torch.Tensor], dict],
                    scheduler: torch.optim.lr_scheduler.LRScheduler, extra: dict | None = None) -> Path:
    """Write a complete checkpoint atomically to ``folder`` and return it. ``lora`` comes from
    :func:`focusnfix.lora.lora_state`, ``optimizer`` from :func:`optimizer_files`."""
    with atomic_dir(folder) as tmp:
        save_file({k: v.contiguous() for k, v in lora.items()}, tmp / "lora.safetensors")
        tensors, meta = optimizer
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        fault_point("checkpoint-middle", step)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **(extra or {})}))
        files = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    return Path(folder)


def is_complete(folder: Path) -> bool:
    """True if ``folder`` has a manifest and every listed file matches its checksum."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).is_file() and sha256(folder / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def list_checkpoints(root: str | Path) -> list[Path]:
    """``step-*`` folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint; incomplete or corrupted ones are skipped with a warning."""
    for ckpt in reversed(list_checkpoints(root)):
        if is_complete(ckpt):
            return ckpt
        warnings.warn(f"skipping incomplete or corrupted checkpoint {ckpt}", stacklevel=2)
    return None


def read_lora(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a checkpoint folder."""
    return load_file(folder / "lora.safetensors")


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore optimizer and scheduler state from a checkpoint folder; return ``trainer.json`` (its step and extras)."""
    optimizer_from_files(optimizer, load_file(folder / "optimizer.safetensors"), json.loads((folder / "optimizer.json").read_text()))
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    return json.loads((folder / "trainer.json").read_text())


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
