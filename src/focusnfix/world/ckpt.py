"""Pickle-free training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (state dicts of named modules, prefixed by the
module's name), ``optim.safetensors`` (the optimizer's per-parameter tensors) and ``state.json``
(step, optimizer param groups, anything else JSON-able).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _optim_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    flat: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            flat[f"{idx}.{k}"] = t.detach().contiguous().clone()
    return flat, sd["param_groups"]


def _optim_from_flat(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> None:
    """Write a checkpoint atomically (to ``path.tmp`` then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {
        f"{name}.{k}": v.detach().contiguous().clone()
        for name, m in modules.items()
        for k, v in m.state_dict().items()
    }
    save_file(weights, str(tmp / "model.safetensors"))
    meta = dict(state)
    if opt is not None:
        flat, groups = _optim_to_flat(opt)
        save_file(flat, str(tmp / "optim.safetensors"))
        meta["param_groups"] = groups
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    os.replace(tmp, path)


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
    if opt is not None and (path / "optim.safetensors").exists():
        _optim_from_flat(opt, load_file(str(path / "optim.safetensors")), state.pop("param_groups"))
    return state


def save_module(module: torch.nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Save a standalone network's weights as safetensors with JSON-string metadata."""
    sd = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps(meta or {})})


def load_module_weights(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors weights written by :func:`save_module` into ``module``."""
    module.load_state_dict(load_file(str(path)))
    return module
