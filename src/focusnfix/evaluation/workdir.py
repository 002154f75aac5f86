"""The in-progress eval folder, so an interrupted ``focusnfix eval`` resumes where it stopped.

``OUT`` is written as ``.partial-OUT`` next to it and renamed when complete. Inside, ``.work/`` keeps

* ``state.json``: what every image depends on except the method (model, dtype, sampler, reward,
  mask settings, device type, the (prompt, category, seed) jobs). A rerun with other settings
  starts afresh; a rerun with the same settings keeps every finished image.
* ``done.jsonl``: one line per finished batch of one method, appended after its images (and, for
  the base model, its masks) are on disk: ``{"key", "i": [job indices], "seconds": [...]}``. ``key``
  identifies the method's settings, so a method whose settings changed is regenerated.
* ``masks/<i>.npz``: M(Î0) of each base image, exactly as computed (float32), read back per batch
  (by ``rg-region`` and the metrics), so memory does not grow with the number of prompts.
Two evals into one folder are refused by the lock :meth:`Evaluation.run` holds (``.OUT.lock`` next
to ``OUT``, an OS file lock: see :mod:`focusnfix.locking`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch


class WorkDir:
    """``with WorkDir(out, state) as work: ...`` opens ``.partial-OUT`` (the caller holds the eval's lock);
    :meth:`finish` drops ``.work/``."""

    def __init__(self, out: Path, state: dict, log=print):
        self.out, self.state, self.log = Path(out).resolve(), json.loads(json.dumps(state)), log
        self.root = self.out.with_name(f".partial-{self.out.name}")
        self.work = self.root / ".work"
        self._done: dict[str, dict[int, float]] = {}

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> "WorkDir":
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "lock").unlink(missing_ok=True)  # the PID file of earlier versions
        state_file = self.work / "state.json"
        try:
            old = json.loads(state_file.read_text()) if state_file.is_file() else None
        except (ValueError, OSError):  # torn or unreadable (written before it was written atomically): unknown
            old = {"unreadable": True}
        if old is not None and old != self.state:
            why = "unreadable settings" if old == {"unreadable": True} else "other settings"
            self.log(f"[eval] {self.root} holds an interrupted eval with {why}; starting afresh")
            self._wipe()
        elif old is not None:
            self._read_done()
        tmp = self.work / f".state.{os.getpid()}.tmp"  # written whole or not at all
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, state_file)
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.root.is_dir() and not self._done:
            shutil.rmtree(self.root, ignore_errors=True)  # nothing finished: leave nothing behind

    def finish(self) -> Path:
        """The complete folder, without ``.work/``."""
        shutil.rmtree(self.work)
        self._done.clear()
        return self.root

    def _wipe(self) -> None:
        for child in self.root.iterdir():
            if child != self.work:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        for child in self.work.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    # -- finished images ----------------------------------------------------------------------
    def _read_done(self) -> None:
        path = self.work / "done.jsonl"
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption: that batch is redone
                continue
            self._done.setdefault(rec["key"], {}).update(zip(rec["i"], rec["seconds"]))
        n = sum(len(v) for v in self._done.values())
        if n:
            self.log(f"[eval] resuming {self.root}: {n} images already done")

    def done(self, key: str) -> dict[int, float]:
        """Job index -> inference seconds of the finished images of the method with settings ``key``."""
        return dict(self._done.get(key, {}))

    def commit(self, key: str, indices: list[int], seconds: list[float]) -> None:
        """Record a finished batch (after its files are written); durable before it returns."""
        with open(self.work / "done.jsonl", "a") as f:
            f.write(json.dumps({"key": key, "i": list(indices), "seconds": list(seconds)}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._done.setdefault(key, {}).update(zip(indices, seconds))

    # -- M(Î0) per image ----------------------------------------------------------------------
    def save_masks(self, indices: list[int], masks: torch.Tensor) -> None:
        folder = self.work / "masks"
        folder.mkdir(exist_ok=True)
        for i, m in zip(indices, masks.detach().cpu()):
            np.savez_compressed(folder / f"{i:05d}.npz", mask=m.numpy())

    def load_masks(self, indices: list[int]) -> torch.Tensor:
        """``(b, 1, H, W)`` masks of the base images ``indices``."""
        arrays = [np.load(self.work / "masks" / f"{i:05d}.npz", allow_pickle=False)["mask"] for i in indices]
        return torch.from_numpy(np.stack(arrays))
