"""Prompt sets: a list in the config, or a .txt / .csv / .tsv file (column ``prompt``)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from .errors import FocusNFixError

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PROMPT_CHARS = 4000


@dataclass
class PromptRecord:
    prompt: str
    category: str | None = None
    seed: int | None = None


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Read prompts. ``.txt``: one per line (blank lines and ``#`` comments skipped); ``.csv``/``.tsv``:
    a header with ``prompt`` and optional ``category`` / ``seed`` columns."""
    path = Path(path)
    if not path.is_file():
        raise FocusNFixError(f"prompt file {str(path)!r} not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FocusNFixError(f"prompt file {str(path)!r} is larger than {MAX_FILE_BYTES // 2**20} MB; split it")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FocusNFixError(f"prompt file {str(path)!r} is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        records = _read_table(text, "\t" if path.suffix.lower() == ".tsv" else ",", path)
    else:
        records = [PromptRecord(line.strip()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not records:
        raise FocusNFixError(f"prompt file {str(path)!r} holds no prompts")
    return records


def _read_table(text: str, delimiter: str, path: Path) -> list[PromptRecord]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = {f.lower().strip(): f for f in (reader.fieldnames or [])}
    key = fields.get("prompt") or fields.get("prompts") or fields.get("text")
    if key is None:
        raise FocusNFixError(f"prompt file {str(path)!r} needs a `prompt` column; found columns {list(fields)}")
    records = []
    for row in reader:
        prompt = (row.get(key) or "").strip()
        if not prompt:
            continue
        seed = (row.get(fields["seed"]) or "").strip() if "seed" in fields else ""
        cat = row.get(fields["category"]) if "category" in fields else None
        if seed and not seed.lstrip("-").isdigit():
            raise FocusNFixError(f"prompt file {str(path)!r}, line {reader.line_num}: seed {seed!r} is not an integer")
        records.append(PromptRecord(prompt, cat, int(seed) if seed else None))
    return records


EVALUATION_ONLY = ("i2p", "ringabell")


def resolve_prompts(prompts: list[str], prompt_file: str | None = None, prompt_set: str | None = None) -> list[str]:
    """The training prompt list from the config; one-line errors for empty or oversized prompts.

    The packaged I2P and Ring-A-Bell sets are refused: their license notes restrict them to
    evaluating safety, not training generators.
    """
    out = [p.strip() for p in prompts if p and p.strip()]
    if prompt_file:
        out += [r.prompt for r in read_prompt_file(prompt_file)]
    if prompt_set:
        if prompt_set.lower().split(":")[0] in EVALUATION_ONLY:
            raise FocusNFixError(f"prompt set {prompt_set!r} is for safety evaluation only (see focusnfix/data/SOURCES.md); "
                                 "train on other prompts, e.g. data.prompt_set=parti:People")
        from .prompt_sets import load_prompt_set

        out += [r.prompt for r in load_prompt_set(prompt_set)]
    if not out:
        raise FocusNFixError("the prompt list is empty; set data.prompts or data.prompt_file")
    long = [p for p in out if len(p) > MAX_PROMPT_CHARS]
    if long:
        raise FocusNFixError(f"a prompt is {len(long[0])} characters long (max {MAX_PROMPT_CHARS}); shorten it")
    return out
