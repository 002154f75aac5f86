"""Prompt sets: a list in the config, or a .txt / .csv / .tsv file (column ``prompt``)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import FocusNFixError, short, short_path

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63  # noise seeds go to torch.Generator.manual_seed (64 bits)


@dataclass
class PromptRecord:
    prompt: str
    category: str | None = None
    seed: int | None = None


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Read prompts. ``.txt``: one per line (blank lines and ``#`` comments skipped); ``.csv``/``.tsv``:
    a header with ``prompt`` and optional ``category`` / ``seed`` columns."""
    path = Path(path)
    name = short_path(path)
    if not path.is_file():
        raise FocusNFixError(f"prompt file {name} not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FocusNFixError(f"prompt file {name} is larger than {MAX_FILE_BYTES // 2**20} MB; split it")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FocusNFixError(f"prompt file {name} is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        try:
            records = _read_table(text, "\t" if path.suffix.lower() == ".tsv" else ",", path)
        except csv.Error as e:  # e.g. a field beyond csv's size limit, a NUL byte
            raise FocusNFixError(f"prompt file {name} is not a valid {path.suffix[1:].upper()} table: {e}") from None
    else:
        records = [PromptRecord(line.strip()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
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
            raise FocusNFixError(f"{where}: prompt {i + 1} is {len(prompt)} characters long (max {MAX_PROMPT_CHARS}); shorten it")
        if "\x00" in prompt:
            raise FocusNFixError(f"{where}: prompt {i + 1} holds a NUL character; remove it")


def _read_table(text: str, delimiter: str, path: Path) -> list[PromptRecord]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = {f.lower().strip(): f for f in (reader.fieldnames or [])}
    key = fields.get("prompt") or fields.get("prompts") or fields.get("text")
    if key is None:
        raise FocusNFixError(f"prompt file {short_path(path)} needs a `prompt` column; found columns {short(list(fields))}")
    records = []
    for row in reader:
        prompt = (row.get(key) or "").strip()
        if not prompt:
            continue
        seed = (row.get(fields["seed"]) or "").strip() if "seed" in fields else ""
        cat = row.get(fields["category"]) if "category" in fields else None
        if seed and not (seed.isdigit() and int(seed) < MAX_SEED):
            raise FocusNFixError(f"prompt file {short_path(path)}, line {reader.line_num}: seed {short(seed)} is not an integer "
                                 "in [0, 2**63)")
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
        from .sets import load_prompt_set

        out += [r.prompt for r in load_prompt_set(prompt_set)]
    if not out:
        raise FocusNFixError("the prompt list is empty; set data.prompts or data.prompt_file")
    check_prompt_lengths(out, "the prompt list")
    return out
