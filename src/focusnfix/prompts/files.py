"""Prompt files: a .txt file (one prompt per line), a .csv / .tsv table (column ``prompt``) or a .jsonl file (one
JSON object per line with a ``prompt`` field, as Flow-GRPO's prompt files), read into :class:`PromptRecord` s, and
the checks every prompt and noise seed passes (lengths, NUL bytes, seed range)."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import MAX_PROMPT_CHARS, MAX_SEED
from ..errors import FocusNFixError, short, short_path

MAX_FILE_BYTES = 50 * 1024 * 1024
SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")  # the prompt files read_prompt_file reads


@dataclass
class PromptRecord:
    prompt: str
    category: str | None = None
    seed: int | None = None


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Read prompts. ``.txt``: one per line (blank lines and ``#`` comments skipped); ``.csv``/``.tsv``:
    a header with ``prompt`` and optional ``category`` / ``seed`` columns; ``.jsonl``: one JSON object per line
    with ``prompt`` and optional ``category`` / ``seed`` (blank lines skipped). Another extension is an error."""
    path = Path(path)
    name = short_path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise FocusNFixError(f"prompt file {name} is a folder; a Hugging Face dataset saved with save_to_disk goes "
                             "in data.dataset")
    if suffix not in SUFFIXES:
        what = f"an unknown extension {short(suffix)}" if suffix else "no extension"
        raise FocusNFixError(f"prompt file {name} has {what}; supported: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FocusNFixError(f"prompt file {name} not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FocusNFixError(f"prompt file {name} is larger than {MAX_FILE_BYTES // 2**20} MB; split it")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FocusNFixError(f"prompt file {name} is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    if suffix in (".csv", ".tsv"):
        try:
            records = _read_table(text, "\t" if suffix == ".tsv" else ",", path)
        except csv.Error as e:  # e.g. a field beyond csv's size limit, a NUL byte
            raise FocusNFixError(f"prompt file {name} is not a valid {suffix[1:].upper()} table: {e}") from None
    elif suffix == ".jsonl":
        records = _read_jsonl(text, name)
    else:
        records = [PromptRecord(line.strip()) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    if not records:
        raise FocusNFixError(f"prompt file {name} holds no prompts")
    check_prompt_lengths([r.prompt for r in records], f"prompt file {name}")
    return records


def check_seeds(seeds, flag: str = "--seeds") -> None:
    """Noise seeds are integers in [0, 2**63) (torch generators take 64 bits)."""
    bad = next((s for s in seeds or () if not 0 <= s < MAX_SEED), None)
    if bad is not None:
        raise FocusNFixError(f"{flag} must be integers in [0, 2**63), got {short(bad)}")


def check_prompt_lengths(prompts: list[str], where: str) -> None:
    """One line if a prompt is longer than MAX_PROMPT_CHARS (the same limit for train, sample and eval)."""
    for i, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise FocusNFixError(f"{where}: prompt {i + 1} is {len(prompt)} characters long "
                                 f"(max {MAX_PROMPT_CHARS}); shorten it")
        if "\x00" in prompt:
            raise FocusNFixError(f"{where}: prompt {i + 1} holds a NUL character; remove it")


def _read_table(text: str, delimiter: str, path: Path) -> list[PromptRecord]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = {f.lower().strip(): f for f in (reader.fieldnames or [])}
    key = fields.get("prompt") or fields.get("prompts") or fields.get("text")
    if key is None:
        raise FocusNFixError(f"prompt file {short_path(path)} needs a `prompt` column; "
                             f"found columns {short(list(fields))}")
    records = []
    for row in reader:
        prompt = (row.get(key) or "").strip()
        if not prompt:
            continue
        seed = (row.get(fields["seed"]) or "").strip() if "seed" in fields else ""
        cat = row.get(fields["category"]) if "category" in fields else None
        if seed and not (seed.isdigit() and int(seed) < MAX_SEED):
            raise FocusNFixError(f"prompt file {short_path(path)}, line {reader.line_num}: seed {short(seed)} "
                                 "is not an integer in [0, 2**63)")
        records.append(PromptRecord(prompt, cat, int(seed) if seed else None))
    return records


def _read_jsonl(text: str, name: str) -> list[PromptRecord]:
    """One JSON object a line: ``{"prompt": "...", "category": "...", "seed": 3}`` (category and seed optional)."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"prompt file {name}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or an integer beyond Python's digit limit
            detail = f"{e.msg}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)[:80]
            raise FocusNFixError(f"{where} is not valid JSON ({detail}); write one object a line, e.g. "
                                 '{"prompt": "a cat", "seed": 3}') from None
        except RecursionError:
            raise FocusNFixError(f"{where} is nested too deeply to be a prompt") from None
        if not isinstance(row, dict) or "prompt" not in row:
            found = f"keys {short(sorted(row))}" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            raise FocusNFixError(f"{where} has no `prompt` field (found {found}); "
                                 'each line is an object such as {"prompt": "a cat"}')
        prompt, category, seed = row["prompt"], row.get("category"), row.get("seed")
        if not isinstance(prompt, str):
            raise FocusNFixError(f"{where}: `prompt` must be a string, got {short(prompt)}")
        if category is not None and not isinstance(category, (str, int, float)):
            raise FocusNFixError(f"{where}: `category` must be a string, got {short(category)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED):
            raise FocusNFixError(f"{where}: seed {short(seed)} is not an integer in [0, 2**63)")
        if prompt.strip():
            records.append(PromptRecord(prompt.strip(), None if category is None else str(category), seed))
    return records
