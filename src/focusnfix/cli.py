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
    s.add_argument("--model", required=True, help="diffusers folder, hub id, or `tiny`")
    s.add_argument("--lora", help="LoRA folder (a run's lora/ or any diffusers LoRA)")
    s.add_argument("--fuse", action="store_true", help="fuse the LoRA into the UNet weights (faster inference)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    s.add_argument("--prompts", help="prompt file (.txt, .csv or .tsv) or a packaged set (parti:People, i2p:sexual, ...)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds (default: 0)")
    s.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    s.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale (default: 7.5)")
    s.add_argument("--negative-prompt", default="", help="negative prompt")
    s.add_argument("--resolution", type=int, help="image side in px (default: the model's)")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="compare methods on identical (prompt, seed) pairs", description=(
        "Generate every method's images for the same prompts and seeds with the config's model and sampler, "
        "measure them against the base model (reward, change inside/outside the base mask, CLIP score, ...), "
        "write an eval folder and its report.html."))
    e.add_argument("--config", required=True, help="a training config YAML or a run folder (its config.yaml is used)")
    e.add_argument("--set", action="append", default=[], metavar="key=value", help="config override (repeatable)")
    e.add_argument("--methods", nargs="+", default=["base"], help=(
        "base | NAME=RUN_DIR | RUN_DIR | rg[:scale=S,start=A,end=B] | rg-region[:...] | sld[:weak|medium|strong|max]"))
    e.add_argument("--prompts", help="prompt set (parti:People, i2p:sexual, ...) or file; default: the config's prompts")
    e.add_argument("--limit", type=int, help="use only the first N prompts")
    e.add_argument("--seeds", type=int, nargs="+", help="noise seeds (default: each prompt's own seed, else 0)")
    e.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    e.add_argument("--clip-model", help="local CLIP folder or hub id for a CLIP-score alignment metric")
    e.add_argument("--out", required=True, help="eval folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing eval folder")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=cmd_eval)

    for module in ("report", "world.cli"):
        try:
            register = __import__(f"focusnfix.{module}", fromlist=["register"]).register
        except (ImportError, AttributeError):
            continue
        register(sub)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluation.runner import Evaluation
    from .prompt_sets import load_prompt_set
    from .prompts import PromptRecord

    config = Path(args.config)
    if config.is_dir():
        config = config / "config.yaml"
    cfg = load_config(config, args.set)
    if args.batch_size < 1:
        raise FocusNFixError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompts:
        records = load_prompt_set(args.prompts)
    else:
        records = [PromptRecord(p) for p in (cfg.data.sample_prompts or cfg.data.prompts)]
    records = records[: args.limit] if args.limit else records
    ev = Evaluation(cfg, args.methods, records, args.seeds, args.out, args.batch_size, args.clip_model,
                    _extra_metrics(cfg), progress=not args.no_progress)
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
    if args.batch_size < 1:
        raise FocusNFixError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lora and not (Path(args.lora) / "pytorch_lora_weights.safetensors").is_file():
        raise FocusNFixError(f"LoRA folder {args.lora!r} has no pytorch_lora_weights.safetensors; give a run's lora/ folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FocusNFixError(f"--out {args.out!r} is a file; choose a folder")
    from .backbones import load_backbone
    from .images import save_png
    from .sampling import generate

    backbone = load_backbone(args.model, resolution=args.resolution)
    if args.lora:
        from .lora import load_lora_into

        load_lora_into(backbone.pipe, args.lora)
        if args.fuse:  # merge into the weights, then drop the adapter layers: the base model's cost
            backbone.pipe.fuse_lora()
            backbone.pipe.unload_lora_weights()
    jobs = [(p, s) for p in prompts for s in args.seeds]
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    index = []
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="sample", unit="batch"):
        chunk = jobs[start: start + args.batch_size]
        images = generate(backbone, [p for p, _ in chunk], [s for _, s in chunk], args.steps, args.guidance_scale, args.negative_prompt)
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
