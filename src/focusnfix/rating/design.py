"""Which pairs a rating study asks about, and who rates which.

- ``--only-problems``: only the samples whose base image has a problem. Without a value: the base image's mask
  M(Î0) is non-empty, read from samples.jsonl (the metrics inside the mask, ``inside_mae`` ..., are null exactly
  when M is empty). With ``METRIC<VALUE`` (or ``>``, ``<=``, ``>=``): the reference (base) row's METRIC in
  samples.jsonl satisfies the comparison, e.g. ``defect_artifact>0.5`` or ``judge_x<0.5`` for a judge score
  where low means a problem; a missing value does not count as flagged.
- ``--per-rater N``: a balanced incomplete design. The pairs are put in one fixed cyclic order (samples shuffled
  with a seed fixed by the study, a sample's methods next to each other, so one rater mostly sees every method
  of a sample and the between-method tests have pairs); the rater created j-th (j = 0, 1, ...) gets the N pairs
  at positions jN ... jN + N - 1 modulo t (t pairs in all). After R raters every pair has been given to
  k = floor(R N / t) or k + 1 of them (the coverage of consecutive blocks around a cycle), so k raters per pair
  need R = ceil(k t / N) raters.
- the problem text shown to raters: ``--problem TEXT``, else eval.json's ``problem``, else a description of the
  eval's reward (:data:`PROBLEMS`), else none.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import random
import re
from dataclasses import dataclass
from typing import Any

from ..errors import FocusNFixError, short
from ..evaluation.stats import finite

INSIDE = ("inside_mae", "inside_mse", "inside_psnr", "inside_ssim")  # null exactly when M(Î0) is empty
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FILTER = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_.-]{{0,63}})\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")
MAX_PROBLEM = 300
_ARTIFACT = "a broken render: a small patch of the object replaced by a black-and-white checkerboard"
_UNWANTED = "an unwanted element: a magenta blob on one side of the object"
_NUDITY = "nudity or sexually explicit content"
PROBLEMS = {"world-artifact": _ARTIFACT, "world-artifact-boxes": _ARTIFACT, "world-safety": _UNWANTED,
            "world-safety-decision": _UNWANTED, "world-unwanted-boxes": _UNWANTED, "nsfw": _NUDITY,
            "nudenet": _NUDITY, "nudenet-boxes": _NUDITY}
"""What the problem looks like, per training reward, for raters (used when neither --problem nor eval.json says)."""


@dataclass(frozen=True)
class ProblemFilter:
    """``metric`` None: the base mask is non-empty; else the base row's ``metric`` compared with ``value``."""
    metric: str | None = None
    op: str = ""
    value: float = 0.0

    def __str__(self) -> str:
        return "base mask non-empty" if self.metric is None else f"{self.metric}{self.op}{self.value:g}"

    def check(self, rows: list[dict[str, Any]]) -> None:
        """Refuse a filter that samples.jsonl cannot answer (one line, exit 2)."""
        keys = INSIDE if self.metric is None else (self.metric,)
        if any(k in r or f"{k}_inf" in r for r in rows for k in keys):
            return
        if self.metric is None:
            raise FocusNFixError("--only-problems: samples.jsonl has no metric inside the mask (inside_mae ...) to "
                                 "tell an empty mask; give a judge metric instead, e.g. --only-problems 'defect_x>0.5'")
        known = sorted({k for r in rows for k, v in r.items() if finite(v) and k not in ("i", "seed")})
        raise FocusNFixError(f"--only-problems {self}: no metric {self.metric!r} in samples.jsonl; "
                             f"metrics: {', '.join(known) or 'none'}")

    def __call__(self, ref: dict[str, Any]) -> bool:
        """Whether the sample whose reference row is ``ref`` has a problem."""
        if self.metric is None:
            return any(finite(ref.get(k)) or ref.get(f"{k}_inf") for k in INSIDE)
        value = ref.get(self.metric)
        return finite(value) and _OPS[self.op](float(value), self.value)


def parse_filter(text: str | None) -> ProblemFilter | None:
    """``--only-problems``'s value: None (not given), "mask" (the flag alone) or ``METRIC<VALUE``."""
    if text is None:
        return None
    if text == "mask":
        return ProblemFilter()
    m = _FILTER.match(text)
    if not m or not math.isfinite(float(m.group(3))):
        raise FocusNFixError(f"--only-problems {short(text)}: expected nothing (base mask non-empty) or METRIC<VALUE "
                             "(also >, <=, >=), e.g. defect_artifact>0.5")
    return ProblemFilter(m.group(1), m.group(2), float(m.group(3)))


def check_per_rater(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise FocusNFixError(f"--per-rater must be at least 1, got {n}")
    return n


def problem_text(given: str | None, meta: dict[str, Any]) -> str | None:
    """The problem shown to raters: ``given`` (``--problem``), eval.json's ``problem``, the reward's description."""
    if given is not None:
        text = " ".join(given.split())
        if not text or len(text) > MAX_PROBLEM:
            raise FocusNFixError(f"--problem needs 1-{MAX_PROBLEM} characters, got {len(text)}")
        return text
    text = meta.get("problem")
    if isinstance(text, str) and text.strip():
        return " ".join(text.split())[:MAX_PROBLEM]
    return PROBLEMS.get(str(meta.get("reward") or ""))


def cyclic_order(task_samples: list[tuple[str, str]]) -> list[str]:
    """Task ids in the design's fixed order: samples shuffled with a seed fixed by the task ids, each sample's
    tasks together in their given order. ``task_samples``: (task id, sample key) in study order."""
    samples: dict[str, list[str]] = {}
    for tid, sample in task_samples:
        samples.setdefault(sample, []).append(tid)
    keys = sorted(samples)  # independent of the order the samples come in
    seed = int(hashlib.sha256(json.dumps(sorted(t for t, _ in task_samples)).encode()).hexdigest()[:12], 16)
    random.Random(seed).shuffle(keys)
    return [tid for k in keys for tid in samples[k]]


def assigned(cycle: list[str], index: int, per_rater: int | None) -> list[str]:
    """The pairs of the rater created ``index``-th (0-based): every pair without ``per_rater``; else the
    ``per_rater`` pairs at positions index·N ... index·N + N - 1 of ``cycle`` (modulo its length)."""
    t = len(cycle)
    if per_rater is None or per_rater >= t:
        return list(cycle)
    start = (index * per_rater) % t
    return [cycle[(start + j) % t] for j in range(per_rater)]


def coverage(t: int, per_rater: int | None, raters: int) -> int:
    """k: the fewest raters any pair has been given to after ``raters`` raters (floor(R N / t))."""
    n = t if per_rater is None else min(per_rater, t)
    return raters * n // t if t else 0


def raters_needed(t: int, per_rater: int, k: int) -> int:
    """R = ceil(k t / N): the raters that give every pair to at least ``k`` of them."""
    return -(-k * t // min(per_rater, t))


def design_json(only_problems: ProblemFilter | None, per_rater: int | None) -> str:
    """The design recorded in the ratings database ("{}" for every pair to every rater)."""
    d = {"only_problems": None if only_problems is None else str(only_problems), "per_rater": per_rater}
    return json.dumps({k: v for k, v in d.items() if v is not None}, sort_keys=True)
