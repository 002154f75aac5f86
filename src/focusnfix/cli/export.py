"""``focusnfix export RUN_OR_LORA --format kohya [--out FILE]``: a LoRA in another tool's format
(:mod:`focusnfix.runs.kohya`)."""
from __future__ import annotations

import argparse

from ..runs.kohya import export_kohya


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``export RUN_OR_LORA [--format kohya] [--out FILE]``."""
    p = subparsers.add_parser("export", help="write a run's LoRA in kohya format (AUTOMATIC1111, ComfyUI)",
                              description=(
        "Write the kohya-format copy (lora_unet_* keys with lora_down / lora_up / alpha, the LoRA's alpha kept) of an "
        "SD 1.x/2.x or SDXL LoRA, for AUTOMATIC1111/Forge and ComfyUI. Runs trained now already hold it in lora/; this "
        "converts older ones. SD3 and FLUX LoRAs need no conversion: ComfyUI loads their "
        "pytorch_lora_weights.safetensors as it is (docs/sharing.md)."))
    p.add_argument("source", metavar="RUN_OR_LORA", help="a run folder (its lora/), a LoRA folder, or a "
                   "diffusers-format LoRA .safetensors file")
    p.add_argument("--format", default="kohya", choices=("kohya",), help="the output format (default: kohya)")
    p.add_argument("--out", metavar="FILE", help="a .safetensors file, or an existing folder to write it into "
                   "(default: beside the LoRA, NAME_kohya.safetensors; an existing file is replaced)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    path, tensors = export_kohya(args.source, args.out)
    modules = sum(k.endswith(".alpha") for k in tensors)
    print(f"wrote {path} ({modules} modules, {len(tensors)} tensors): copy it into ComfyUI's models/loras or "
          "AUTOMATIC1111's models/Lora")
    return 0
