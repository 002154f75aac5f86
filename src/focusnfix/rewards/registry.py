"""Name -> factory tables. Any table also accepts ``package.module:attr`` import paths."""
from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

from ..config.names import import_path, resolve  # noqa: F401 (re-exported: plug-ins import them from here)
from ..errors import FocusNFixError, short

REWARDS: dict[str, str] = {
    "color": "focusnfix.rewards.color:ColorReward",
    "classifier": "focusnfix.rewards.classifier:ClassifierReward",
    "world-artifact": "focusnfix.world.rewards:WorldArtifactReward",
    "world-safety": "focusnfix.world.rewards:WorldSafetyReward",
    "world-artifact-boxes": "focusnfix.world.rewards:WorldArtifactBoxes",  # score only (GRPO)
    "world-safety-decision": "focusnfix.world.rewards:WorldSafetyDecision",  # score only (GRPO)
    "world-unwanted-boxes": "focusnfix.world.rewards:WorldUnwantedBoxes",  # score only (GRPO)
    "nudenet-boxes": "focusnfix.rewards.nudenet:NudeNetBoxes",  # score only (GRPO)
    "nsfw": "focusnfix.rewards.nsfw:NSFWReward",
    "nudenet": "focusnfix.rewards.nudenet:NudeNetReward",
    "ocr": "focusnfix.rewards.ocr:OCRTextReward",  # score only: quoted text read; heatmap: text boxes
    "haar-faces": "focusnfix.rewards.haar:HaarFaces",  # score only: face found; heatmap: face boxes
    "haar-bodies": "focusnfix.rewards.haar:HaarBodies",  # score only: person found; heatmap: body boxes
    "clip-score": "focusnfix.rewards.clip:CLIPScoreReward",
    "aesthetic": "focusnfix.rewards.clip:AestheticReward",
    "clip-zeroshot": "focusnfix.rewards.clip:CLIPZeroShotReward",
    "sum": "focusnfix.rewards.compose:WeightedSum",
}


def reward_factory(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function as a reward factory, so ``reward.name: my_pkg.mod:make_reward`` may call it
    (classes need no mark: a class whose instances are called as ``reward(images, prompts)``)."""
    fn.__focusnfix_reward_factory__ = True
    return fn


def _from_stdlib(obj: Any) -> bool:
    module = (getattr(obj, "__module__", None) or "builtins").split(".")[0]
    return module in sys.stdlib_module_names or module == "builtins"


def check_reward_plugin(obj: Any, name: str) -> None:
    """Refuse an imported ``package.module:attr`` that is not a reward class or a marked factory, before
    it is called with arguments: a config names code to run, but only code written to be a reward (so
    ``reward.name: os:system`` is refused). A config is still trusted like code (README)."""
    if inspect.isclass(obj):
        callable_instances = any("__call__" in vars(k) for k in obj.__mro__ if k is not object)
        if callable_instances and not _from_stdlib(obj):
            return
    elif inspect.isfunction(obj) and getattr(obj, "__focusnfix_reward_factory__", False):
        return
    raise FocusNFixError(f"reward {short(name)} is not a reward class (instances called as reward(images, prompts)) "
                         "or a function marked @focusnfix.rewards.registry.reward_factory; refusing to call it")


def check_module_factory(obj: Any, name: str, what: str) -> None:
    """For plug-ins that build a torch module (``classifier`` reward's ``model``): an ``nn.Module`` class or
    a Python function (not a builtin) outside the standard library, called with no arguments."""
    import torch

    ok = ((inspect.isclass(obj) and issubclass(obj, torch.nn.Module))
          or (inspect.isfunction(obj) and not _from_stdlib(obj)))
    if not ok:
        raise FocusNFixError(f"{what} {short(name)} is not a torch.nn.Module class or a function that builds one; "
                             "refusing to call it")


def build_reward(name: str, /, **kwargs: Any):
    """Instantiate a reward by registry name or import path with constructor ``kwargs`` (which may hold a ``name``:
    this ``name`` is positional)."""
    factory = resolve(REWARDS, name, "reward")
    if ":" in name:
        check_reward_plugin(factory, name)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FocusNFixError):
            raise
        raise FocusNFixError(f"reward {short(name)} rejected its arguments (reward.args): {e}") from None
