"""Names in a config: ``package.module:attr`` import paths, name tables of them, and Hub repo ids.

A config names code to run (``reward.name: my_pkg.rewards:MyReward``, or a file ``path/to/my_rewards.py:MyReward``)
and built-in things of any layer by a registered name (the tables of :mod:`focusnfix.rewards.registry`, the world
prompt sets of :mod:`focusnfix.prompts.sets`); :func:`resolve` turns either into the object, with one-line errors.
A plug-in module is looked for in the installed packages, then in the folders of the config files loaded
(:func:`plugin_folder`) and the working directory, so ``my_rewards.py`` next to the config needs no ``PYTHONPATH``.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import FocusNFixError, short, short_path

PLUGIN_FOLDERS: list[Path] = []  # the folders of the config files loaded (load_config), searched for plug-ins


def plugin_folder(folder: str | Path) -> None:
    """Search ``folder`` (a config file's) for plug-in modules, after the installed packages."""
    folder = Path(folder).resolve()
    if folder not in PLUGIN_FOLDERS:
        PLUGIN_FOLDERS.append(folder)


def _searchable(*extra: Path) -> None:
    """Put the plug-in folders (``extra``, the config folders, the working directory) at the end of ``sys.path``:
    they never shadow an installed package, and stay there so a plug-in's own later imports work."""
    for folder in (*extra, *PLUGIN_FOLDERS, Path.cwd()):
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    importlib.invalidate_caches()


def import_path(path: str, what: str = "object") -> Any:
    """Import ``package.module:attr`` or ``path/to/file.py:attr`` (attr may be dotted); one-line error when it
    fails, naming where the module was looked for."""
    file = None
    if ".py:" in path:  # a file: its folder is searched, its name is the module's
        spec, _, attr = path.rpartition(":")
        file = Path(spec).expanduser()
        module_name = file.stem
    else:
        module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise FocusNFixError(f"{what} path {short(path)} must look like package.module:attr or path/to/file.py:attr")
    if module_name.split(".")[0] in sys.stdlib_module_names:  # a plug-in is a reward package, never os/subprocess/...
        raise FocusNFixError(f"{what} {short(path)} names a standard-library module; "
                             "plug-ins come from your own package")
    if file is not None:
        file = _plugin_file(file, what, path)
    _searchable(*([file.parent] if file is not None else []))
    obj = _import(module_name, what, path, attr)
    if file is not None and Path(getattr(obj, "__file__", "") or "").resolve() != file:
        raise FocusNFixError(f"{what} {short(path)}: the module name {short(module_name)} is taken by "
                             f"{short_path(getattr(obj, '__file__', None) or module_name)}; rename the file")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FocusNFixError(f"module {short(module_name)} has no attribute {short(attr)} "
                                 f"(from {what} {short(path)})")
        obj = getattr(obj, part)
    return obj


def _plugin_file(file: Path, what: str, path: str) -> Path:
    """A plug-in file named relative to the working directory, else to a config's folder; resolved."""
    candidates = [file] if file.is_absolute() else [file, *(folder / file for folder in PLUGIN_FOLDERS)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FocusNFixError(f"{what} {short(path)}: file {short_path(file)} not found (relative paths are taken from "
                             "the working directory, then the config's folder)")
    return found.resolve()


def _import(module_name: str, what: str, path: str, attr: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):  # the plug-in module itself
            top = module_name.split(".")[0]
            raise FocusNFixError(
                f"cannot import module {short(module_name)} for {what} {short(path)}: not installed, nor in the "
                f"config's folder or the working directory; put {top}.py there, install its package, or name the "
                f"file: path/to/{top}.py:{attr}") from None
        raise FocusNFixError(f"importing module {short(module_name)} for {what} {short(path)} failed: {e} "
                             "(a package the plug-in imports: install it)") from None
    except ImportError as e:
        raise FocusNFixError(f"cannot import module {short(module_name)} for {what} {short(path)}: {e}") from None
    except Exception as e:  # the module itself failed while importing
        raise FocusNFixError(f"importing module {short(module_name)} for {what} {short(path)} failed: "
                             f"{type(e).__name__}: {e}") from None


def resolve(table: dict[str, str], name: str, what: str) -> Callable[..., Any]:
    """The factory for ``name``: a registered name or an import path with ``:``."""
    if ":" in name:
        return import_path(name, what)
    if name not in table:
        raise FocusNFixError(f"unknown {what} {short(name)}; valid names: {', '.join(sorted(table))}, "
                             "or package.module:attr (or path/to/file.py:attr)")
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
