"""``focusnfix eval``: every method's images for the same (prompt, seed) pairs, measured, with a report."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import FocusNFixError
from ..evaluation.judges import build_judges, parse_judges
from ..evaluation.runner import Evaluation
from ..evaluation.world_metrics import eval_metrics_for
from ..prompts import PromptRecord, check_seeds, load_prompt_set
from ..report import render_report
from .common import check_device_flags, check_out_folder, device_flags


def register(sub) -> argparse.ArgumentParser:
    """Add ``eval`` to an argparse subparsers object."""
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
    e.add_argument("--prompts", help="prompt set (parti:People, i2p:sexual, ...), prompt file (.txt, .csv, .tsv, "
                   ".jsonl) or a dataset folder written by save_to_disk; default: the config's data.sample_prompts, "
                   "else its data.prompts (not its data.prompt_file, data.prompt_set or data.dataset: name those here)")
    e.add_argument("--limit", type=int, help="use only the first N prompts")
    e.add_argument("--seeds", type=int, nargs="+", help="noise seeds (default: each prompt's own seed, else 0)")
    device_flags(e, dtype_default=None)
    e.add_argument("--clip-model", help="local CLIP folder or hub id for a CLIP-score alignment metric")
    e.add_argument("--judge", action="append", default=[], metavar="NAME[=ARGS]", help=(
        "an independent judge scored on every image (repeatable): a reward name (ocr, haar-faces, haar-bodies, nsfw, "
        "nudenet, clip-zeroshot, ...) or package.module:Class, with its arguments as a YAML mapping after = "
        "(ocr={target: OPEN}); leads the report. docs/rewards.md, \"Judges\""))
    e.add_argument("--out", required=True, help="eval folder to write (built in .partial-NAME next to it; rerunning an "
                   "interrupted eval with the same arguments skips its finished images)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing eval folder")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=cmd_eval)
    return e


def cmd_eval(args: argparse.Namespace) -> int:
    device = check_device_flags(args)
    if args.limit is not None and args.limit < 1:
        raise FocusNFixError(f"--limit must be >= 1 (the number of prompts to use), got {args.limit}")
    check_seeds(args.seeds)
    check_out_folder(args.out)
    judges = parse_judges(args.judge)  # an unknown judge fails here, before the model loads
    config = Path(args.config)
    if config.is_dir():
        config = config / "config.yaml"
    overrides = list(args.set) + [f"model.dtype={args.dtype}"] * (args.dtype is not None)
    overrides += [f"sampler.{side}={getattr(args, side)}" for side in ("height", "width")
                  if getattr(args, side) is not None]
    cfg = load_config(config, overrides)
    if args.prompts:
        records = load_prompt_set(args.prompts)
    else:
        records = [PromptRecord(p) for p in (cfg.data.sample_prompts or cfg.data.prompts)]
        if not records:
            raise FocusNFixError("the config has no data.sample_prompts or data.prompts (eval's default prompts); "
                                 "give --prompts, e.g. the config's data.prompt_file or data.prompt_set")
    records = records[: args.limit] if args.limit is not None else records
    extra = _extra_metrics(cfg) + build_judges(judges, cfg.reward.name)
    ev = Evaluation(cfg, args.methods, records, args.seeds, args.out, args.batch_size, args.clip_model,
                    extra, progress=not args.no_progress, device=device)
    ev.prompt_set = args.prompts or "config prompts"
    out = ev.run(overwrite=args.overwrite)
    print(f"report: {render_report(out)}")
    return 0


def _extra_metrics(cfg) -> list:
    """World-specific judges (alignment oracle, defect judge) when evaluating the built-in world."""
    return eval_metrics_for(cfg.model.path)
