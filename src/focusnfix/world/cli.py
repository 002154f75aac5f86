"""``focusnfix world ...``: train the built-in world and measure its quality gates.

Use through the main CLI (``register(subparsers)``) or standalone::

    python -m focusnfix.world.cli train --out runs/world --threads 1 --install
    python -m focusnfix.world.cli install --out runs/world   # (train --install does this)
    python -m focusnfix.world.cli gates --json runs/world/gates.json
    # the flow-matching (SD3-format) world, on the UNet world's VAE and text encoder:
    python -m focusnfix.world.cli train --arch flow --out runs/world-flow --threads 1 --install
    python -m focusnfix.world.cli gates --arch flow --json runs/world-flow/gates.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from ..errors import FocusNFixError

STAGES = ("vae", "text", "unet", "rewards", "judges")
# what a stage reads from --out, by the earlier stage that writes it (world/train.py: train_unet loads them)
STAGE_INPUTS = {"unet": {"vae": ("vae/config.json",), "text": ("text_encoder/config.json", "tokenizer/vocab.json")}}
BASE_PARTS = ("vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json")  # what --base must hold
FLOW_STAGES = ("transformer",)  # the flow world trains only its transformer (VAE, text encoder: the UNet world's)
PIPELINE_FOLDERS = {"unet": "pipeline", "flow": "flow_pipeline"}  # under the weights folder
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # a diffusers model's weights, rewritten by the install


def _half_storage(path: Path) -> None:
    """Rewrite a diffusers safetensors file with fp16 storage (diffusers loads it back as fp32)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(path),
              metadata={"format": "pt"})


def _install(out: Path, dest: Path) -> None:
    """Copy the final pipeline and the reward / judge weights into ``dest``.

    UNet and VAE weights are stored in fp16 to halve the package size; diffusers loads them
    into the fp32 modules (the gates are measured on these installed weights).
    """
    from .train_heads import FILES

    dest.mkdir(parents=True, exist_ok=True)
    if (out / "pipeline").exists():
        shutil.rmtree(dest / "pipeline", ignore_errors=True)
        shutil.copytree(out / "pipeline", dest / "pipeline")
        for part in ("unet", "vae"):
            _half_storage(dest / "pipeline" / part / "diffusion_pytorch_model.safetensors")
    for name in FILES.values():
        if (out / f"{name}.safetensors").exists():
            shutil.copy2(out / f"{name}.safetensors", dest / f"{name}.safetensors")


def _install_flow(out: Path, dest: Path) -> None:
    """Copy a flow training folder's pipeline to ``dest/flow_pipeline`` (transformer and VAE in fp16
    storage, as the UNet world; the VAE's values are already fp16-exact)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / PIPELINE_FOLDERS["flow"]
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out / "pipeline", target)
    for part in ("transformer", "vae"):
        _half_storage(target / part / "diffusion_pytorch_model.safetensors")
        config = json.loads((target / part / "config.json").read_text())
        config.pop("_name_or_path", None)  # the training machine's path of the base VAE
        (target / part / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    """Train every stage (or ``--only`` one), resumable; prints wall time per stage."""
    _defaults(args)
    _check_numbers(args)
    _check_train_inputs(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from . import WEIGHTS_DIR
    from . import train as T
    from . import train_heads as H

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch == "flow":
        return _train_flow(args)
    if args.only not in (None, *STAGES):
        raise FocusNFixError(f"--only {args.only} is a stage of --arch flow; UNet-world stages: {', '.join(STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = T.tiny_config() if args.tiny else T.DEFAULT
    heads = H.tiny_heads_config() if args.tiny else H.HeadsConfig()
    stages = (args.only,) if args.only else STAGES
    times_path = out / "train_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for stage in stages:
        t0 = time.time()
        if stage == "vae":
            T.train_vae(gen, out, args.resume)
        elif stage == "text":
            T.train_text(gen, out, args.resume)
        elif stage == "unet":
            T.train_unet(gen, out, args.resume)
        elif stage == "rewards":
            H.train_heads(heads, out, ("artifact", "safety"), args.resume)
        else:
            H.train_heads(heads, out, ("judge", "oracle"), args.resume)
        times[stage] = round(time.time() - t0, 1)
        times_path.write_text(json.dumps(times, indent=1))
        print(f"[world] {stage}: {times[stage]:.0f} s (this invocation)")
    if args.install:
        _install(out, Path(args.install_dir) if args.install_dir else WEIGHTS_DIR)
        print(f"[world] installed weights from {out}")
    return 0


def _train_flow(args: argparse.Namespace) -> int:
    """``train --arch flow``: the flow world's transformer on the VAE / text encoder of ``--base``."""
    from . import WEIGHTS_DIR, pipeline_path
    from . import train_flow as TF

    if args.only not in (None, *FLOW_STAGES):
        raise FocusNFixError(f"--arch flow trains only: {', '.join(FLOW_STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TF.tiny_flow_config() if args.tiny else TF.FlowTrainConfig()
    cfg.stage.stop_at = args.stop_at
    times_path = out / "train_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    t0 = time.time()
    log = TF.train_flow(cfg, out, args.base or pipeline_path(), args.resume)
    times["transformer"] = round(time.time() - t0, 1)
    times["transformer_steps_total_s"] = round(log.get("seconds", 0.0), 1)  # training loop, over all resumed runs
    times_path.write_text(json.dumps(times, indent=1))
    print(f"[world] transformer: {times['transformer']:.0f} s (this invocation), training loop "
          f"{times['transformer_steps_total_s']:.0f} s over all runs")
    if args.install:
        _install_flow(out, Path(args.install_dir) if args.install_dir else WEIGHTS_DIR)
        print(f"[world] installed the flow pipeline from {out}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    """Copy a finished training folder's results into the package weights (or ``--dest``)."""
    _defaults(args)
    from . import WEIGHTS_DIR

    _check_install_source(Path(args.out), args.arch)
    (_install_flow if args.arch == "flow" else _install)(Path(args.out), Path(args.dest) if args.dest else WEIGHTS_DIR)
    print(f"[world] installed weights from {args.out}")
    return 0


def _check_install_source(out: Path, arch: str) -> None:
    """One line, before anything is copied, when ``out`` is not a finished world training folder (its pipeline and
    the weights the install rewrites)."""
    if not out.is_dir():
        raise FocusNFixError(f"world install: training folder {str(out)[:120]!r} does not exist; give --out of a "
                             "finished `focusnfix world train`")
    if not (out / "pipeline" / "model_index.json").is_file():
        raise FocusNFixError(f"world install: {str(out)[:120]!r} holds no trained pipeline "
                             "(pipeline/model_index.json); "
                             f"run `focusnfix world train{' --arch flow' if arch == 'flow' else ''} --out ...` first")
    parts = ("transformer", "vae") if arch == "flow" else ("unet", "vae")
    needed = [f"pipeline/{part}/{name}" for part in parts for name in ("config.json", WEIGHTS_FILE)]
    missing = [f for f in needed if not (out / f).is_file()]
    if missing:
        raise FocusNFixError(f"world install: {str(out)[:120]!r} holds an incomplete pipeline (no {missing[0]}); "
                             "finish its `focusnfix world train` (--resume) first")


def _check_train_inputs(args: argparse.Namespace) -> None:
    """One line, before any folder is made: ``--base`` without ``--arch flow`` or without its parts, or ``--only`` a
    stage whose inputs the earlier stages have not written to ``--out``."""
    if args.base is not None:
        if args.arch != "flow":
            raise FocusNFixError("--base is for --arch flow (the UNet world trains its own VAE and text encoder); "
                                 "drop --base or add --arch flow")
        missing = [part for part in BASE_PARTS if not (Path(args.base) / part).is_file()]
        if missing:
            raise FocusNFixError(f"world train --base {str(args.base)[:100]!r} has no {missing[0]}; give a folder with "
                                 "vae/, text_encoder/ and tokenizer/ (a world pipeline), or drop --base")
    if args.arch == "flow" or args.only is None:
        return  # all stages in order: each writes what the next reads
    for stage, files in STAGE_INPUTS.get(args.only, {}).items():
        missing = [f for f in files if not (Path(args.out) / f).is_file()]
        if missing:
            raise FocusNFixError(f"world train --only {args.only} needs the {stage} stage's {missing[0]} in "
                                 f"{str(args.out)[:100]!r}; run `focusnfix world train --only {stage} --out ...` "
                                 "first, or train all stages")


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric flags of world train / gates (one line, status 2)."""
    import math

    for flag in ("threads", "stop_at", "n_heldout", "per_prompt"):
        value = getattr(args, flag, None)
        low = 0 if flag == "threads" else 1
        if value is not None and not low <= value <= 10**7:
            raise FocusNFixError(f"--{flag.replace('_', '-')} must be in [{low}, 10000000], got {value}")
    guidance = getattr(args, "guidance", None)
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= 1e4):
        raise FocusNFixError(f"--guidance must be a finite number in [0, 10000], got {guidance}")


def cmd_gates(args: argparse.Namespace) -> int:
    """Measure the quality gates; prints a table, writes JSON (+ a PNG grid of samples)."""
    _defaults(args)
    _check_numbers(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from . import WEIGHTS_DIR
    from .gates import format_table, run_gates

    pipeline = Path(args.weights or WEIGHTS_DIR) / PIPELINE_FOLDERS[args.arch]
    if not (pipeline / "model_index.json").is_file():
        raise FocusNFixError(f"world gates: no pipeline in {str(pipeline)[:120]!r}; "
                             "give --weights of an installed world "
                             "(the folder that holds pipeline/ or flow_pipeline/)")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    g = run_gates(args.weights or WEIGHTS_DIR, args.json, args.n_heldout, args.per_prompt,
                  args.guidance, folder=PIPELINE_FOLDERS[args.arch])
    print(format_table(g))
    print(f"[world] gates measured in {time.time() - t0:.0f} s; JSON: {args.json}")
    return 0 if all(g["pass"].values()) or not args.strict else 1


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``world`` command (with ``train`` and ``gates``) to an argparse subparsers object."""
    p = subparsers.add_parser("world", help="train / check the built-in synthetic world")
    sub = p.add_subparsers(dest="world_command", required=True)
    t = sub.add_parser("train", help="train the world's model, rewards and judges")
    t.add_argument("--arch", choices=("unet", "flow"), default="unet",
                   help="unet: the SD 1.x-format world (all stages); flow: its SD3-format sibling (transformer only)")
    t.add_argument("--only", choices=STAGES + FLOW_STAGES, help="train one stage (needs the earlier ones in --out)")
    t.add_argument("--out", default=None, help="output folder (checkpoints, stages); default runs/world, "
                   "runs/world-flow with --arch flow")
    t.add_argument("--base", default=None, help="--arch flow: folder with vae/, text_encoder/, tokenizer/ "
                   "(default: the committed world pipeline)")
    t.add_argument("--stop-at", type=int, default=None, help="--arch flow: stop (checkpointed) after this step")
    t.add_argument("--resume", action="store_true", help="continue from --out/ckpt")
    t.add_argument("--install", action="store_true", help="copy results into the package weights")
    t.add_argument("--install-dir", default=None, help="install here instead of the package")
    t.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    t.set_defaults(func=cmd_train)
    i = sub.add_parser("install", help="copy trained weights into the package")
    i.add_argument("--out", default=None, help="training folder (default runs/world or runs/world-flow)")
    i.add_argument("--arch", choices=("unet", "flow"), default="unet", help="which world's training folder")
    i.add_argument("--dest", default=None, help="destination (default: the package weights)")
    i.set_defaults(func=cmd_install)
    g = sub.add_parser("gates", help="measure the quality gates on held-out seeds")
    g.add_argument("--arch", choices=("unet", "flow"), default="unet", help="which world's pipeline to measure")
    g.add_argument("--weights", default=None, help="weights folder (default: the committed one)")
    g.add_argument("--json", default=None, help="where to write the JSON (default runs/world/gates.json, "
                   "runs/world-flow/gates.json with --arch flow)")
    g.add_argument("--n-heldout", type=int, default=1024, help="held-out ground-truth images")
    g.add_argument("--per-prompt", type=int, default=2, help="samples per grammar prompt (216)")
    g.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    g.add_argument("--strict", action="store_true", help="exit 1 when a gate fails")
    g.set_defaults(func=cmd_gates)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m focusnfix.world.cli {train,gates} ...``."""
    parser = argparse.ArgumentParser(prog="focusnfix")
    register(parser.add_subparsers(dest="command", required=True))
    argv = list(argv) if argv is not None else None
    import sys

    argv = argv if argv is not None else sys.argv[1:]
    if not argv or argv[0] != "world":
        argv = ["world", *argv]
    args = parser.parse_args(argv)
    return int(args.func(args))


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Per-architecture default folders (``runs/world`` or ``runs/world-flow``)."""
    run = "runs/world-flow" if getattr(args, "arch", "unet") == "flow" else "runs/world"
    if getattr(args, "out", "") is None:
        args.out = run
    if getattr(args, "json", "") is None:
        args.json = f"{run}/gates.json"
    return args


if __name__ == "__main__":
    raise SystemExit(main())
