"""Command-line interface: thin wrappers over the library. ``main(argv) -> int``.

User errors print one line and exit with status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .errors import FocusNFixError, TrainingDiverged


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="focusnfix", description="Focus-N-Fix: region-aware reward fine-tuning of text-to-image diffusion models.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"focusnfix {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a LoRA with Focus-N-Fix or DRaFT", description=(
        "Train from a YAML config plus dotted overrides, e.g. `focusnfix train configs/demo.yaml train.lr=1e-4 "
        "lora.rank=8`. Writes the run folder train.output_dir (config.yaml, lora/, checkpoints/, samples/, "
        "metrics.jsonl, summary.json)."))
    t.add_argument("config", nargs="?", help="YAML config file (optional: overrides alone start from the defaults)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in train.output_dir")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images with a model and an optional LoRA", description=(
        "Generate one PNG per (prompt, seed) with the DDIM sampler; writes OUT/index.json."))
    s.add_argument("--model", required=True, help="diffusers folder, hub id, `world` or `tiny`")
    s.add_argument("--lora", help="a run folder, a LoRA folder (one .safetensors file, any name) or a LoRA .safetensors file")
    s.add_argument("--fuse", action="store_true", help="fuse the LoRA into the UNet weights (faster inference)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    s.add_argument("--prompts", help="prompt file (.txt, .csv or .tsv) or a packaged set (parti:People, i2p:sexual, ...)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds (default: 0)")
    s.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    s.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale (default: 7.5)")
    s.add_argument("--negative-prompt", default="", help="negative prompt")
    s.add_argument("--resolution", type=int, help="image side in px (default: the model's)")
    _device_flags(s, dtype_default="float32")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="compare methods on identical (prompt, seed) pairs", description=(
        "Generate every method's images for the same prompts and seeds with the config's model and sampler, "
        "measure them against the base model (reward, change inside/outside the base mask, CLIP score, ...), "
        "write an eval folder and its report.html."))
    e.add_argument("--config", required=True, help="a training config YAML or a run folder (its config.yaml is used)")
    e.add_argument("--set", action="append", default=[], metavar="key=value", help="config override (repeatable)")
    e.add_argument("--methods", nargs="+", default=["base"], help=(
        "base | NAME=RUN_DIR | RUN_DIR | rg[:scale=S,start=A,end=B] | rg-region[:...] | "
        "sld[:weak|medium|strong|max][,scale=S,warmup=W,threshold=L,momentum=M,beta=B] | NAME=sld:... (RUN_DIR: a run "
        "folder, a LoRA folder or a LoRA .safetensors file)"))
    e.add_argument("--prompts", help="prompt set (parti:People, i2p:sexual, ...) or file; default: the config's prompts")
    e.add_argument("--limit", type=int, help="use only the first N prompts")
    e.add_argument("--seeds", type=int, nargs="+", help="noise seeds (default: each prompt's own seed, else 0)")
    _device_flags(e, dtype_default=None)
    e.add_argument("--clip-model", help="local CLIP folder or hub id for a CLIP-score alignment metric")
    e.add_argument("--out", required=True, help="eval folder to write (built in .partial-NAME next to it; rerunning an "
                   "interrupted eval with the same arguments skips its finished images)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing eval folder")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=cmd_eval)

    for module in ("report", "rating", "world.cli"):
        try:
            register = __import__(f"focusnfix.{module}", fromlist=["register"]).register
        except (ImportError, AttributeError):
            continue
        register(sub)
    return p


def _device_flags(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
    """--device, --dtype, --batch-size, --height, --width (shared by sample and eval)."""
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default=dtype_default, help="weights: float32, float16 or bfloat16 (default: "
                   + (dtype_default or "the config's model.dtype") + ")")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4); the images do not depend on it "
                   "beyond float rounding")
    p.add_argument("--height", type=int, help="image height in px (default: the model's or the config's)")
    p.add_argument("--width", type=int, help="image width in px (default: the model's or the config's)")


def _check_device_flags(args: argparse.Namespace):
    """Validate the shared flags before anything is loaded; return the torch device."""
    from .devices import check_batch_size, check_dtype, resolve_device

    check_batch_size(args.batch_size)
    if args.dtype is not None:
        check_dtype(args.dtype)
    for side in ("height", "width"):
        value = getattr(args, side)
        if value is not None and value < 1:
            raise FocusNFixError(f"--{side} must be >= 1 px, got {value}")
    return resolve_device(args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluation.runner import Evaluation
    from .prompt_sets import load_prompt_set
    from .prompts import PromptRecord

    device = _check_device_flags(args)
    config = Path(args.config)
    if config.is_dir():
        config = config / "config.yaml"
    overrides = list(args.set) + [f"model.dtype={args.dtype}"] * (args.dtype is not None)
    overrides += [f"sampler.{side}={getattr(args, side)}" for side in ("height", "width") if getattr(args, side) is not None]
    cfg = load_config(config, overrides)
    if args.prompts:
        records = load_prompt_set(args.prompts)
    else:
        records = [PromptRecord(p) for p in (cfg.data.sample_prompts or cfg.data.prompts)]
    records = records[: args.limit] if args.limit else records
    ev = Evaluation(cfg, args.methods, records, args.seeds, args.out, args.batch_size, args.clip_model,
                    _extra_metrics(cfg), progress=not args.no_progress, device=device)
    ev.prompt_set = args.prompts or "config prompts"
    out = ev.run(overwrite=args.overwrite)
    try:
        from .report import render_report
    except ImportError:
        print(f"eval folder: {out}")
        return 0
    print(f"report: {render_report(out)}")
    return 0


def _extra_metrics(cfg) -> list:
    """World-specific judges (alignment oracle, defect judge) when evaluating the built-in world."""
    from .evaluation.world_metrics import eval_metrics_for

    return eval_metrics_for(cfg.model.path)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import field_help, load_config

    if args.help_config:
        for key, default, text in field_help():
            print(f"{key:28s} {default:38s} {text}")
        return 0
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]  # overrides only: start from the defaults
    if config is None and not overrides:
        raise FocusNFixError("train needs a CONFIG file and/or key=value overrides, e.g. `focusnfix train configs/demo.yaml`")
    cfg = load_config(config, overrides)
    from .trainer import train

    out = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"run folder: {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .prompt_sets import load_prompt_set
    from .prompts import resolve_prompts

    prompts = resolve_prompts(args.prompt) if args.prompt or not args.prompts else []
    if args.prompts:  # a file or a packaged set (evaluation sets such as i2p:sexual are fine here)
        prompts += [r.prompt for r in load_prompt_set(args.prompts)]
    if args.steps < 1:
        raise FocusNFixError(f"--steps must be >= 1, got {args.steps}")
    device = _check_device_flags(args)
    if args.lora:
        from .lora import find_lora_file

        find_lora_file(args.lora)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FocusNFixError(f"--out {args.out!r} is a file; choose a folder")
    from .backbones import load_backbone
    from .images import save_png
    from .sampling import generate

    backbone = load_backbone(args.model, args.dtype, resolution=args.resolution, device=device,
                             height=args.height, width=args.width)
    if args.lora:
        from .lora import load_lora_into

        load_lora_into(backbone.pipe, args.lora)
        if args.fuse:  # merge into the weights, then drop the adapter layers: the base model's cost
            backbone.pipe.fuse_lora()
            backbone.pipe.unload_lora_weights()
    jobs = [(p, s) for p in prompts for s in args.seeds]
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    index = []  # one small entry per image; images go to disk batch by batch
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="sample", unit="batch", disable=args.no_progress):
        chunk = jobs[start: start + args.batch_size]
        images = generate(backbone, [p for p, _ in chunk], [s for _, s in chunk], args.steps, args.guidance_scale,
                          args.negative_prompt).cpu()
        for j, ((prompt, seed), image) in enumerate(zip(chunk, images)):
            name = f"{start + j:05d}-seed{seed}.png"
            save_png(image, out / name)
            index.append({"file": name, "prompt": prompt, "seed": seed})
    (out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(index)} images to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except FocusNFixError as e:
        if args.debug:
            traceback.print_exc()
        print(f"focusnfix: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"focusnfix: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("focusnfix: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Our own progress bars and errors only: silence the libraries' loading bars and warnings."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
