"""Method strings of ``focusnfix eval`` and the guidance each inference-time method adds.

  ``base``                         the frozen model
  ``NAME=RUN`` or ``RUN``          a trained LoRA: a run folder with ``lora/``, a LoRA folder, or a
                                   ``.safetensors`` file (any name)
  ``rg[:scale=S,start=A,end=B]``   Reward Guidance;  ``rg-region[:...]`` with the region constraint
  ``sld[:PRESET][,scale=S,warmup=W,threshold=L,momentum=M,beta=B][,concept=TEXT]``
                                   Safe Latent Diffusion: a preset (weak, medium, strong, max;
                                   default medium) whose values the options replace
  ``NAME=rg:...``, ``NAME=sld:...``  the same under another name (several settings side by side)
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FocusNFixError

VALID = "base, NAME=RUN_DIR, rg[:scale=S], rg-region[:scale=S], sld[:preset][,scale=S,warmup=W,...]"


@dataclass
class MethodSpec:
    name: str
    kind: str  # base | lora | rg | rg-region | sld
    params: dict = field(default_factory=dict)
    path: Path | None = None  # lora: the run folder or LoRA folder / file given


def parse_method(spec: str) -> MethodSpec:
    """Parse one method string (see the module docstring); ``NAME=rg:...`` / ``NAME=sld:...`` names
    an inference-time method (to compare several settings)."""
    named = re.match(r"^([\w.-]+)=((?:rg|rg-region|sld)(?::.*)?)$", spec)
    if named:
        parsed = parse_method(named.group(2))
        parsed.name = named.group(1)
        return parsed
    head, _, rest = spec.partition(":")
    if spec == "base":
        return MethodSpec("base", "base")
    if head in ("rg", "rg-region"):
        params = _kv(rest, spec, {"scale": float, "start": float, "end": float})
        return MethodSpec(head, head, {"scale": 1.0, "start": 0.0, "end": 1.0, **params})
    if head == "sld":
        return _parse_sld(rest, spec)
    name, _, path = spec.rpartition("=")
    from ..lora import find_lora_file

    folder = Path(path)
    try:
        find_lora_file(folder)
    except FocusNFixError as e:
        raise FocusNFixError(f"method {spec!r}: {e} (valid methods: {VALID})") from None
    stem = folder.stem if folder.is_file() else folder.name
    return MethodSpec(name or stem, "lora", {}, folder)


def _parse_sld(rest: str, spec: str) -> MethodSpec:
    """``sld[:PRESET][,key=value,...][,concept=TEXT]``; the concept is last and may contain commas."""
    from ..methods.sld import OPTIONS, PRESETS, sld_config

    concept = None
    head, sep, tail = rest.partition("concept=")
    if sep and (head == "" or head.endswith(",")):
        rest, concept = head.rstrip(","), tail
    items = [x for x in rest.split(",") if x]
    preset = items.pop(0) if items and "=" not in items[0] else None
    if preset is not None and preset not in PRESETS:
        raise FocusNFixError(f"unknown SLD preset in {spec!r}; valid: {', '.join(PRESETS)}")
    overrides = _kv(",".join(items), spec, {k: t for k, (_, t) in OPTIONS.items()})
    try:
        config = sld_config(preset or "medium", **overrides)
    except ValueError as e:
        raise FocusNFixError(f"method {spec!r}: {e}") from None
    name = f"sld-{preset or ('custom' if overrides else 'medium')}" + "".join(f"-{k}{v:g}" for k, v in overrides.items())
    params = {"preset": preset or "medium", **asdict(config)}
    if concept is not None:
        params["concept"] = concept
    return MethodSpec(name, "sld", params)


def _kv(text: str, spec: str, types: dict) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise FocusNFixError(f"method {spec!r}: bad option {item!r}; valid options: {', '.join(types)}")
        try:
            out[key] = types[key](value)
        except ValueError:
            kind = {int: "an integer", float: "a float"}.get(types[key], f"a {types[key].__name__}")
            raise FocusNFixError(f"method {spec!r}: {key} must be {kind}, got {value!r}") from None
    return out


def build_guidance(spec: MethodSpec, backbone, reward, prompts, masks, steps):
    """The guidance wrapper of an inference-time method for one batch (None for base and LoRA methods).
    ``masks``: M(Î0) of the batch's base images (used by ``rg-region``)."""
    if spec.kind in ("rg", "rg-region"):
        from ..methods.reward_guidance import RewardGuidance

        p = spec.params
        return RewardGuidance(backbone, reward, prompts, p["scale"], p["start"], p["end"], steps,
                              mask=masks if spec.kind == "rg-region" else None)
    if spec.kind == "sld":
        from ..methods.sld import DEFAULT_CONCEPT, SLDConfig, SLDGuidance

        fields = {k: v for k, v in spec.params.items() if k in SLDConfig.__dataclass_fields__}
        return SLDGuidance(backbone, SLDConfig(**fields), spec.params.get("concept", DEFAULT_CONCEPT))
    return None
