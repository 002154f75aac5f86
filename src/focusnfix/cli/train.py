"""``focusnfix train CONFIG [key=value ...] [--resume [CHECKPOINT]] [--help-config]``: fine-tune a LoRA."""
from __future__ import annotations

import argparse
import shutil
import textwrap
from pathlib import Path

from ..config import field_help, field_limits, load_config, to_dict
from ..errors import FocusNFixError, short
from ..runs.resume import flatten, resolve_checkpoint
from ..training.trainer import train
from .common import exists


def register(sub) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse subparsers object."""
    t = sub.add_parser("train", help="fine-tune a LoRA with Focus-N-Fix or DRaFT", description=(
        "Train from a YAML config plus dotted overrides, e.g. `focusnfix train configs/demo.yaml train.lr=1e-4 "
        "lora.rank=8`. Writes the run folder train.output_dir (config.yaml, lora/, checkpoints/, samples/, "
        "metrics.jsonl, summary.json)."))
    t.add_argument("config", nargs="?", help="YAML config file (optional: overrides alone start from the defaults)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT", help=(
        "continue from the newest complete checkpoint in train.output_dir, or from the checkpoint folder given "
        "(train.output_dir/checkpoints/step-N; the newer checkpoints are then removed)"))
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--help-config", action="store_true", help=(
        "list every config key with its default and meaning; with CONFIG and/or overrides, also their value"))
    t.set_defaults(func=cmd_train)
    return t


def cmd_train(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not exists(config):
        config, overrides = None, [config, *overrides]  # overrides only: start from the defaults
    if args.help_config:
        _print_config_help(field_help(), None if config is None and not overrides else load_config(config, overrides))
        return 0
    if config is None and not overrides:
        raise FocusNFixError("train needs a CONFIG file and/or key=value overrides, e.g. "
                             "`focusnfix train configs/demo.yaml`")
    cfg = load_config(config, overrides)
    resume = args.resume
    if isinstance(resume, str):  # --resume CHECKPOINT: checked before the model is loaded
        resume = resolve_checkpoint(cfg.train.output_dir, resume) or True
    out = train(cfg, resume=resume, progress=not args.no_progress)
    print(f"run folder: {out}")
    return 0


def _print_config_help(rows: list[tuple[str, str, str]], cfg) -> None:
    """``--help-config``: key, default and meaning (with its range or valid values), the meaning wrapped to the
    terminal's width (at most 100 columns) under its own column; with a config, its value beside the default
    (``*`` marks the keys it changes)."""
    limits = field_limits()
    rows = [(key, default, f"{text} ({limits[key]})" if key in limits else text) for key, default, text in rows]
    width = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
    key_w, default_w = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    if cfg is None:
        lines = [(f"{key:{key_w}s}  {default:{default_w}s}", text) for key, default, text in rows]
    else:
        values = flatten(to_dict(cfg))
        room = width - (key_w + default_w + 6)  # a long value is cut to the line
        shown = {key: _cut(short(values.get(key)), room) for key, _, _ in rows}
        value_w = min(24, max(len(v) for v in shown.values()))
        header = f"  {'key':{key_w}s}  {'default':{default_w}s}  {'this config':{value_w}s}"
        print(header + "  (*: changed)" if len(header) + 14 <= width else header.rstrip())
        lines = [(f"{' ' if repr(values.get(key)) == default else '*'} {key:{key_w}s}  {default:{default_w}s}  "
                  f"{shown[key]:{value_w}s}", text) for key, default, text in rows]
    column = max(len(head) for head, _ in lines) + 2
    below = width - column < 40  # too narrow a column left: each meaning on the lines below its key
    for head, text in lines:
        if below:
            print(head.rstrip())
        indent = " " * (6 if below else column)
        print(textwrap.fill(text, width, initial_indent=indent if below else f"{head:{column}s}",
                            subsequent_indent=indent, break_on_hyphens=False))


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: max(most - 3, 1)] + "..."


def train_argv(argv: list[str]) -> list[str]:
    """``--resume`` takes an optional CHECKPOINT; a following word that is not one (the CONFIG, a
    key=value override) stays a positional argument, as before ``--resume`` took a value."""
    argv = list(argv)
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "train" or "--" in argv:
        return argv
    for i, arg in enumerate(argv):
        if (arg == "--resume" and i + 1 < len(argv) and not argv[i + 1].startswith("-")
                and not _names_checkpoint(argv[i + 1])):
            return argv[:i] + argv[i + 1:] + ["--resume"]
    return argv


def _names_checkpoint(word: str) -> bool:
    """Whether a word after ``--resume`` names a checkpoint (an existing folder, or a path that looks like
    one: a typo there gets the checkpoint's message) rather than a config file or an override."""
    if "=" in word and not exists(word):
        return False
    path = Path(word)
    try:
        if path.is_dir():
            return True
        if path.is_file():
            return False
    except (OSError, ValueError):
        return False
    return path.name.startswith("step-") or path.parent.name == "checkpoints"
