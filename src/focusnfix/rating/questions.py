"""The questions a rater answers for every (base image, method image) pair, as one data structure.

A study changes its questions by passing another list (``focusnfix rate --questions FILE.json``, the
same fields as :class:`Question` and :class:`Option`). Texts may name the two image positions with
``{new}`` (where the method's image is shown) and ``{ref}`` (where the base image is), which become
"left" / "right" for each task, since the sides are randomized.

A *sided* question's options ``left`` and ``right`` name image positions: they are stored as clicked
and analysed as ``method`` / ``reference`` (the side the base image was shown on is stored with each
answer). Scores order the options for paired tests (higher = better for the method).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import FocusNFixError, short

SIDES = ("left", "right")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VALUE = re.compile(r"^[a-z0-9_-]{1,32}$")


@dataclass(frozen=True)
class Option:
    """One answer: stored ``value``, shown ``label``, ordinal ``score`` (higher = better for the method)."""
    value: str
    label: str
    score: float | None = None


@dataclass(frozen=True)
class Question:
    """One question: ``key`` (its column), ``text`` (``{new}`` / ``{ref}`` become left / right), options
    (answered with the keys 1..9 in this order), ``sided`` (options left / right are image positions)."""
    key: str
    text: str
    options: tuple[Option, ...]
    sided: bool = False

    def render(self, base_side: str) -> str:
        """The text for a task whose base image is on ``base_side``."""
        new = "right" if base_side == "left" else "left"
        return self.text.replace("{new}", new).replace("{ref}", base_side)

    def neutral(self) -> str:
        """The text for summaries: ``{new}`` / ``{ref}`` become "new" / "original"."""
        return self.text.replace("{new}", "new").replace("{ref}", "original")

    def values(self) -> tuple[str, ...]:
        return tuple(o.value for o in self.options)

    def normalized(self, raw: str, base_side: str) -> str:
        """The analysed value: for a sided question, left / right become method / reference."""
        if self.sided and raw in SIDES:
            return "reference" if raw == base_side else "method"
        return raw

    def analysed_options(self, reference: str = "base") -> list[Option]:
        """The options as analysed (sided: the method's image, the reference's image, then the rest)."""
        if not self.sided:
            return list(self.options)
        rest = [o for o in self.options if o.value not in SIDES]
        return [Option("method", "the method's image", 1.0), Option("reference", f"{reference}'s image", 0.0), *rest]

    def score(self, value: str) -> float | None:
        """The ordinal score of an analysed value (None: not ordered)."""
        for o in self.analysed_options():
            if o.value == value:
                return o.score
        return None


PAPER = (
    Question("fixed", "Is the problem fixed in the {new} image?",
             (Option("yes", "yes", 2.0), Option("partly", "partly", 1.0), Option("no", "no", 0.0))),
    Question("worse", "Compared with the {ref} image, are other aspects (content, composition, style, prompt "
             "alignment) worse in the {new} image?", (Option("yes", "yes, worse", 0.0), Option("no", "no", 1.0))),
    Question("prefer", "Which image do you prefer?",
             (Option("left", "left"), Option("right", "right"), Option("equal", "equal", 0.5)), sided=True),
)
"""Focus-N-Fix's human evaluation (Sec. 5): problem fixed? other aspects degraded? preference."""

QUESTION_SETS = {"paper": PAPER}


def to_json(questions: tuple[Question, ...]) -> str:
    """Canonical JSON of a question list (stored in the ratings database)."""
    return json.dumps([asdict(q) for q in questions], sort_keys=True)


def _finite_number(x: Any) -> bool:
    """A number that is finite as a float: not a bool, not NaN or +-Infinity (Python's json reads them), not an
    integer past the float range."""
    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:
        return False


def from_data(data: Any, where: str = "questions") -> tuple[Question, ...]:
    """Questions from parsed JSON (a list of {key, text, options: [{value, label, score?}], sided?});
    anything malformed is a one-line FocusNFixError."""
    if not isinstance(data, list) or not data:
        raise FocusNFixError(f"{where}: expected a non-empty JSON list of questions")
    out, keys = [], set()
    for n, q in enumerate(data, 1):
        if (not isinstance(q, dict) or not {"key", "text", "options"} <= set(q)
                or set(q) - {"key", "text", "options", "sided"}):
            raise FocusNFixError(f"{where}: question {n} needs exactly key, text, options (and optionally sided)")
        key, text, sided = q["key"], q["text"], q.get("sided", False)
        if not isinstance(key, str) or not _KEY.match(key) or key in keys:
            raise FocusNFixError(f"{where}: question {n} key {key!r} must be unique, "
                                 "lowercase letters/digits/_ (<= 32)")
        if not isinstance(text, str) or not text.strip() or len(text) > 500:
            raise FocusNFixError(f"{where}: question {key!r} needs a text of 1-500 characters")
        if not isinstance(sided, bool):
            raise FocusNFixError(f"{where}: question {key!r}: sided must be true or false")
        opts = q["options"]
        if not isinstance(opts, list) or not 2 <= len(opts) <= 9:
            raise FocusNFixError(f"{where}: question {key!r} needs 2-9 options (answered with the keys 1-9)")
        options, values = [], set()
        for o in opts:
            if not isinstance(o, dict) or not {"value", "label"} <= set(o) or set(o) - {"value", "label", "score"}:
                raise FocusNFixError(f"{where}: question {key!r}: each option needs value and label "
                                     "(and optionally score)")
            value, label, score = o["value"], o["label"], o.get("score")
            if not isinstance(value, str) or not _VALUE.match(value) or value in values:
                raise FocusNFixError(f"{where}: question {key!r}: option value {value!r} must be unique, "
                                     "[a-z0-9_-] (<= 32)")
            if value in ("method", "reference") and sided:
                raise FocusNFixError(f"{where}: question {key!r}: 'method' and 'reference' are reserved "
                                     "in a sided question")
            if not isinstance(label, str) or not label.strip() or len(label) > 80:
                raise FocusNFixError(f"{where}: question {key!r}: option {value!r} needs a label of 1-80 characters")
            if score is not None and not _finite_number(score):
                raise FocusNFixError(f"{where}: question {key!r}: option {value!r} score must be a finite number, "
                                     f"got {short(score)}")
            values.add(value)
            options.append(Option(value, label, None if score is None else float(score)))
        if sided and not set(SIDES) <= values:
            raise FocusNFixError(f"{where}: sided question {key!r} needs the options 'left' and 'right'")
        keys.add(key)
        out.append(Question(key, text, tuple(options), sided))
    return tuple(out)


def load_questions(spec: str) -> tuple[Question, ...]:
    """A named set (``paper``) or a JSON file of questions."""
    if spec in QUESTION_SETS:
        return QUESTION_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise FocusNFixError(f"--questions {spec!r}: not a question set ({', '.join(QUESTION_SETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FocusNFixError(f"cannot read questions {path}: {e}") from None
    return from_data(data, str(path))
