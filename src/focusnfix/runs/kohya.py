"""kohya-format LoRA files for SD 1.x/2.x and SDXL: ``lora_unet_<module path, dots as _>.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``, the names AUTOMATIC1111/Forge and ComfyUI map onto those families' UNets
(our diffusers-format ``pytorch_lora_weights.safetensors`` matches neither). Made with diffusers' own
converters (``convert_all_state_dict_to_peft``, then ``convert_state_dict_to_kohya``); that converter writes
``alpha = rank`` (scale 1), so each module's alpha is set to the LoRA's alpha here and the scale alpha / rank
of training is kept. SD3 and FLUX LoRAs get no kohya file (diffusers has no converter to their kohya names;
ComfyUI reads their diffusers-format ``transformer.*`` file as it is, see docs/sharing.md), nor do DoRA LoRAs
(``lora.use_dora``: diffusers' converter has no names for their magnitude vectors; ``focusnfix export`` refuses them).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..backbones.lora import LORA_FILE, check_lora_file
from ..errors import FocusNFixError, short_path
from .checkpoint import io_errors
from .files import check_writable_folder

SUFFIX = "_kohya.safetensors"
PREFIX = "lora_unet_"  # kohya's prefix of UNet modules (lora_te1_ / lora_te2_: text encoders, which we never train)


def kohya_stem(folder: str | Path) -> str:
    """The name a LoRA folder's kohya file starts with: the run's name for ``RUN/lora``, ``RUN-step-NNNNNN`` for
    ``RUN/lora-step-NNNNNN``, else the folder's name; characters other than letters, digits, ``.``, ``-`` become
    ``_``."""
    folder = Path(folder).absolute()
    if folder.name == "lora":
        stem = folder.parent.name
    elif folder.name.startswith("lora-step-"):
        stem = folder.parent.name + folder.name[len("lora"):]
    else:
        stem = folder.name
    return _safe(stem)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "_", name) or "lora"


def is_unet_lora(state: dict[str, torch.Tensor]) -> bool:
    """Whether a diffusers-format LoRA adapts a UNet (SD 1.x/2.x, SDXL) only: every key starts with ``unet.``."""
    return bool(state) and all(k.startswith("unet.") for k in state)


def is_dora(state: dict[str, torch.Tensor]) -> bool:
    """Whether a LoRA file's tensors are DoRA's (``lora.use_dora``): it has magnitude vectors."""
    return any("lora_magnitude_vector" in k or k.endswith(".dora_scale") for k in state)


def to_kohya(state: dict[str, torch.Tensor], alpha: float | None) -> dict[str, torch.Tensor]:
    """kohya-format tensors of a diffusers-format UNet LoRA ``state`` (keys ``unet.<path>.lora.down.weight`` or
    ``unet.<path>.lora_A.weight``). ``alpha``: the LoRA's alpha, written for every module (float32 scalars);
    None keeps diffusers' ``alpha = rank`` (scale 1, how diffusers loads a file that records no alpha)."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya  # heavy: on first use

    if not is_unet_lora(state):
        other = next((k for k in state if not k.startswith("unet.")), "(no tensors)")
        raise FocusNFixError(f"kohya export is for SD 1.x/2.x and SDXL UNet LoRAs; this LoRA has "
                             f"{short_path(other, 60)} (SD3/FLUX transformer LoRAs load in ComfyUI as they are: "
                             "see docs/sharing.md)")
    if is_dora(state):
        raise FocusNFixError("kohya export takes plain LoRA down/up weights; this is a DoRA LoRA (lora.use_dora), "
                             "whose magnitude vectors diffusers' kohya converter does not write: load its "
                             "diffusers-format file, or train without lora.use_dora")
    peft = convert_all_state_dict_to_peft(dict(state))
    extra = [k for k in peft if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if extra:
        raise FocusNFixError(f"kohya export takes plain LoRA down/up weights only; {short_path(extra[0], 60)} is "
                             "something else (DoRA or a bias?)")
    kohya = convert_state_dict_to_kohya(peft)
    if alpha is not None:
        kohya = {k: torch.tensor(float(alpha), dtype=torch.float32) if k.endswith(".alpha") else v
                 for k, v in kohya.items()}
    return {k: v.detach().cpu().contiguous() for k, v in kohya.items()}


def lora_alpha(weights: Path) -> float | None:
    """The alpha of a diffusers-format LoRA file: its safetensors metadata (``lora_adapter_metadata``, written by
    ``save_lora_weights``), else ``lora_config.json`` beside it, else None (alpha = rank). A per-module
    ``alpha_pattern`` or rsLoRA scaling is refused: one alpha per file is what we convert."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = (f.metadata() or {}).get("lora_adapter_metadata")
    beside = weights.parent / "lora_config.json"
    try:
        if meta:
            config = {k.split(".", 1)[-1]: v for k, v in json.loads(meta).items()}
        else:
            config = json.loads(beside.read_text(encoding="utf-8")) if beside.is_file() else {}
    except (OSError, ValueError, AttributeError) as e:
        raise FocusNFixError(f"LoRA {short_path(weights, 60)}: its rank/alpha record cannot be read ({e})") from None
    if not isinstance(config, dict):
        config = {}
    if config.get("alpha_pattern") or config.get("use_rslora"):
        raise FocusNFixError(f"LoRA {short_path(weights, 60)} sets per-module alphas (alpha_pattern) or rsLoRA "
                             "scaling; kohya export converts one alpha per file")
    value = config.get("lora_alpha")
    return float(value) if isinstance(value, (int, float)) else None


def save_kohya(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``tensors`` to ``path`` atomically (a temporary file, then a rename), without safetensors metadata:
    AUTOMATIC1111 reads any metadata as an SD 1.x LoRA's unless it names the base (kohya's ``ss_*`` keys)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with io_errors(path):
            save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_kohya_beside(folder: Path, final: Path, alpha: float | None) -> Path | None:
    """In a LoRA ``folder`` being written (whose final place is ``final``), the kohya file of its
    ``pytorch_lora_weights.safetensors`` for a UNet LoRA; None (nothing written) for a transformer LoRA or a DoRA
    (which kohya's format cannot hold)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / LORA_FILE))
    if not is_unet_lora(state) or is_dora(state):
        return None
    return save_kohya(to_kohya(state, alpha), folder / f"{kohya_stem(final)}{SUFFIX}")


def export_kohya(source: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """``focusnfix export SOURCE --format kohya``: the kohya file of a run folder's, a LoRA folder's or a
    diffusers-format file's LoRA, written to ``out`` (a ``.safetensors`` path or an existing folder; default:
    beside the source, ``<name>_kohya.safetensors``). Returns (the file, its tensors)."""
    from safetensors.torch import load_file

    weights = check_lora_file(source)  # missing, not a LoRA, truncated or NaN: one line, status 2
    state = load_file(str(weights))
    if any(k.startswith(PREFIX) for k in state):
        raise FocusNFixError(f"{short_path(weights, 60)} is already a kohya-format LoRA; load it as it is")
    stem = kohya_stem(weights.parent) if weights.name == LORA_FILE else _safe(weights.stem)
    target = _target(out, weights.parent / f"{stem}{SUFFIX}", f"{stem}{SUFFIX}")
    if target.resolve() == weights.resolve():
        raise FocusNFixError(f"--out {short_path(target)} is the source LoRA itself; choose another file")
    tensors = to_kohya(state, lora_alpha(weights))
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_kohya(tensors, target), tensors


def _target(out: str | Path | None, default: Path, name: str) -> Path:
    """Where ``focusnfix export`` writes: ``default``, ``out/name`` for a folder, or the file ``out``."""
    if out is None:
        target = default
    elif Path(out).is_dir():
        target = Path(out) / name
    elif Path(out).suffix != ".safetensors":
        raise FocusNFixError(f"--out {short_path(out)} must be a .safetensors file or an existing folder")
    else:
        target = Path(out)
    if target.is_dir():
        raise FocusNFixError(f"--out {short_path(target)} is a folder; give a file name ending in .safetensors")
    check_writable_folder(target.parent, "--out")
    return target
