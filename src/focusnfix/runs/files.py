"""Readers of a run's or an eval folder's JSON files: a broken file is a one-line FocusNFixError; and the check of a
folder about to be written (an output folder, a disk cache)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import FocusNFixError, os_error_message, short_path


def check_writable_folder(path: str | Path, what: str, alternative: str = "") -> Path:
    """Fail before any work (one-line FocusNFixError naming ``what``, e.g. ``--out``; its fix "choose a folder" ends
    with ``alternative``) on a folder that cannot be made: a part of the path is a file, the path is too long, or the
    nearest existing folder is not writable. Creates nothing."""
    out = Path(path)
    try:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    except OSError as e:
        raise FocusNFixError(f"{what}: {os_error_message(e, out)}") from None
    if blocker is not None:
        where = "is a file" if blocker == out else f"is under the file {short_path(blocker)}"
        raise FocusNFixError(f"{what} {short_path(out)} {where}; choose a folder{alternative}")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FocusNFixError(f"{what}: cannot write to {short_path(parent)}; choose a writable folder{alternative}")
    return out


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken file is a one-line FocusNFixError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FocusNFixError(f"cannot read {path}: {e}") from None


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """Parse a JSON-lines file (blank lines skipped); a broken line is a one-line FocusNFixError, except
    with ``torn_tail_ok`` a broken last line (an appended log such as metrics.jsonl, torn by a crash)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FocusNFixError(f"cannot read {path}: {e}") from None
    rows = []
    for k, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                if torn_tail_ok and k == len(lines):
                    break
                raise FocusNFixError(f"{path}:{k}: not valid JSON ({e})") from None
    return rows
