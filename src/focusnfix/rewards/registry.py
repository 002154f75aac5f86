"""Name -> factory tables. Any table also accepts ``package.module:attr`` import paths."""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any, Callable

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
    "clip-score": "focusnfix.rewards.clip:CLIPScoreReward",
    "aesthetic": "focusnfix.rewards.clip:AestheticReward",
    "clip-zeroshot": "focusnfix.rewards.clip:CLIPZeroShotReward",
    "sum": "focusnfix.rewards.compose:WeightedSum",
}


def import_path(path: str, what: str = "object") -> Any:
    """Import ``package.module:attr`` (attr may be dotted); one-line error when it fails."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise FocusNFixError(f"{what} path {short(path)} must look like package.module:attr")
    if module_name.split(".")[0] in sys.stdlib_module_names:  # a plug-in is a reward package, never os/subprocess/...
        raise FocusNFixError(f"{what} {short(path)} names a standard-library module; plug-ins come from your own package")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise FocusNFixError(f"cannot import module {short(module_name)} for {what} {short(path)}: {e}") from None
    except Exception as e:  # the module itself failed while importing
        raise FocusNFixError(f"importing module {short(module_name)} for {what} {short(path)} failed: "
                             f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FocusNFixError(f"module {short(module_name)} has no attribute {short(attr)} (from {what} {short(path)})")
        obj = getattr(obj, part)
    return obj


def resolve(table: dict[str, str], name: str, what: str) -> Callable[..., Any]:
    """The factory for ``name``: a registered name or an import path with ``:``."""
    if ":" in name:
        return import_path(name, what)
    if name not in table:
        raise FocusNFixError(f"unknown {what} {short(name)}; valid names: {', '.join(sorted(table))}, or package.module:attr")
    return import_path(table[name], what)


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
                         "or a function marked @focusnfix.registry.reward_factory; refusing to call it")


def check_module_factory(obj: Any, name: str, what: str) -> None:
    """For plug-ins that build a torch module (``classifier`` reward's ``model``): an ``nn.Module`` class or
    a Python function (not a builtin) outside the standard library, called with no arguments."""
    import torch

    ok = (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)) or (inspect.isfunction(obj) and not _from_stdlib(obj))
    if not ok:
        raise FocusNFixError(f"{what} {short(name)} is not a torch.nn.Module class or a function that builds one; "
                             "refusing to call it")


def build_reward(name: str, **kwargs: Any):
    """Instantiate a reward by registry name or import path with constructor ``kwargs``."""
    factory = resolve(REWARDS, name, "reward")
    if ":" in name:
        check_reward_plugin(factory, name)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, FocusNFixError):
            raise
        raise FocusNFixError(f"reward {short(name)} rejected its arguments (reward.args): {e}") from None
