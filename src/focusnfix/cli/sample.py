"""``focusnfix sample``: one PNG per (prompt, seed) with a model and an optional LoRA; writes OUT/index.json."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from .. import sampling
from ..backbones import load_backbone
from ..backbones.lora import check_lora_file, load_lora_into
from ..config import MAX_PROMPT_CHARS, MAX_SIDE, load_config
from ..errors import FocusNFixError, short_path
from ..images import save_png
from ..prompts import check_prompt_lengths, check_seeds, load_prompt_set, resolve_prompts
from ..runs.checkpoint import atomic_write_text
from .common import check_device_flags, check_out_folder, device_flags, exists

SAMPLE_DEFAULTS = {"steps": 20, "guidance_scale": 7.5, "negative_prompt": ""}  # without a run folder's config


def register(sub) -> argparse.ArgumentParser:
    """Add ``sample`` to an argparse subparsers object."""
    s = sub.add_parser("sample", help="generate images with a model and an optional LoRA", description=(
        "Generate one PNG per (prompt, seed) with the DDIM sampler; writes OUT/index.json."))
    s.add_argument("--model", help="diffusers folder, hub id, `world` (the built-in world), `world-flow` (its "
                   "flow-matching sibling) or `tiny`; default with --lora RUN_DIR: the run's model.path")
    s.add_argument("--lora", help="a run folder, a LoRA folder (one .safetensors file, any name) or a LoRA "
                   ".safetensors file; a run folder also gives the defaults of --model, --steps, --guidance-scale, "
                   "--negative-prompt and the image size (its config.yaml; flags given win)")
    s.add_argument("--lora-scale", type=float, help="weight of the LoRA at inference, fused or not (default: 1; "
                   "0 = the base model)")
    s.add_argument("--fuse", action="store_true", help="fuse the LoRA into the UNet weights (faster inference)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    s.add_argument("--prompts", help="prompt file (.txt, .csv, .tsv or .jsonl), a dataset folder written by "
                   "save_to_disk or a packaged set (parti:People, i2p:sexual, ...)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds (default: 0)")
    s.add_argument("--steps", type=int, help=f"sampler steps (default: the run's sampler.steps, else "
                   f"{SAMPLE_DEFAULTS['steps']})")
    s.add_argument("--guidance-scale", type=float, help=f"CFG scale (default: the run's sampler.guidance_scale, else "
                   f"{SAMPLE_DEFAULTS['guidance_scale']})")
    s.add_argument("--negative-prompt", help="negative prompt (default: the run's sampler.negative_prompt, else none)")
    s.add_argument("--resolution", type=int, help="image side in px (default: the run's model.resolution, else the "
                   "model's)")
    device_flags(s, dtype_default="float32")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=cmd_sample)
    return s


def _sample_inputs(args: argparse.Namespace) -> list[str]:
    """Check every sample flag before anything is loaded (one line each); return the prompts."""
    if not args.prompt and not args.prompts:
        raise FocusNFixError("sample needs prompts: --prompt TEXT (repeatable) or --prompts FILE_OR_SET")
    prompts = resolve_prompts(args.prompt) if args.prompt else []
    if args.prompts:  # a file or a packaged set (evaluation sets such as i2p:sexual are fine here)
        prompts += [r.prompt for r in load_prompt_set(args.prompts)]
    check_prompt_lengths(prompts, "--prompts")
    if not 1 <= args.steps <= 1000:
        raise FocusNFixError(f"--steps must be >= 1 (and <= 1000), got {args.steps}")
    if not math.isfinite(args.guidance_scale) or not 0 <= args.guidance_scale <= 1e4:
        raise FocusNFixError(f"--guidance-scale must be a finite number in [0, 10000] (<= 1 turns CFG off), "
                             f"got {args.guidance_scale}")
    if len(args.negative_prompt) > MAX_PROMPT_CHARS:
        raise FocusNFixError(f"--negative-prompt is {len(args.negative_prompt)} characters long "
                             f"(max {MAX_PROMPT_CHARS})")
    if args.resolution is not None and not 1 <= args.resolution <= MAX_SIDE:
        raise FocusNFixError(f"--resolution must be in [1, {MAX_SIDE}] px, got {args.resolution}")
    check_seeds(args.seeds)
    if args.lora_scale is not None:
        if not args.lora:
            raise FocusNFixError("--lora-scale needs --lora (the LoRA it weighs)")
        if not math.isfinite(args.lora_scale) or abs(args.lora_scale) > 100:
            raise FocusNFixError(f"--lora-scale must be a finite number in [-100, 100] (1 = as trained, 0 = the base "
                                 f"model), got {args.lora_scale}")
    if args.lora:
        check_lora_file(args.lora)
    return prompts


def _run_defaults(args: argparse.Namespace) -> None:
    """Fill the sample flags not given from the run's ``config.yaml`` when ``--lora`` is a run folder
    (model.path, sampler steps / guidance / negative prompt, model.resolution and sampler.height/width,
    the size only when no size flag is given), else from :data:`SAMPLE_DEFAULTS`; print one line naming
    what came from the run."""
    taken = []
    run = Path(args.lora) if args.lora else None
    if run is not None and exists(str(run / "config.yaml")) and (run / "config.yaml").is_file():
        cfg = load_config(run / "config.yaml")
        picks = [("model", "model.path", cfg.model.path), ("steps", "sampler.steps", cfg.sampler.steps),
                 ("guidance_scale", "sampler.guidance_scale", cfg.sampler.guidance_scale),
                 ("negative_prompt", "sampler.negative_prompt", cfg.sampler.negative_prompt)]
        if args.resolution is None and args.height is None and args.width is None:
            picks += [("resolution", "model.resolution", cfg.model.resolution),
                      ("height", "sampler.height", cfg.sampler.height), ("width", "sampler.width", cfg.sampler.width)]
        for flag, key, value in picks:
            if getattr(args, flag) is None and value is not None:
                setattr(args, flag, value)
                taken.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value:g}")
        if taken:
            print(f"sample: from {short_path(run / 'config.yaml')}: {', '.join(taken)} (flags given win)")
    if args.model is None:
        raise FocusNFixError("sample needs --model PATH (a diffusers folder, hub id, world, world-flow or tiny), "
                             "or --lora RUN_DIR whose config.yaml names model.path")
    for flag, value in SAMPLE_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def cmd_sample(args: argparse.Namespace) -> int:
    _run_defaults(args)
    prompts = _sample_inputs(args)
    device = check_device_flags(args)
    out = check_out_folder(args.out)
    backbone = load_backbone(args.model, args.dtype, resolution=args.resolution, device=device,
                             height=args.height, width=args.width)
    if args.lora:
        load_lora_into(backbone.pipe, args.lora)
        scale = 1.0 if args.lora_scale is None else args.lora_scale
        if args.fuse:  # merge into the weights, then drop the adapter layers: the base model's cost
            backbone.pipe.fuse_lora(lora_scale=scale)
            backbone.pipe.unload_lora_weights()
        elif scale != 1.0:  # the adapters' weight (peft's scaling times `scale`)
            names = backbone.pipe.get_active_adapters()
            backbone.pipe.set_adapters(names, adapter_weights=[scale] * len(names))
    jobs = [(p, s) for p in prompts for s in args.seeds]
    out.mkdir(parents=True, exist_ok=True)
    index = []  # one small entry per image; images go to disk batch by batch
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="sample", unit="batch", disable=args.no_progress):
        chunk = jobs[start: start + args.batch_size]
        images = sampling.generate(backbone, [p for p, _ in chunk], [s for _, s in chunk], args.steps,
                                   args.guidance_scale, args.negative_prompt).cpu()
        for j, ((prompt, seed), image) in enumerate(zip(chunk, images)):
            name = f"{start + j:05d}-seed{seed}.png"
            save_png(image, out / name)
            index.append({"file": name, "prompt": prompt, "seed": seed})
    atomic_write_text(out / "index.json", json.dumps(index, indent=1))
    print(f"wrote {len(index)} images to {out}")
    return 0
