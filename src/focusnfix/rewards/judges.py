"""Judge specifications: ``NAME`` or ``NAME=ARGS``, a registered reward (or a plug-in ``package.module:Class``) with
its constructor arguments as a YAML mapping, scored as a metric of its own, ``judge_<name>``. ``focusnfix eval
--judge`` (:mod:`focusnfix.evaluation.judges`) and training's ``train.eval_judges`` parse them here."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ..errors import FocusNFixError, RunFailed, one_line, short
from .base import call_reward
from .registry import REWARDS, check_reward_plugin, resolve

PREFIX = "judge_"


@dataclass
class JudgeSpec:
    """A parsed judge: the reward's name, its arguments and the metric key it writes."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return PREFIX + (re.sub(r"[^0-9a-z]+", "_", self.name.lower()).strip("_") or "reward")


def parse_judge(text: str, flag: str = "--judge") -> JudgeSpec:
    """``NAME`` or ``NAME=ARGS`` (ARGS: a YAML mapping); an unknown NAME is a one-line error naming the known ones.
    ``flag``: where the text came from, for the messages (``--judge``, ``train.eval_judges``)."""
    name, sep, raw = str(text).partition("=")
    name = name.strip()
    if not name:
        raise FocusNFixError(f"{flag} {short(text)}: give a reward name, e.g. {flag} ocr or {flag} 'ocr={{target: "
                             "OPEN}'")
    if ":" not in name and name not in REWARDS:
        where = "" if flag == "--judge" else f" ({flag})"
        raise FocusNFixError(f"unknown judge {short(name)}{where}; known: {', '.join(sorted(REWARDS))}, or a plug-in "
                             "package.module:Class")
    factory = resolve(REWARDS, name, "judge")
    if ":" in name:
        check_reward_plugin(factory, name)
    args: Any = {}
    if sep:
        try:
            args = yaml.safe_load(raw) if raw.strip() else {}
        except yaml.YAMLError as e:
            raise FocusNFixError(one_line(f"{flag} {short(name)}: its arguments are not YAML: {e}", 200)) from None
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise FocusNFixError(f"{flag} {short(name)}=...: the part after = must be a YAML mapping of the reward's "
                                 f"arguments, e.g. {name}={{key: value}}; got {short(raw)}")
    return JudgeSpec(name, args)


def parse_judges(texts: list[str] | None, flag: str = "--judge") -> list[JudgeSpec]:
    """Every judge of ``texts``, each metric key once."""
    specs = [parse_judge(t, flag) for t in texts or []]
    keys = [s.key for s in specs]
    for key in keys:
        if keys.count(key) > 1:
            raise FocusNFixError(f"{flag}: two judges write the metric {key!r}; give each judge once")
    return specs


def judge_score(spec: JudgeSpec, reward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The judge's scores ``(B,)`` (float, detached) of ``images``; a judge that fails is one line
    (:class:`RunFailed`), out-of-memory and our own errors pass as they are."""
    try:
        out = call_reward(reward, images, prompts)
    except (FocusNFixError, RunFailed, MemoryError):
        raise
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":
            raise
        raise RunFailed(one_line(f"judge {spec.name!r} failed: {type(e).__name__}: {e}", 220)) from None
    return out.score.detach().float()
