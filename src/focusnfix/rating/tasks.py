"""Rating tasks from an eval folder, read through the eval folder reader (:func:`evaluation.folder.load_eval`).

One task per (sample, method) with method != the reference: the reference (base) image and the method's
image of the same (prompt, seed). Task ids are opaque (a hash of the sample and method), so neither a
page nor a URL names the method. Only image files that resolve inside the eval folder are used:
a samples.jsonl entry pointing outside it (``../``, an absolute path, a symlink out) is left out.
``--only-problems`` keeps the samples with a problem and ``--per-rater`` gives each rater a share of the pairs
(:mod:`.design`).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FocusNFixError
from ..evaluation.folder import load_eval
from ..evaluation.stats import sample_key
from .design import ProblemFilter, assigned, cyclic_order, problem_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Task:
    """One pair to rate. Paths are resolved and inside the eval folder (``heatmap``/``mask`` may be None)."""
    id: str
    sample: Any
    method: str
    prompt: str
    seed: Any
    category: str | None
    reference_image: Path
    method_image: Path
    heatmap: Path | None = None
    mask: Path | None = None


@dataclass
class Study:
    """The tasks of an eval folder, in a fixed order (by sample, then method)."""
    folder: Path
    title: str
    reference: str
    methods: list[str]
    tasks: dict[str, Task] = field(default_factory=dict)
    left_out: int = 0  # (sample, method) pairs without a usable image
    problem: str | None = None  # what the problem looks like, shown to raters
    per_rater: int | None = None  # pairs per rater (None: every pair)
    only_problems: ProblemFilter | None = None
    without_problem: int = 0  # samples left out by only_problems
    _cycle: list[str] = field(default_factory=list, repr=False)

    @property
    def samples(self) -> int:
        return len({json.dumps(t.sample) for t in self.tasks.values()})

    @property
    def per_rater_total(self) -> int:
        """How many pairs each rater rates."""
        return len(self.tasks) if self.per_rater is None else min(self.per_rater, len(self.tasks))

    def assigned(self, index: int) -> list[str]:
        """The task ids of the rater created ``index``-th (0-based), in the design's order (:mod:`.design`)."""
        if self.per_rater is None:
            return list(self.tasks)
        if len(self._cycle) != len(self.tasks):  # computed once, after the tasks are loaded
            self._cycle = cyclic_order([(tid, json.dumps(t.sample)) for tid, t in self.tasks.items()])
        return assigned(self._cycle, index, self.per_rater)

    def order(self, seed: int, index: int = 0) -> list[str]:
        """The rater's task ids once each (every task, or their share with ``per_rater``), in an order fixed by
        the rater's seed."""
        ids = self.assigned(index)
        random.Random(seed).shuffle(ids)
        return ids


def task_id(sample: Any, method: str) -> str:
    """A stable, opaque id for (sample, method)."""
    return hashlib.sha256(json.dumps([sample, method]).encode()).hexdigest()[:16]


def base_side(seed: int, task: str) -> str:
    """Where the base image is shown for a rater's task: "left" or "right", fixed by (seed, task)."""
    return "left" if random.Random(f"{seed}:{task}").random() < 0.5 else "right"


def inside(root: Path, rel: Any) -> Path | None:
    """``root / rel`` resolved, if it is a regular image file (by suffix) inside ``root``; else None. Used when the
    study is loaded and again when the app serves a file (a file may be swapped for a link after the start)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return None
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return None
    return path


def load_study(folder: str | Path, methods: list[str] | None = None, only_problems: ProblemFilter | None = None,
               per_rater: int | None = None, problem: str | None = None) -> Study:
    """The rating tasks of an eval folder; ``methods`` restricts the rated methods, ``only_problems`` the samples;
    ``per_rater`` pairs per rater; ``problem`` (``--problem``) the text describing the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FocusNFixError(f"eval folder {str(folder)!r} does not exist or is not a folder")
    if not (folder / "eval.json").is_file():
        raise FocusNFixError(f"{str(folder)!r} is not an eval folder (no eval.json); write one with `focusnfix eval`")
    meta, rows = load_eval(folder)
    root = folder.resolve()
    order = [str(m) for m in meta.get("methods") or []]
    order += sorted({str(r["method"]) for r in rows if r.get("method") is not None} - set(order))
    reference = str(meta.get("reference") or "base")
    rated = [m for m in order if m != reference]
    if methods:
        unknown = [m for m in methods if m not in rated]
        if unknown:
            raise FocusNFixError(f"--methods {' '.join(unknown)}: not in the eval folder; "
                                 f"methods to rate: {', '.join(rated) or 'none'}")
        rated = [m for m in rated if m in methods]
    by_sample: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("method") is not None:
            by_sample.setdefault(json.dumps(sample_key(r)), {})[str(r["method"])] = r
    study = Study(folder, str(meta.get("title") or root.name), reference, rated,
                  problem=problem_text(problem, meta), per_rater=per_rater, only_problems=only_problems)
    if only_problems is not None:
        only_problems.check(rows)

    def numbered_first(key: str) -> tuple:
        sample = json.loads(key)
        return (0, sample, "") if isinstance(sample, int) else (1, 0, key)

    for key in sorted(by_sample, key=numbered_first):
        by = by_sample[key]
        ref = by.get(reference)
        if only_problems is not None and not (ref and only_problems(ref)):
            study.without_problem += 1
            continue
        ref_image = inside(root, ref.get("image")) if ref else None
        for method in rated:
            row = by.get(method)
            image = inside(root, row.get("image")) if row else None
            if ref_image is None or image is None:
                study.left_out += 1
                continue
            sample = json.loads(key)
            tid = task_id(sample, method)
            study.tasks[tid] = Task(tid, sample, method, str(ref.get("prompt", "")), ref.get("seed"),
                                    ref.get("category"),
                                    ref_image, image, inside(root, ref.get("heatmap")), inside(root, ref.get("mask")))
    if not study.tasks and study.without_problem:
        raise FocusNFixError(f"no pairs to rate in {folder}: --only-problems ({only_problems}) leaves none of its "
                             f"{len(by_sample)} samples")
    if not study.tasks:
        raise FocusNFixError(f"no pairs to rate in {folder}: it needs images of the reference method {reference!r} "
                             "and of "
                             f"at least one other method (methods: {', '.join(order) or 'none'})")
    return study
