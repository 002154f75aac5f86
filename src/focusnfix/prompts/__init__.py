"""Prompt sets: a list in the config, or a .txt / .csv / .tsv file (column ``prompt``), or a packaged set.

:mod:`.files` reads prompt files and checks prompts and seeds, :mod:`.sets` names the packaged sets;
:func:`resolve_prompts` gives the training prompt list of a config.
"""
from __future__ import annotations

from ..config import MAX_PROMPT_CHARS, MAX_SEED
from ..errors import FocusNFixError
from .files import MAX_FILE_BYTES, PromptRecord, check_prompt_lengths, check_seeds, read_prompt_file
from .sets import SETS, list_prompt_sets, load_prompt_set

__all__ = [
    "MAX_FILE_BYTES", "MAX_PROMPT_CHARS", "MAX_SEED", "PromptRecord", "read_prompt_file", "check_seeds",
    "check_prompt_lengths", "SETS", "list_prompt_sets", "load_prompt_set", "EVALUATION_ONLY", "resolve_prompts",
]

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
            raise FocusNFixError(f"prompt set {prompt_set!r} is for safety evaluation only "
                                 "(see focusnfix/data/SOURCES.md); "
                                 "train on other prompts, e.g. data.prompt_set=parti:People")
        out += [r.prompt for r in load_prompt_set(prompt_set)]
    if not out:
        raise FocusNFixError("the prompt list is empty; set data.prompts or data.prompt_file")
    check_prompt_lengths(out, "the prompt list")
    return out
