"""Pickle-free training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (state dicts of named modules, prefixed by the
module's name), ``optim.safetensors`` (the optimizer's per-parameter tensors) and ``state.json``
(step, the optimizer's param groups and scalar state, anything else JSON-able).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..runs.checkpoint import atomic_dir, optimizer_files, optimizer_from_files


def save_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> None:
    """Write a checkpoint atomically (:func:`focusnfix.checkpoint.atomic_dir`)."""
    with atomic_dir(path) as tmp:
        weights = {f"{name}.{k}": v.detach().contiguous().clone()
                   for name, m in modules.items() for k, v in m.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        meta = dict(state)
        if opt is not None:
            tensors, meta["optimizer"] = optimizer_files(opt)
            save_file(tensors, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def load_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Restore modules (and optimizer) in place; returns the JSON state."""
    path = Path(path)
    weights = load_file(str(path / "model.safetensors"))
    for name, m in modules.items():
        pre = name + "."
        m.load_state_dict({k[len(pre):]: v for k, v in weights.items() if k.startswith(pre)})
    state = json.loads((path / "state.json").read_text())
    optimizer = state.pop("optimizer", None)
    if opt is not None and optimizer is not None:
        optimizer_from_files(opt, load_file(str(path / "optim.safetensors")), optimizer)
    return state


def save_module(module: torch.nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Save a standalone network's weights as safetensors with JSON-string metadata."""
    sd = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps(meta or {})})


def load_module_weights(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors weights written by :func:`save_module` into ``module``."""
    module.load_state_dict(load_file(str(path)))
    return module
