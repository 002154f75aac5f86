"""Reading a finished eval folder (written by ``focusnfix eval``): ``eval.json`` and ``samples.jsonl``.

The report (:mod:`focusnfix.report.eval_folder`) and the rating study (:mod:`focusnfix.rating.tasks`)
both read an eval folder through :func:`load_eval`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FocusNFixError
from ..runs.files import read_json, read_jsonl


def load_eval(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """eval.json and samples.jsonl, checked enough to render."""
    meta = read_json(folder / "eval.json")
    if not isinstance(meta, dict):
        raise FocusNFixError(f"{folder / 'eval.json'} must hold a JSON object")
    if not (folder / "samples.jsonl").is_file():
        raise FocusNFixError(f"eval folder {folder} has eval.json but no samples.jsonl")
    rows = [r for r in read_jsonl(folder / "samples.jsonl") if isinstance(r, dict)]
    return meta, rows
