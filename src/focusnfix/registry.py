"""Name -> factory tables. Any table also accepts ``package.module:attr`` import paths."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from .errors import FocusNFixError

REWARDS: dict[str, str] = {
    "color": "focusnfix.rewards.color:ColorReward",
    "classifier": "focusnfix.rewards.classifier:ClassifierReward",
    "world-artifact": "focusnfix.world.rewards:WorldArtifactReward",
    "world-safety": "focusnfix.world.rewards:WorldSafetyReward",
    "world-artifact-boxes": "focusnfix.world.rewards:WorldArtifactBoxes",  # score only (GRPO)
    "world-safety-decision": "focusnfix.world.rewards:WorldSafetyDecision",  # score only (GRPO)
    "nudenet-boxes": "focusnfix.rewards.nudenet:NudeNetBoxes",  # score only (GRPO)
    "nsfw": "focusnfix.rewards.nsfw:NSFWReward",
    "nudenet": "focusnfix.rewards.nudenet:NudeNetReward",
    "clip-score": "focusnfix.rewards.clip:CLIPScoreReward",
    "aesthetic": "focusnfix.rewards.clip:AestheticReward",
    "clip-zeroshot": "focusnfix.rewards.clip:CLIPZeroShotReward",
    "sum": "focusnfix.rewards.compose:WeightedSum",
}


def import_path(path: str, what: str = "object") -> Any:
    """Import ``package.module:attr`` (attr may be dotted); one-line error when it fails."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise FocusNFixError(f"{what} path {path!r} must look like package.module:attr")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise FocusNFixError(f"cannot import module {module_name!r} for {what} {path!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FocusNFixError(f"module {module_name!r} has no attribute {attr!r} (from {what} {path!r})")
        obj = getattr(obj, part)
    return obj


def resolve(table: dict[str, str], name: str, what: str) -> Callable[..., Any]:
    """The factory for ``name``: a registered name or an import path with ``:``."""
    if ":" in name:
        return import_path(name, what)
    if name not in table:
        raise FocusNFixError(f"unknown {what} {name!r}; valid names: {', '.join(sorted(table))}, or package.module:attr")
    return import_path(table[name], what)


def build_reward(name: str, **kwargs: Any):
    """Instantiate a reward by registry name or import path with constructor ``kwargs``."""
    factory = resolve(REWARDS, name, "reward")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FocusNFixError):
            raise
        raise FocusNFixError(f"reward {name!r} rejected its arguments (reward.args): {e}") from None
