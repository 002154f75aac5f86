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

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FocusNFixError, short

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
    named = re.match(r"^([^=:]+)=((?:rg|rg-region|sld)(?::.*)?)$", spec)
    if named:
        parsed = parse_method(named.group(2))
        parsed.name = check_method_name(named.group(1), spec)
        return parsed
    head, _, rest = spec.partition(":")
    if spec == "base":
        return MethodSpec("base", "base")
    if head in ("rg", "rg-region"):
        params = _kv(rest, spec, {"scale": float, "start": float, "end": float})
        return MethodSpec(head, head, {"scale": 1.0, "start": 0.0, "end": 1.0, **params})
    if head == "sld":
        return _parse_sld(rest, spec)
    name, _, path = ("", "", spec) if "=" in spec and Path(spec).exists() else spec.rpartition("=")  # a path with "="
    from ..backbones.lora import check_lora_file

    if name:
        check_method_name(name, spec)
    folder = Path(path)
    try:
        check_lora_file(folder)
    except FocusNFixError as e:
        raise FocusNFixError(f"method {short(spec)}: {e}"
                             + (f" (valid methods: {VALID})" if len(str(e)) < 80 else "")) from None
    stem = folder.stem if folder.is_file() else folder.resolve().name
    return MethodSpec(name or _safe_name(stem), "lora", {}, folder)


NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def check_method_name(name: str, spec: str) -> str:
    """A method name becomes a folder name (``images/NAME/``): plain ASCII letters, digits, ``_ . -``,
    not starting with a dot, at most 64 characters (so ``../x`` cannot write outside ``--out``)."""
    if not NAME.match(name):
        raise FocusNFixError(f"method name {short(name)} in {short(spec)} must be 1-64 characters of A-Z a-z 0-9 _ . - "
                             "(not starting with a dot); e.g. fnf=runs/fnf")
    return name


def _safe_name(stem: str) -> str:
    """A method name from a run folder's or LoRA file's name (other characters become ``-``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip(".-")[:64]
    return name or "lora"


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
        raise FocusNFixError(f"unknown SLD preset in {short(spec)}; valid: {', '.join(PRESETS)}")
    overrides = _kv(",".join(items), spec, {k: t for k, (_, t) in OPTIONS.items()})
    try:
        config = sld_config(preset or "medium", **overrides)
    except ValueError as e:
        raise FocusNFixError(f"method {short(spec)}: {e}") from None
    name = (f"sld-{preset or ('custom' if overrides else 'medium')}"
            + "".join(f"-{k}{v:g}" for k, v in overrides.items()))
    params = {"preset": preset or "medium", **asdict(config)}
    if concept is not None:
        params["concept"] = concept
    return MethodSpec(name, "sld", params)


def _kv(text: str, spec: str, types: dict) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise FocusNFixError(f"method {short(spec)}: bad option {short(item)}; valid options: {', '.join(types)}")
        try:
            out[key] = types[key](value)
        except ValueError:
            kind = {int: "an integer", float: "a float"}.get(types[key], f"a {types[key].__name__}")
            raise FocusNFixError(f"method {short(spec)}: {key} must be {kind}, got {short(value)}") from None
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise FocusNFixError(f"method {short(spec)}: {key} must be a finite number, got {short(value)}")
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
