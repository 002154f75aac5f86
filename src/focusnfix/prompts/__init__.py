"""Prompt sets: a list in the config, a .txt / .csv / .tsv / .jsonl file (field ``prompt``), a packaged set, or a
Hugging Face dataset.

:mod:`.files` reads prompt files and checks prompts and seeds, :mod:`.sets` names the packaged sets, :mod:`.dataset`
reads ``datasets`` datasets; :func:`config_prompts` gives the training prompt list of a config.
"""
from __future__ import annotations

from ..config import MAX_PROMPT_CHARS, MAX_SEED
from ..errors import FocusNFixError
from .dataset import read_dataset
from .files import MAX_FILE_BYTES, SUFFIXES, PromptRecord, check_prompt_lengths, check_seeds, read_prompt_file
from .sets import SETS, list_prompt_sets, load_prompt_set

__all__ = [
    "MAX_FILE_BYTES", "MAX_PROMPT_CHARS", "MAX_SEED", "SUFFIXES", "PromptRecord", "read_prompt_file", "read_dataset",
    "check_seeds", "check_prompt_lengths", "SETS", "list_prompt_sets", "load_prompt_set", "EVALUATION_ONLY",
    "resolve_prompts", "config_prompts", "config_eval_prompts",
]

EVALUATION_ONLY = ("i2p", "ringabell")


def config_prompts(data) -> list[str]:
    """The training prompt list of a config's ``data`` section (:class:`~focusnfix.config.DataConfig`): its
    prompts, prompt file, prompt set and dataset together."""
    extra = []
    if data.dataset:
        extra = [r.prompt for r in read_dataset(data.dataset, data.dataset_split, data.dataset_prompt_column,
                                                data.dataset_category_column, data.dataset_seed_column)]
    return resolve_prompts(data.prompts, data.prompt_file, data.prompt_set, extra)


def config_eval_prompts(data) -> list[str]:
    """The held-out prompts of ``train.eval_every``: ``data.eval_prompts`` and ``data.eval_prompt_file`` (read like
    ``data.prompt_file``); [] when neither is set."""
    out = [p.strip() for p in data.eval_prompts if p and p.strip()]
    if data.eval_prompt_file:
        out += [r.prompt for r in read_prompt_file(data.eval_prompt_file)]
    check_prompt_lengths(out, "the eval prompt list")
    return out


def resolve_prompts(prompts: list[str], prompt_file: str | None = None, prompt_set: str | None = None,
                    extra: list[str] = ()) -> list[str]:
    """The training prompt list from the config (``extra``: those of ``data.dataset``, read by
    :func:`config_prompts`); one-line errors for empty or oversized prompts.

    The packaged I2P and Ring-A-Bell sets are refused: their license notes restrict them to
    evaluating safety, not training generators.
    """
    out = [p.strip() for p in prompts if p and p.strip()]
    if prompt_file:
        out += [r.prompt for r in read_prompt_file(prompt_file)]
    if prompt_set:
        if prompt_set.lower().split(":")[0] in EVALUATION_ONLY:
            raise FocusNFixError(f"prompt set {prompt_set!r} is for safety evaluation only "
                                 "(see focusnfix/data/SOURCES.md); "
                                 "train on other prompts, e.g. data.prompt_set=parti:People")
        out += [r.prompt for r in load_prompt_set(prompt_set)]
    out += list(extra)
    if not out:
        raise FocusNFixError("the prompt list is empty; set data.prompts, data.prompt_file, data.prompt_set or "
                             "data.dataset")
    check_prompt_lengths(out, "the prompt list")
    return out
