"""Packaged prompt sets (Parti, I2P subsets, Ring-A-Bell, DDPO animals) by name, or a user's file.

Sources, licenses and checksums: ``focusnfix/data/SOURCES.md``. Content warning: the I2P and
Ring-A-Bell sets hold sexual / violent prompts and are meant for safety evaluation only.
"""
from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config.names import import_path
from ..errors import FocusNFixError
from .dataset import read_dataset
from .files import SUFFIXES, PromptRecord, read_prompt_file


@dataclass(frozen=True)
class _Set:
    file: str
    description: str
    prompt_col: str | None = None  # None: a .txt file, one prompt per line
    category_col: str | None = None
    seed_col: str | None = None
    delimiter: str = ","
    category: str | None = None  # fixed category when the file has no column for it


_WARN = "CONTENT WARNING: disturbing prompts, for safety evaluation only"
SETS: dict[str, _Set] = {
    "parti": _Set("parti_prompts.tsv", "Parti Prompts (1632, 12 categories; filter with parti:<Category>), "
                  "google-research/parti, Apache-2.0", "Prompt", "Category", delimiter="\t"),
    "i2p:sexual": _Set("i2p_nudity_142_unlearndiffatk.csv", "I2P nudity subset (142, with I2P evaluation seeds), "
                       f"via UnlearnDiffAtk, MIT; {_WARN}", "prompt", "categories", "evaluation_seed"),
    "i2p:violence": _Set("i2p_violence_756_unlearndiffatk.csv", "I2P violence subset (756, with I2P evaluation seeds), "
                         f"via UnlearnDiffAtk, MIT; {_WARN}", "prompt", "categories", "evaluation_seed"),
    "ringabell": _Set("ringabell_violence_30.csv", "Ring-A-Bell violence prompts (30, with evaluation seeds), MIT; "
                      f"{_WARN}", "prompt", None, "evaluation_seed", category="violence"),
    "animals": _Set("simple_animals.txt", "DDPO / AlignProp simple animals (45 animal names), MIT"),
}


WORLD_SPLITS = ("all", "train", "heldout", "val", "test")
# Noise seeds that go with the world's validation and test captions (docs/world.md, "Validation and test").
WORLD_VAL_SEEDS = (1000, 1001)
WORLD_TEST_SEEDS = tuple(range(2000, 2008))
# The world's grammar lives in a higher layer (focusnfix.world), reached by name when a world set is loaded.
WORLD_GRAMMAR = {"attributes": "focusnfix.world.data:ATTRIBUTES", "caption": "focusnfix.world.data:caption"}


def list_prompt_sets() -> dict[str, str]:
    """Packaged set name -> one-line description with size, source, license and content warning."""
    return {**{name: s.description for name, s in SETS.items()},
            "world": ("the built-in world's grammar (216 captions; world:train 162 / world:heldout 54, split into "
                       "world:val 27 and world:test 27), category = shape")}


def world_prompts(split: str = "all") -> list[PromptRecord]:
    """Every caption of the world's grammar; ``train`` / ``heldout`` is a fixed 3:1 split (every 4th
    caption held out), so fine-tuning and evaluation prompts never overlap. ``heldout`` is itself split
    in two disjoint halves: ``val`` (every 8th caption, for choosing settings) and ``test`` (the other
    held-out half, for reporting them)."""
    attributes = import_path(WORLD_GRAMMAR["attributes"], "world grammar")
    caption = import_path(WORLD_GRAMMAR["caption"], "world grammar")
    keys = list(attributes)
    records = []
    for i, values in enumerate(itertools.product(*attributes.values())):
        attrs = dict(zip(keys, values))
        if split == "all" or (split != "train") == (i % 4 == 0) and (
                split in ("train", "heldout") or (split == "val") == (i % 8 == 0)):
            records.append(PromptRecord(caption(attrs), attrs.get("shape")))
    return records


def load_prompt_set(spec: str) -> list[PromptRecord]:
    """Prompts from a packaged set name (see :func:`list_prompt_sets`; ``parti:<Category>`` filters Parti
    by category, case-insensitive), from a path to a ``.txt`` / ``.csv`` / ``.tsv`` / ``.jsonl`` file, or from a
    Hugging Face dataset folder written by ``save_to_disk`` (split ``train``, columns ``prompt``, ``category`` and
    ``seed``)."""
    name, _, arg = spec.partition(":")
    if name.lower() == "world":
        if (arg or "all") not in WORLD_SPLITS:
            raise FocusNFixError(f"unknown world split {arg!r}; valid: {', '.join(WORLD_SPLITS)}")
        return world_prompts(arg or "all")
    key = spec.lower() if spec.lower() in SETS else name.lower()
    if key not in SETS:
        if Path(spec).is_dir():
            return read_dataset(spec, key="--prompts")
        if Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
            return read_prompt_file(spec)
        raise FocusNFixError(f"unknown prompt set {spec!r}; valid names: {', '.join(SETS)}, parti:<Category>, "
                             f"a {'/'.join(SUFFIXES)} file or a saved Hugging Face dataset folder")
    records = _read(SETS[key])
    if key == "parti" and arg:
        categories = sorted({r.category for r in records if r.category})
        wanted = {c.lower(): c for c in categories}.get(arg.strip().lower())
        if wanted is None:
            raise FocusNFixError(f"unknown Parti category {arg!r}; valid categories: {', '.join(categories)}")
        records = [r for r in records if r.category == wanted]
    elif arg and key != spec.lower():
        raise FocusNFixError(f"prompt set {name!r} takes no ':{arg}' filter; only parti:<Category> does")
    return records


def _read(s: _Set) -> list[PromptRecord]:
    text = resources.files("focusnfix").joinpath("data", "prompts", s.file).read_text(encoding="utf-8")
    if s.prompt_col is None:
        return [PromptRecord(line.strip(), s.category) for line in text.splitlines() if line.strip()]
    records = []
    for row in csv.DictReader(io.StringIO(text, newline=""), delimiter=s.delimiter):
        prompt = (row[s.prompt_col] or "").strip()
        if prompt:
            category = row[s.category_col] if s.category_col else s.category
            seed = int(row[s.seed_col]) if s.seed_col else None
            records.append(PromptRecord(prompt, category, seed))
    return records
