"""Reference cache: Î0 and M(Î0) depend only on (prompt, seed) and a fingerprint of everything else
(base weights, sampler settings, mask settings, reward), so each is computed once per pool.

An entry holds only what the loss reads: Î0 (float32) and M(Î0) (uint8 when the mask is binary, as
it is unless ``mask.blur`` > 0; float32 for soft masks), so a cached reference gives the same loss,
bit for bit, as a recomputed one. Entries live in memory (LRU within ``max_bytes``) and, when
``folder`` is given, on disk as one safetensors file per (prompt, seed) under ``folder/<fingerprint>/``
(written atomically). Any change of a key part changes the fingerprint, so stale entries are never read.

When the cache is used (:func:`build_reference_cache`): a (prompt, seed) pair recurs within a run only
with ``data.seed_pool`` (seeds drawn from 2**31 repeat with probability ~ draws² / 2**32), so without
a seed pool the memory cache is not built (it could never hit) and a disk cache (``reference_cache=
<folder>``) is written and read (a rerun with the same ``train.seed`` draws the same pairs) but keeps
nothing in memory.
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

from ..methods.base import compact, expand  # noqa: F401 (expand re-exported: compact's inverse)
from ..runs.files import check_writable_folder

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


def entry_bytes(entry: dict[str, torch.Tensor]) -> int:
    """Host bytes an entry holds."""
    return sum(t.numel() * t.element_size() for t in entry.values())


class ReferenceCache:
    """(prompt, seed) -> {``images``: Î0, ``mask``: M(Î0)} in memory (LRU, at most ``max_bytes``) and
    optionally on disk. ``max_bytes = 0``: disk only."""

    def __init__(self, fingerprint: str, folder: str | Path | None = None, max_bytes: int = 1024 * 2**20,
                 max_items: int | None = None, spill: str | Path | None = None):
        self.fingerprint, self.max_bytes, self.max_items = fingerprint, int(max_bytes), max_items
        self.folder = Path(folder) / fingerprint[:24] if folder else None
        # where :meth:`snapshot` writes memory entries for a checkpoint (the disk cache itself when there is one)
        self.spill = self.folder or (Path(spill) / fingerprint[:24] if spill else None)
        self.memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(prompt: str, seed: int) -> str:
        return hashlib.sha256(json.dumps([prompt, int(seed)]).encode()).hexdigest()[:32]

    def get(self, prompt: str, seed: int) -> dict[str, torch.Tensor] | None:
        key = self.key(prompt, seed)
        entry = self.memory.get(key)
        if entry is not None:
            self.memory.move_to_end(key)
        elif self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            try:
                entry = load_file(self.folder / f"{key}.safetensors")
                entry = {k: entry[k] for k in ("images", "mask")}  # a version-1 file also holds the heatmap
            except Exception:  # noqa: BLE001 (safetensors raises its own error types; a missing key too)
                entry = None  # a damaged file is a miss; it will be rewritten
            if entry is not None:
                self._remember(key, entry)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, prompt: str, seed: int, entry: dict[str, torch.Tensor]) -> None:
        key = self.key(prompt, seed)
        entry = compact(entry)
        self._remember(key, entry)
        if self.folder is not None:
            self._write(self.folder, key, entry, {"prompt": prompt, "seed": str(seed)})

    def _write(self, folder: Path, key: str, entry: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        save_file(entry, tmp, metadata={**meta, "fingerprint": self.fingerprint})
        os.replace(tmp, folder / f"{key}.safetensors")

    # -- checkpoints: the memory state, so that a resumed run hits and misses where the uninterrupted one did -------
    def snapshot(self) -> list[str]:
        """The keys held in memory, least recently used first, each written to ``spill`` unless already there
        (entries never change under one fingerprint, so a file once written serves every later checkpoint)."""
        if self.spill is not None:
            for key, entry in self.memory.items():
                if not (self.spill / f"{key}.safetensors").is_file():
                    self._write(self.spill, key, entry, {})
        return list(self.memory)

    def restore(self, keys: list[str]) -> int:
        """Refill memory with :meth:`snapshot`'s ``keys`` in their order (bit for bit the entries computed before the
        interruption: a recomputed reference may round differently, e.g. in another batch); returns how many were
        restored (a missing or damaged file is skipped: that entry is computed again)."""
        self.memory.clear()
        self.bytes = 0
        for key in keys if self.spill is not None else []:
            try:
                entry = load_file(self.spill / f"{key}.safetensors")
                self._remember(key, {k: entry[k] for k in ("images", "mask")})
            except Exception:  # noqa: BLE001 (missing or damaged: a miss later, as before this method existed)
                continue
        return len(self.memory)

    def _remember(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        """Keep ``entry`` as the newest; drop the least recently used ones beyond the budget (an entry
        larger than the whole budget is not kept)."""
        if key in self.memory:
            self.bytes -= entry_bytes(self.memory.pop(key))
        self.memory[key] = entry
        self.bytes += entry_bytes(entry)
        while self.memory and (self.bytes > self.max_bytes
                               or (self.max_items is not None and len(self.memory) > self.max_items)):
            self.bytes -= entry_bytes(self.memory.popitem(last=False)[1])


def pairs_recur(cfg) -> bool:
    """Whether a training (prompt, seed) pair can come back within a run: only with ``data.seed_pool``
    (the prompt list is always finite and the draws deterministic in ``train.seed``; seeds from 2**31
    repeat with negligible probability)."""
    return cfg.data.seed_pool is not None


def build_reference_cache(backbone, reward, cfg) -> ReferenceCache | None:
    """The run's cache per ``train.reference_cache`` and the rule in the module docstring: None when it
    is ``off``, or ``memory`` without a seed pool (nothing could hit); a folder without a seed pool is a
    disk-only cache. Reads the whole frozen weights (for the fingerprint): call before sharding."""
    t = cfg.train
    recur = pairs_recur(cfg)
    if t.reference_cache == "off" or (t.reference_cache == "memory" and not recur):
        return None
    if t.reference_cache_items is not None:
        import warnings

        warnings.warn("train.reference_cache_items is deprecated: the memory budget is train.reference_cache_mb "
                      f"(the item limit {t.reference_cache_items} still applies)", FutureWarning, stacklevel=2)
    folder = None if t.reference_cache == "memory" else t.reference_cache
    if folder is not None:  # bad input, found before any work (not when the first entry is written)
        check_writable_folder(folder, "train.reference_cache", ", or memory or off")
    budget = int(t.reference_cache_mb * 2**20) if recur else 0
    return ReferenceCache(reference_fingerprint(backbone, reward, cfg), folder, budget, t.reference_cache_items,
                          spill=Path(t.output_dir) / "checkpoints" / "reference-cache")
