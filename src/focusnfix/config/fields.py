"""Config fields and their limits: ``_f(default, help, range=(lo, hi), choices=(...), ...)`` keeps a field's
help text, range and valid values in its metadata, and :func:`check_fields` checks every field of a config
against them, so a typo fails with one :class:`ConfigError` line naming the key, its range and the value
instead of deep inside a run. Numbers are also finite (checked when read, :mod:`focusnfix.config.load`).

Metadata keys (all optional but ``help``):

* ``range=(lo, hi)``: numbers (or each number of a list) within; ``hi=None`` leaves the top open;
  ``open="lo"`` / ``"hi"`` / ``"both"`` excludes the bound(s); ``unit`` is shown after the range.
* ``choices=(...)``: the valid values (compared with their type: ``True`` is not ``1``).
* ``empty="..."``: the message tail when a string is blank or a list is empty (its entries must not be blank).
* ``max_chars=N``: the length of a string, or of each string of a list (prompts).
* ``check=f``: ``f(value, key, ConfigError)`` raises for a bad value (e.g. a Hub repo id).
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable

from ..errors import ConfigError, short


def _f(default: Any, help: str, *, range: tuple | None = None, open: str = "", unit: str = "",
       choices: tuple | None = None, empty: str | None = None, max_chars: int | None = None,
       check: Callable[..., Any] | None = None) -> Any:
    """A dataclass field with a help string (shown by ``focusnfix train --help-config``) and its limits."""
    limits = {"range": range, "open": open, "unit": unit, "choices": choices, "empty": empty,
              "max_chars": max_chars, "check": check}
    metadata = {"help": help, **{k: v for k, v in limits.items() if v is not None and v != ""}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``obj`` (sections recursively, in field order) against its metadata."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, prefix + f.name + ".")
        else:
            check_value(prefix + f.name, value, f.metadata)


def check_value(key: str, value: Any, meta: dict) -> None:
    """``value`` (None = unset, fine) against the limits in a field's ``meta``; one line naming ``key``."""
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    if "empty" in meta:
        _check(bool(value) and (isinstance(value, list) or bool(value.strip())), key, meta["empty"])
        _check(not isinstance(value, list) or all(x.strip() for x in value), key, "holds an empty name")
    if "choices" in meta:
        ok = any(value == c and type(value) is type(c) for c in meta["choices"])
        _check(ok, key, f"must be {_either(meta['choices'])}, got {short(value)}")
    if "range" in meta:
        for x in items:
            _in(key, x, *meta["range"], meta.get("unit", ""), meta.get("open", ""))
    if "max_chars" in meta:
        most = meta["max_chars"]
        if isinstance(value, list):
            long = next((p for p in value if len(p) > most), None)
            _check(long is None, key, f"holds a prompt of {len(long or '')} characters (max {most}); shorten it")
        else:
            _check(len(value) <= most, key, f"is {len(value)} characters long (max {most})")
    if "check" in meta:
        meta["check"](value, key, ConfigError)


def limits_text(meta: dict) -> str:
    """The range or the valid values of a field as text (``in [1, 4096]``, ``>= 0 steps``), else ``""``."""
    if "choices" in meta:
        return f"one of {_either(meta['choices'])}"
    if "range" not in meta:
        return ""
    lo, hi = meta["range"]
    lo_open, hi_open = meta.get("open", "") in ("lo", "both"), meta.get("open", "") in ("hi", "both")
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    if hi is None:
        return f"{'>' if lo_open else '>='} {_num(lo)}{unit}"
    return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}{unit}"


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def _in(key: str, value, lo, hi, unit: str = "", open: str = "") -> None:
    """``value`` within [lo, hi] (open ends as asked; hi None: no top), else one line naming ``key``."""
    lo_open, hi_open = open in ("lo", "both"), open in ("hi", "both")
    ok = (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        meta = {"range": (lo, hi), "open": open, "unit": unit}
        raise ConfigError(f"{key} must be {limits_text(meta)}, got {short(value)}")


def _either(choices: tuple) -> str:
    """``a, b or c`` (booleans as YAML writes them: true, false)."""
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _num(x) -> str:
    """A range bound: 2**31 - 1 and 2**63 as such, other numbers as they are."""
    for k in (31, 32, 63):
        if x == 2**k:
            return f"2**{k}"
        if x == 2**k - 1:
            return f"2**{k} - 1"
    return f"{x:g}" if isinstance(x, float) else str(x)
