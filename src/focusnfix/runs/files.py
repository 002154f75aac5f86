"""Readers of a run's or an eval folder's JSON files: a broken file is a one-line FocusNFixError."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FocusNFixError


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
