"""Names in a config: ``package.module:attr`` import paths, name tables of them, and Hub repo ids.

A config names code to run (``reward.name: my_pkg.rewards:MyReward``) and built-in things of any layer
by a registered name (the tables of :mod:`focusnfix.rewards.registry`, the world prompt sets of
:mod:`focusnfix.prompts.sets`); :func:`resolve` turns either into the object, with one-line errors.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

from ..errors import FocusNFixError, short


def import_path(path: str, what: str = "object") -> Any:
    """Import ``package.module:attr`` (attr may be dotted); one-line error when it fails."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise FocusNFixError(f"{what} path {short(path)} must look like package.module:attr")
    if module_name.split(".")[0] in sys.stdlib_module_names:  # a plug-in is a reward package, never os/subprocess/...
        raise FocusNFixError(f"{what} {short(path)} names a standard-library module; "
                             "plug-ins come from your own package")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise FocusNFixError(f"cannot import module {short(module_name)} for {what} {short(path)}: {e}") from None
    except Exception as e:  # the module itself failed while importing
        raise FocusNFixError(f"importing module {short(module_name)} for {what} {short(path)} failed: "
                             f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FocusNFixError(f"module {short(module_name)} has no attribute {short(attr)} "
                                 f"(from {what} {short(path)})")
        obj = getattr(obj, part)
    return obj


def resolve(table: dict[str, str], name: str, what: str) -> Callable[..., Any]:
    """The factory for ``name``: a registered name or an import path with ``:``."""
    if ":" in name:
        return import_path(name, what)
    if name not in table:
        raise FocusNFixError(f"unknown {what} {short(name)}; valid names: {', '.join(sorted(table))}, "
                             "or package.module:attr")
    return import_path(table[name], what)


def check_repo_id(repo_id, key: str = "--repo-id", error: type = FocusNFixError) -> str:
    """``repo_id`` if it is a Hub model id (``owner/name`` or ``name``), else one line naming ``key``."""
    from huggingface_hub.utils import validate_repo_id  # lazy: an optional heavy package, only for a repo id

    try:
        if not isinstance(repo_id, str):
            raise ValueError(repo_id)
        validate_repo_id(repo_id)
    except ValueError:  # HFValidationError
        raise error(f"{key} {short(repo_id)} is not a Hub repo id; use owner/name (letters, digits, '-', '_', '.'; "
                    "at most 96 characters each)") from None
    return repo_id
