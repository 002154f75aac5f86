"""``metrics.jsonl``: one JSON object per logged training step, appended line-atomically.

Each line is written with a single ``write`` on an append-mode descriptor, so a killed process
leaves whole lines; a write cut short (disk full) is truncated back to the previous line before the
error is raised. A line torn by a power loss or a crash of the machine can only be the last one:
:func:`read_metrics` skips lines that are not JSON objects, and resuming rewrites the file from its
valid lines (:func:`truncate_metrics`).

JSON has no NaN: a value that is not finite (the loss and gradient norm of a skipped step) is written
as ``null``. Files written before that (with bare ``NaN``) still read; their non-finite values read as
``None`` too.
"""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

from .checkpoint import atomic_write_text, fault_point, fault_requested


def json_safe(value):
    """``value`` with every non-finite float (NaN, Inf) replaced by None, in nested dicts and lists too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics file, skipping blank and torn (non-JSON) lines; [] if there is no file.
    Non-finite values (bare ``NaN`` in files of older versions) read as None."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(json_safe(row))
    return rows


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the valid rows of steps <= ``step`` (those before the checkpoint a run resumes from);
    torn lines go too. The file is replaced atomically."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if isinstance(r.get("step", 0), (int, float)) and r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


class MetricsLog:
    """Append rows to ``out/metrics.jsonl`` (line-atomic); trackers (TensorBoard, W&B) are train.report_to's
    (:mod:`focusnfix.tracking`)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "metrics.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, logs: dict) -> None:
        """Append one row; non-finite numbers are written as ``null`` (strict JSON)."""
        data = (json.dumps(json_safe(logs), allow_nan=False) + "\n").encode("utf-8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            if fault_requested("metrics-torn", logs.get("step", -1)):  # crash test: a line torn as by a machine crash
                os.write(self.fd, data[: len(data) // 2])
                fault_point("metrics-torn", logs.get("step", -1))
            written = os.write(self.fd, data)
            if written != len(data):  # a short write: the disk filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)  # no partial line stays behind
            except OSError:
                pass
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from None
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

