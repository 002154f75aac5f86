"""The LoRA of a run in diffusers format with its model card: ``RUN/lora/`` at the end, and the
``train.export_lora_steps`` exports ``RUN/lora-step-NNNNNN/``; for a UNet (SD 1.x/2.x, SDXL) also a kohya-format
copy, ``<run>_kohya.safetensors``, for AUTOMATIC1111 and ComfyUI (:mod:`focusnfix.runs.kohya`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..backbones.lora import save_lora
from ..config import LoRAConfig
from .checkpoint import atomic_dir, fault_point, io_errors
from .kohya import write_kohya_beside
from .modelcard import write_model_card


def export_name(step: int) -> str:
    """The folder of ``train.export_lora_steps``' LoRA at ``step`` inside the run folder."""
    return f"lora-step-{step:06d}"


def write_lora_folder(out: Path, name: str, step: int, unet: torch.nn.Module, lora: LoRAConfig, targets: list[str],
               pipeline: type, reward: str | None, hub_repo_id: str | None,
               state: dict[str, torch.Tensor] | None) -> Path:
    """``out/name/``: the diffusers-format LoRA of ``unet`` (or its gathered ``state``) for a ``pipeline``, its
    kohya-format copy (UNet families) and its model card, written atomically. ``hub_repo_id``: what the card of
    ``lora/`` loads from."""
    folder = out / name
    with io_errors(folder), atomic_dir(folder) as tmp:
        fault_point("lora-middle" if name == "lora" else "export-middle", step)
        save_lora(unet, tmp, lora.rank, lora.alpha, targets, pipeline, state=state)
        write_kohya_beside(tmp, folder, lora.alpha if lora.alpha is not None else lora.rank)
        load_id = hub_repo_id if name == "lora" else None
        write_model_card(tmp, out, step, pipeline.__name__, reward,
                         load_id or str((out if not out.is_absolute() else Path(out.name)) / name))
    return folder


def drop_exports_after(out: Path, step: int) -> None:
    """A resume that changed config keys replaces the trajectory after ``step``: its exports go too."""
    for folder in sorted(out.glob("lora-step-*")):
        if folder.name[len("lora-step-"):].isdigit() and int(folder.name[len("lora-step-"):]) > step:
            shutil.rmtree(folder, ignore_errors=True)
