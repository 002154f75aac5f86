"""Prompts from a Hugging Face ``datasets`` dataset (``data.dataset``): a folder written by ``save_to_disk`` or a
Hub id (read with ``load_dataset``, which needs the network the first time). ``datasets`` is the optional extra
``focusnfix[datasets]``, imported only when a dataset is read.

The prompts come from one split and one text column; a category and a noise-seed column are optional. The limits
of prompt files hold: at most 50 MB of prompt text, 4000 characters per prompt, seeds in [0, 2**63).
"""
from __future__ import annotations

from pathlib import Path

from ..config import MAX_SEED
from ..errors import FocusNFixError, RunFailed, short, short_path
from .files import MAX_FILE_BYTES, PromptRecord, check_prompt_lengths

INSTALL = "pip install 'focusnfix[datasets]'"


def read_dataset(spec: str, split: str = "train", prompt_column: str = "prompt", category_column: str | None = None,
                 seed_column: str | None = None, key: str = "data.dataset") -> list[PromptRecord]:
    """The prompts of split ``split`` of dataset ``spec`` (a ``save_to_disk`` folder or a Hub id), from column
    ``prompt_column``; ``category_column`` / ``seed_column`` unset: the columns ``category`` / ``seed`` when the
    dataset has them. Rows whose prompt is empty or null are skipped. ``key`` names the setting in messages
    (``--prompts`` for eval and sample, which read a saved folder with these defaults)."""
    name = f"{key} {short_path(spec)}"
    table = _load(spec, split, name)
    columns = list(table.column_names)
    if prompt_column not in columns:
        raise FocusNFixError(f"{name} has no column {short(prompt_column)} (columns: {_names(columns)}); "
                             "set data.dataset_prompt_column")
    category_column = _optional_column(columns, category_column, "category", name)
    seed_column = _optional_column(columns, seed_column, "seed", name)
    prompts = list(table[prompt_column])
    categories = list(table[category_column]) if category_column else [None] * len(prompts)
    seeds = list(table[seed_column]) if seed_column else [None] * len(prompts)
    records, total = [], 0
    for row, (prompt, category, seed) in enumerate(zip(prompts, categories, seeds)):
        if prompt is None:
            continue
        if not isinstance(prompt, str):
            raise FocusNFixError(f"{name}, row {row}: column {short(prompt_column)} holds {short(prompt)}, not text")
        total += len(prompt)
        if total > MAX_FILE_BYTES:
            raise FocusNFixError(f"{name} holds more than {MAX_FILE_BYTES // 2**20} MB of prompt text; take a part "
                                 "of it (data.dataset_split=train[:10000] for a Hub id, or save a smaller one)")
        if prompt.strip():
            records.append(PromptRecord(prompt.strip(), None if category is None else str(category),
                                        _seed(seed, row, name)))
    if not records:
        raise FocusNFixError(f"{name} holds no prompts (column {short(prompt_column)} is empty)")
    check_prompt_lengths([r.prompt for r in records], name)
    return records


def _load(spec: str, split: str, name: str):
    """The split as a ``datasets.Dataset``: from a ``save_to_disk`` folder, else from the Hub."""
    try:
        import datasets
    except ImportError:
        raise FocusNFixError(f"{name} needs the Hugging Face datasets package: {INSTALL}") from None
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FocusNFixError(f"{name} is a file; a dataset is a folder written by save_to_disk or a Hub id "
                                 "(a .txt, .csv, .tsv or .jsonl file goes in data.prompt_file)")
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, KeyError, TypeError) as e:  # not a dataset folder, or a damaged one
            raise FocusNFixError(f"{name} is not a dataset written by save_to_disk: {e}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise FocusNFixError(f"{name} has no split {short(split)}; its splits: {_names(list(loaded))}")
            loaded = loaded[split]
        return loaded
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:  # a path, not owner/name
        raise FocusNFixError(f"{name} not found (a folder written by save_to_disk, or a Hub id owner/name)")
    try:
        return datasets.load_dataset(spec, split=split)
    except (ConnectionError, TimeoutError) as e:
        raise RunFailed(f"{name} is not a folder here, and the Hub could not be reached to load it as a dataset id "
                        f"({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 (an unknown id, a split that is not there, offline without a cache)
        raise FocusNFixError(f"{name} is not a folder here and could not be loaded from the Hub as a dataset id "
                             f"(split {short(split)}): {type(e).__name__}: {e}") from None


def _optional_column(columns: list[str], given: str | None, default: str, name: str) -> str | None:
    """The column of an optional field: the one given (which must exist), else ``default`` when present."""
    if given is None:
        return default if default in columns else None
    if given not in columns:
        raise FocusNFixError(f"{name} has no column {short(given)} (columns: {_names(columns)}); "
                             f"fix or unset data.dataset_{default}_column")
    return given


def _seed(value, row: int, name: str) -> int | None:
    """A row's noise seed: None, or an integer in [0, 2**63) (a float that is a whole number counts)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEED:
        raise FocusNFixError(f"{name}, row {row}: seed {short(value)} is not an integer in [0, 2**63)")
    return value


def _names(names: list[str], most: int = 12) -> str:
    """``a, b, c`` (the first ``most`` names, then ``...``), each shortened."""
    return ", ".join([short(str(n)) for n in names[:most]] + ["..."] * (len(names) > most))
