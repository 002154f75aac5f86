"""Reading a config: YAML (1.2-style booleans), dotted ``key=value`` overrides, each value coerced to its
field's type (numbers finite, free-form mappings bounded), the packaged configs by name.

``load_config("cfg.yaml", ["train.lr=1e-4", "lora.rank=8"])`` returns a validated :class:`Config`.
Unknown keys and wrong types raise :class:`ConfigError` listing the valid keys.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, short, short_path
from .fields import limits_text
from .names import plugin_folder
from .schema import Config


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only true/false are booleans; yes/no/on/off stay strings
    (so `mixed_precision: no` and `reference_cache: off` mean what they say)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every config key as ``(dotted.key, default, help)``, for docs and ``--help-config``."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += field_help(hints[f.name], prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


def field_limits(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Every config key with limits as ``{dotted.key: "in [1, 4096]"}`` (``--help-config`` shows them)."""
    out = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_limits(hints[f.name], prefix + f.name + "."))
        elif limits_text(f.metadata):
            out[prefix + f.name] = limits_text(f.metadata)
    return out


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | str: a boolean word, else the string (auto)
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)  # 1e4 written for 10000
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ConfigError(f"{key} must be an integer below 2**63, got {short(value)}")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {short(value)}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if "\x00" in str(value):
                raise ConfigError(f"{key} holds a NUL character; remove it")
            return str(value)
    elif origin is list or tp is list:
        if isinstance(value, str) and args and args[0] is str:
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0] if args else Any, key) for v in value]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            check_size(value, key)
            return dict(value)
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key} must be {name}, got {short(value)} ({type(value).__name__})")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints, names = _hints(cls), {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {short(prefix + str(key))}; valid keys here: {_valid_keys(cls)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value if value is not None else {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested dict ``data`` in place."""
    if "=" not in override:
        raise ConfigError(f"override {short(override)} must look like key=value, e.g. train.lr=1e-4")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    cls: type = Config
    node = data
    for i, part in enumerate(parts):
        hints, names = _hints(cls), {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {short(key)}; valid keys in {where}: {_valid_keys(cls)}")
        tp = hints[part]
        if i == len(parts) - 1:
            node[part] = _parse_value(raw)
        elif typing.get_origin(tp) is dict or tp is dict:  # free-form mapping, e.g. reward.args.model=...
            for sub in parts[i: -1]:
                if not isinstance(node.get(sub), dict):
                    node[sub] = {}
                node = node[sub]
            node[parts[-1]] = _parse_value(raw)
            return
        elif dataclasses.is_dataclass(tp):
            cls = tp
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"{short('.'.join(parts[: i + 1]))} is not a section; cannot set {short(key)}")


def _parse_value(raw: str) -> Any:
    try:
        return _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    except RecursionError:
        raise ConfigError(f"override value {short(raw)} is nested too deeply") from None


MAX_CONFIG_BYTES = 16 * 2**20
PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # shipped in the wheel; `configs/` in a checkout


def _packaged(path: Path) -> Path:
    """``world-artifact``, ``world-artifact.yaml`` or ``configs/world-artifact.yaml`` name a packaged config
    when no such file exists here (an installed package has no ``configs/`` folder)."""
    if path.is_file() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml")
    return shipped if shipped.is_file() else path


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or defaults when ``path`` is None), apply overrides, validate. ``path`` may
    name a packaged config (``world-artifact``); its folder is searched for plug-in modules
    (:func:`~focusnfix.config.names.plugin_folder`)."""
    data: dict = {}
    if path is not None:
        path = _packaged(Path(path))
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
            raise ConfigError(f"config file {short_path(path)} not found (packaged configs: {names})")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {short_path(path)} is larger than {MAX_CONFIG_BYTES // 2**20} MB; "
                              "put long prompt lists in data.prompt_file")
        try:
            data = _yaml(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            msg = str(e).replace("\n", " ")
            raise ConfigError(f"config file {short_path(path)} is not valid YAML: {msg}") from None
        except RecursionError:
            raise ConfigError(f"config file {short_path(path)} is nested too deeply to be a config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {short_path(path)} must hold a mapping of sections, "
                              f"got {type(data).__name__}")
        plugin_folder(path.parent)
    for ov in overrides:
        apply_override(data, ov)
    return from_dict(Config, data).validate()


MAX_NODES, MAX_DEPTH = 10_000, 32


def check_size(value: Any, key: str) -> None:
    """A free-form mapping (``reward.args``) of at most MAX_NODES values, MAX_DEPTH levels deep, every
    number finite: a YAML alias bomb or a runaway nesting fails here with one line."""
    stack, seen = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError(f"{key} is too large or too deeply nested (at most {MAX_NODES} values, "
                              f"{MAX_DEPTH} levels)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{key} holds a non-finite number ({node}); use a finite value")
        elif isinstance(node, str) and "\x00" in node:
            raise ConfigError(f"{key} holds a NUL character; remove it")
