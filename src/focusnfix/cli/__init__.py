"""Command-line interface: thin wrappers over the library. ``main(argv) -> int``.

Every failure prints one line ``focusnfix: error: ...`` (at most 300 characters) on stderr and exits
with status 2 (bad input: nothing was changed), 1 (a runtime failure: disk full, divergence, a dead
or frozen process of a distributed job; what was saved before is intact) or 130 (Ctrl-C). README,
"Errors and exit statuses"; ``--debug`` adds the traceback and the libraries' log lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import MAX_MESSAGE, FocusNFixError, RunFailed, one_line, os_error_message, os_error_status, short_path

PREFIX = "focusnfix: error: "
SAMPLE_DEFAULTS = {"steps": 20, "guidance_scale": 7.5, "negative_prompt": ""}  # without a run folder's config


class _UsageError(Exception):
    """A command line argparse cannot parse (reported as one line, status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (subcommand parsers inherit the class)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="focusnfix", description="Focus-N-Fix: region-aware reward fine-tuning of text-to-image diffusion models.")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"focusnfix {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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

    s = sub.add_parser("sample", help="generate images with a model and an optional LoRA", description=(
        "Generate one PNG per (prompt, seed) with the DDIM sampler; writes OUT/index.json."))
    s.add_argument("--model", help="diffusers folder, hub id, `world` (the built-in world), `world-flow` (its flow-matching "
                   "sibling) or `tiny`; default with --lora RUN_DIR: the run's model.path")
    s.add_argument("--lora", help="a run folder, a LoRA folder (one .safetensors file, any name) or a LoRA .safetensors file; "
                   "a run folder also gives the defaults of --model, --steps, --guidance-scale, --negative-prompt and "
                   "the image size (its config.yaml; flags given win)")
    s.add_argument("--lora-scale", type=float, help="weight of the LoRA at inference, fused or not (default: 1; 0 = the base model)")
    s.add_argument("--fuse", action="store_true", help="fuse the LoRA into the UNet weights (faster inference)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    s.add_argument("--prompts", help="prompt file (.txt, .csv or .tsv) or a packaged set (parti:People, i2p:sexual, ...)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds (default: 0)")
    s.add_argument("--steps", type=int, help=f"sampler steps (default: the run's sampler.steps, else {SAMPLE_DEFAULTS['steps']})")
    s.add_argument("--guidance-scale", type=float, help=f"CFG scale (default: the run's sampler.guidance_scale, else "
                   f"{SAMPLE_DEFAULTS['guidance_scale']})")
    s.add_argument("--negative-prompt", help="negative prompt (default: the run's sampler.negative_prompt, else none)")
    s.add_argument("--resolution", type=int, help="image side in px (default: the run's model.resolution, else the model's)")
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

    for module in ("report", "rating", "world.cli", "runs.hub"):
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
    from ..config import MAX_SIDE
    from ..devices import check_batch_size, check_dtype, resolve_device

    check_batch_size(args.batch_size)
    if args.batch_size > 4096:
        raise FocusNFixError(f"--batch-size must be <= 4096, got {args.batch_size}")
    if args.dtype is not None:
        check_dtype(args.dtype)
    for side in ("height", "width"):
        value = getattr(args, side)
        if value is not None and value < 1:
            raise FocusNFixError(f"--{side} must be >= 1 px, got {value}")
        if value is not None and value > MAX_SIDE:
            raise FocusNFixError(f"--{side} must be <= {MAX_SIDE} px, got {value}")
    return resolve_device(args.device)


def check_out_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work on an output folder that cannot be made: a part of the path is a file, the
    path is too long, or the nearest existing folder is not writable."""
    out = Path(path)
    try:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    except OSError as e:
        raise FocusNFixError(f"{flag}: {os_error_message(e, out)}") from None
    if blocker is not None:
        what = "is a file; choose a folder" if blocker == out else f"is under the file {short_path(blocker)}; choose a folder"
        raise FocusNFixError(f"{flag} {short_path(out)} {what}")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FocusNFixError(f"{flag}: cannot write to {short_path(parent)}; choose a writable folder")
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..evaluation.runner import Evaluation
    from ..prompts.sets import load_prompt_set
    from ..prompts import PromptRecord

    from ..prompts import check_seeds

    device = _check_device_flags(args)
    if args.limit is not None and args.limit < 1:
        raise FocusNFixError(f"--limit must be >= 1 (the number of prompts to use), got {args.limit}")
    check_seeds(args.seeds)
    check_out_folder(args.out)
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
    records = records[: args.limit] if args.limit is not None else records
    ev = Evaluation(cfg, args.methods, records, args.seeds, args.out, args.batch_size, args.clip_model,
                    _extra_metrics(cfg), progress=not args.no_progress, device=device)
    ev.prompt_set = args.prompts or "config prompts"
    out = ev.run(overwrite=args.overwrite)
    try:
        from ..report import render_report
    except ImportError:
        print(f"eval folder: {out}")
        return 0
    print(f"report: {render_report(out)}")
    return 0


def _extra_metrics(cfg) -> list:
    """World-specific judges (alignment oracle, defect judge) when evaluating the built-in world."""
    from ..evaluation.world_metrics import eval_metrics_for

    return eval_metrics_for(cfg.model.path)


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import field_help, load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not _exists(config):
        config, overrides = None, [config, *overrides]  # overrides only: start from the defaults
    if args.help_config:
        _print_config_help(field_help(), None if config is None and not overrides else load_config(config, overrides))
        return 0
    if config is None and not overrides:
        raise FocusNFixError("train needs a CONFIG file and/or key=value overrides, e.g. `focusnfix train configs/demo.yaml`")
    cfg = load_config(config, overrides)
    resume = args.resume
    if isinstance(resume, str):  # --resume CHECKPOINT: checked before the model is loaded
        from ..runs.resume import resolve_checkpoint

        resume = resolve_checkpoint(cfg.train.output_dir, resume) or True
    from ..training.trainer import train

    out = train(cfg, resume=resume, progress=not args.no_progress)
    print(f"run folder: {out}")
    return 0


def _print_config_help(rows: list[tuple[str, str, str]], cfg) -> None:
    """``--help-config``: key, default and meaning; with a config, its value beside the default (``*``
    marks the keys it changes)."""
    if cfg is None:
        for key, default, text in rows:
            print(f"{key:28s} {default:38s} {text}")
        return
    from ..config import to_dict
    from ..errors import short
    from ..runs.resume import flatten

    values = flatten(to_dict(cfg))
    print(f"  {'key':28s} {'default':24s} {'this config':24s} meaning   (* = changed by the config or overrides)")
    for key, default, text in rows:
        mark = " " if repr(values.get(key)) == default else "*"
        print(f"{mark} {key:28s} {default:24s} {short(values.get(key)):24s} {text}")


def _train_argv(argv: list[str]) -> list[str]:
    """``--resume`` takes an optional CHECKPOINT; a following word that is not one (the CONFIG, a
    key=value override) stays a positional argument, as before ``--resume`` took a value."""
    argv = list(argv)
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "train" or "--" in argv:
        return argv
    for i, arg in enumerate(argv):
        if arg == "--resume" and i + 1 < len(argv) and not argv[i + 1].startswith("-") and not _names_checkpoint(argv[i + 1]):
            return argv[:i] + argv[i + 1:] + ["--resume"]
    return argv


def _names_checkpoint(word: str) -> bool:
    """Whether a word after ``--resume`` names a checkpoint (an existing folder, or a path that looks like
    one: a typo there gets the checkpoint's message) rather than a config file or an override."""
    if "=" in word and not _exists(word):
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


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte
        return False


def _sample_inputs(args: argparse.Namespace) -> list[str]:
    """Check every sample flag before anything is loaded (one line each); return the prompts."""
    from ..config import MAX_SIDE
    from ..prompts.sets import load_prompt_set
    from ..prompts import MAX_PROMPT_CHARS, check_prompt_lengths, check_seeds, resolve_prompts

    if not args.prompt and not args.prompts:
        raise FocusNFixError("sample needs prompts: --prompt TEXT (repeatable) or --prompts FILE_OR_SET")
    prompts = resolve_prompts(args.prompt) if args.prompt else []
    if args.prompts:  # a file or a packaged set (evaluation sets such as i2p:sexual are fine here)
        prompts += [r.prompt for r in load_prompt_set(args.prompts)]
    check_prompt_lengths(prompts, "--prompts")
    if not 1 <= args.steps <= 1000:
        raise FocusNFixError(f"--steps must be >= 1 (and <= 1000), got {args.steps}")
    if not math.isfinite(args.guidance_scale) or not 0 <= args.guidance_scale <= 1e4:
        raise FocusNFixError(f"--guidance-scale must be a finite number in [0, 10000] (<= 1 turns CFG off), got {args.guidance_scale}")
    if len(args.negative_prompt) > MAX_PROMPT_CHARS:
        raise FocusNFixError(f"--negative-prompt is {len(args.negative_prompt)} characters long (max {MAX_PROMPT_CHARS})")
    if args.resolution is not None and not 1 <= args.resolution <= MAX_SIDE:
        raise FocusNFixError(f"--resolution must be in [1, {MAX_SIDE}] px, got {args.resolution}")
    check_seeds(args.seeds)
    if args.lora_scale is not None:
        if not args.lora:
            raise FocusNFixError("--lora-scale needs --lora (the LoRA it weighs)")
        if not math.isfinite(args.lora_scale) or abs(args.lora_scale) > 100:
            raise FocusNFixError(f"--lora-scale must be a finite number in [-100, 100] (1 = as trained, 0 = the base model), got {args.lora_scale}")
    if args.lora:
        from ..backbones.lora import check_lora_file

        check_lora_file(args.lora)
    return prompts


def _run_defaults(args: argparse.Namespace) -> None:
    """Fill the sample flags not given from the run's ``config.yaml`` when ``--lora`` is a run folder
    (model.path, sampler steps / guidance / negative prompt, model.resolution and sampler.height/width,
    the size only when no size flag is given), else from :data:`SAMPLE_DEFAULTS`; print one line naming
    what came from the run."""
    taken = []
    run = Path(args.lora) if args.lora else None
    if run is not None and _exists(str(run / "config.yaml")) and (run / "config.yaml").is_file():
        from ..config import load_config

        cfg = load_config(run / "config.yaml")
        picks = [("model", "model.path", cfg.model.path), ("steps", "sampler.steps", cfg.sampler.steps),
                 ("guidance_scale", "sampler.guidance_scale", cfg.sampler.guidance_scale),
                 ("negative_prompt", "sampler.negative_prompt", cfg.sampler.negative_prompt)]
        if args.resolution is None and args.height is None and args.width is None:
            picks += [("resolution", "model.resolution", cfg.model.resolution), ("height", "sampler.height", cfg.sampler.height),
                      ("width", "sampler.width", cfg.sampler.width)]
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
    device = _check_device_flags(args)
    out = check_out_folder(args.out)
    from ..backbones import load_backbone
    from ..runs.checkpoint import atomic_write_text
    from ..images import save_png
    from ..sampling import generate

    backbone = load_backbone(args.model, args.dtype, resolution=args.resolution, device=device,
                             height=args.height, width=args.width)
    if args.lora:
        from ..backbones.lora import load_lora_into

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
    atomic_write_text(out / "index.json", json.dumps(index, indent=1))
    print(f"wrote {len(index)} images to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    try:
        args = parser.parse_args(_train_argv(sys.argv[1:] if argv is None else argv))  # (--help and --version exit through SystemExit)
    except _UsageError as e:
        return _fail(2, str(e))
    if args.command is None:
        parser.print_help()
        return 2
    with _contained_output(args.debug):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("focusnfix: interrupted", file=sys.stderr)
            return 130
        except SystemExit as e:  # a subcommand that exits by itself: its status (a text is an error message)
            if e.code is None or isinstance(e.code, int):
                return int(e.code or 0)
            return _fail(2, str(e.code))
        except BaseException as e:  # noqa: BLE001: every failure ends as one line with a status
            status, message = describe_error(e)
            if args.debug:
                traceback.print_exc()
            return _fail(status, message)


def _fail(status: int, message: str) -> int:
    print(PREFIX + one_line(message, MAX_MESSAGE - len(PREFIX)), file=sys.stderr)
    return status


def describe_error(e: BaseException) -> tuple[int, str]:
    """``(exit status, message)`` of any exception (the error contract in README)."""
    from ..errors import safetensors_os_error

    if isinstance(e, FocusNFixError):
        return 2, str(e)
    if isinstance(e, RunFailed):
        return 1, str(e)
    if isinstance(e, OSError):
        return os_error_status(e), os_error_message(e)
    inner = safetensors_os_error(e, "a .safetensors file") if type(e).__name__ == "SafetensorError" else None
    if inner is not None:  # safetensors' own error type around an OSError (disk full while saving)
        return os_error_status(inner), os_error_message(inner)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return 1, ("out of memory: lower --batch-size / train.batch_size, the resolution, or enable "
                   "sampler.grad_checkpointing")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = lines[0] if lines else ""
    return 1, (f"unexpected {type(e).__name__}: {detail[:120]}; rerun with --debug for the traceback and please "
               "report it")


_LIBRARIES = ("accelerate", "torch", "diffusers", "transformers", "peft", "huggingface_hub", "PIL", "urllib3", "filelock")


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


@contextmanager
def _contained_output(debug: bool):
    """Our own progress bars, warnings and errors only: the libraries' loading bars, log lines and
    warnings are silenced (``--debug`` keeps them); focusnfix's own warnings print as one line."""
    _quiet_libraries()
    if debug:
        yield
        return
    package = str(Path(__file__).resolve().parent.parent)
    levels = {name: logging.getLogger(name).level for name in _LIBRARIES}

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            print(f"focusnfix: warning: {one_line(str(message), MAX_MESSAGE - 19)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
