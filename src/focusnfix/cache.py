"""Reference cache: Î0 and M(Î0) depend only on (prompt, seed) and a fingerprint of everything else
(base weights, sampler settings, mask settings, reward), so each is computed once per pool.

Entries live in memory (LRU, ``max_items``) and, when ``folder`` is given, on disk as one
safetensors file per (prompt, seed) under ``folder/<fingerprint>/`` (written atomically). Any change
of a key part changes the fingerprint, so stale entries are never read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


def weights_fingerprint(module: torch.nn.Module, samples: int = 4096) -> str:
    """A cheap, robust fingerprint of a module's frozen weights: names, shapes, dtypes, a strided sample
    of every tensor and its sum. LoRA tensors are excluded and peft's ``.base_layer`` renaming ignored."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" in name:
            continue
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // samples)].float().cpu()
        h.update(name.replace(".base_layer", "").encode())
        h.update(str((tuple(tensor.shape), str(tensor.dtype), float(flat.float().sum()))).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def reward_fingerprint(reward) -> str:
    """Name, scalar settings and the weights of every torch module held by the reward object."""
    h = hashlib.sha256(type(reward).__qualname__.encode())
    stack = [reward]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for key, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
            if isinstance(value, torch.nn.Module):
                h.update(key.encode() + weights_fingerprint(value).encode())
            elif torch.is_tensor(value):
                h.update(key.encode() + value.detach().float().cpu().numpy().tobytes())
            elif isinstance(value, (int, float, str, bool, tuple)) or value is None:
                h.update(f"{key}={value!r}".encode())
            elif isinstance(value, (list, dict)):
                items = value.values() if isinstance(value, dict) else value
                stack.extend(v for v in items if hasattr(v, "__dict__"))
                h.update(f"{key}={json.dumps(value, default=str, sort_keys=True)}".encode())
            elif hasattr(value, "__dict__") and not callable(value):
                stack.append(value)
    return h.hexdigest()


def reference_fingerprint(backbone, reward, cfg) -> str:
    """Everything I0 and M(I0) depend on besides (prompt, seed)."""
    s = cfg.sampler
    parts = {
        "version": FORMAT_VERSION,
        "model": [weights_fingerprint(m) for m in (backbone.unet, backbone.vae, backbone.text_encoder)],
        "model_class": type(backbone).__name__, "resolution": backbone.resolution,
        "scheduler": dict(backbone.scheduler.config),
        "sampler": {"steps": s.steps, "guidance_scale": s.guidance_scale, "negative_prompt": s.negative_prompt},
        "mask": dataclasses.asdict(cfg.mask), "reward": reward_fingerprint(reward),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ReferenceCache:
    """(prompt, seed) -> (Î0, M, map) tensors, in memory and optionally on disk."""

    def __init__(self, fingerprint: str, folder: str | Path | None = None, max_items: int = 512):
        self.fingerprint, self.max_items = fingerprint, max_items
        self.folder = Path(folder) / fingerprint[:24] if folder else None
        self.memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(prompt: str, seed: int) -> str:
        return hashlib.sha256(json.dumps([prompt, int(seed)]).encode()).hexdigest()[:32]

    def get(self, prompt: str, seed: int) -> dict[str, torch.Tensor] | None:
        key = self.key(prompt, seed)
        entry = self.memory.get(key)
        if entry is None and self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            try:
                entry = load_file(self.folder / f"{key}.safetensors")
            except Exception:  # noqa: BLE001 (safetensors raises its own error types)
                entry = None  # a damaged file is a miss; it will be rewritten
            if entry is not None:
                self._remember(key, entry)
        if entry is None:
            self.misses += 1
            return None
        self.memory.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, prompt: str, seed: int, entry: dict[str, torch.Tensor]) -> None:
        key = self.key(prompt, seed)
        entry = {k: v.detach().cpu().contiguous() for k, v in entry.items()}
        self._remember(key, entry)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            save_file(entry, tmp, metadata={"prompt": prompt, "seed": str(seed), "fingerprint": self.fingerprint})
            os.replace(tmp, self.folder / f"{key}.safetensors")

    def _remember(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        self.memory[key] = entry
        self.memory.move_to_end(key)
        while len(self.memory) > self.max_items:
            self.memory.popitem(last=False)
