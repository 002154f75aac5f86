"""The GPU check: one command that exercises and measures everything with a CUDA path.

    python benchmarks/gpu_check.py            # on a CUDA machine (or: make gpu-check)
    python benchmarks/gpu_check.py --tiny     # CPU smoke path at tiny sizes (tests/test_gpu_check.py)

Parts (each timed; a failing part is recorded and the others still run; exit status 1 if any failed):

1. ``tests``: ``pytest -m cuda`` (the tests that take GPU paths; they skip without CUDA).
2. ``sd15_step``: ``benchmarks/sd15_step.py``: one Focus-N-Fix step on an SD1.5-size UNet + VAE at
   512 px, K = 2, bf16 autocast, gradient checkpointing off and on: seconds per step, peak memory.
3. ``demo``: ``make demo`` (``python -m focusnfix.cli.demo``): trains Focus-N-Fix and DRaFT on the world
   model and evaluates them, on the GPU.
4. ``eval``: ``focusnfix eval`` of 50 images per method (base, and the demo's DRaFT and Focus-N-Fix
   LoRAs) with seconds per image and peak GPU memory; the same eval of 10 images, to show peak memory
   does not grow with the number of prompts; base alone in bfloat16 and float16.

``--tiny`` shrinks every part (tiny widths and models, 1-2 steps, 2-4 images) and skips the pytest
part; the JSON says what was shrunk or skipped. Writes JSON (``--out``) and a Markdown table next to
it (same name, ``.md``) for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import write_result  # noqa: E402

PARTS = ("tests", "sd15_step", "demo", "eval")


def part_tests(args, ctx) -> dict:
    if args.tiny:
        return {"status": "skipped", "reason": "--tiny: the cuda-marked tests need a GPU (run without --tiny)"}
    if ctx["device"].type != "cuda":
        return {"status": "skipped", "reason": "no CUDA device: every cuda-marked test would skip"}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
    return {"status": "ok" if r.returncode == 0 else "failed", "command": " ".join(cmd[1:]), "summary": tail[0],
            "counts": counts, **({"output_tail": r.stdout[-3000:] + r.stderr[-2000:]} if r.returncode else {})}


def part_sd15(args, ctx) -> dict:
    bench = _load("sd15_step")
    out = ctx["work"] / "sd15_step.json"
    if args.tiny:
        argv = ["--small", "--device", "cpu", "--repeats", "1", "--sampler-steps", "2", "--variants", "k2-ckpt-bf16"]
        note = "--tiny: small widths at 64 px on the CPU, T = 2, 1 repeat, checkpointing on only"
    else:
        argv = ["--device", str(ctx["device"]), "--repeats", "3", "--variants", "k2-nockpt-bf16,k2-ckpt-bf16"]
        note = "SD1.5 sizes at 512 px, T = 20, K = 2, batch 1, LoRA rank 64, bf16 autocast"
    rc = bench.main([*argv, "--out", str(out)])
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    return {"status": "ok" if rc == 0 else "failed", "note": note, "argv": argv, "rows": rows}


def part_demo(args, ctx) -> dict:
    from focusnfix.cli.demo import main as demo

    out = ctx["work"] / "demo"
    argv = ["--out", str(out)] + (["--model", "tiny", "--steps", "1", "--seeds", "7"] if args.tiny else [])
    rc = demo(argv)
    summary = json.loads((out / "demo_summary.json").read_text()) if (out / "demo_summary.json").is_file() else {}
    ctx["runs"] = {m: out / m for m in ("draft", "fnf") if (out / m / "lora").is_dir()}
    ctx["demo_config"] = out / "fnf" if (out / "fnf" / "config.yaml").is_file() else None
    note = ("--tiny: tiny random model, 1 training step, 4 prompts x 1 seed" if args.tiny
            else "make demo (world model, defaults)")
    return {"status": "ok" if rc == 0 else "failed", "note": note, "argv": argv, "table": summary.get("table"),
            "demo_seconds": summary.get("seconds")}


def part_eval(args, ctx) -> dict:
    """Evals through the command line (as a user runs them), each into its own folder."""
    from focusnfix.cli import main as cli

    if args.tiny:
        config = str(ctx.get("demo_config") or ROOT / "configs" / "demo.yaml")
        common = ["--config", config, "--set", "sampler.steps=2", "--seeds", "0", "1"]
        sizes = {"large": 2, "small": 1}  # prompts: 4 and 2 images per method
        note = "--tiny: tiny model, 2 DDIM steps, 4 and 2 images per method instead of 50 and 10"
    else:
        common = ["--config", str(ROOT / "configs" / "world-artifact.yaml"), "--prompts", "world:heldout",
                  "--seeds", "0", "1"]
        sizes = {"large": 25, "small": 5}  # 50 and 10 images per method
        note = "world model (64 px), T = 20, 50 and 10 images per method, batch 8"
    methods = ["base", *(f"{m}={p}" for m, p in ctx.get("runs", {}).items())]
    runs = {f"{size}": (n, methods, None) for size, n in sizes.items()}
    runs.update({f"large-{dt}": (sizes["large"], ["base"], dt) for dt in ("bfloat16", "float16")})
    results = {}
    for name, (limit, meths, dtype) in runs.items():
        out = ctx["work"] / f"eval-{name}"
        _free(ctx["device"])  # the previous eval's model must not count in this one's peak memory
        argv = ["eval", *common, "--limit", str(limit), "--methods", *meths, "--out", str(out), "--overwrite",
                "--device", str(ctx["device"]), "--batch-size", str(args.batch_size), "--no-progress",
                *(["--dtype", dtype] if dtype else [])]
        t0 = time.perf_counter()
        rc = cli(argv)
        results[name] = {"rc": rc, "seconds": time.perf_counter() - t0, **(_eval_summary(out) if rc == 0 else {})}
    ok = all(r["rc"] == 0 for r in results.values())
    return {"status": "ok" if ok else "failed", "note": note, "methods": methods, "runs": results}


def _eval_summary(out: Path) -> dict:
    meta = json.loads((out / "eval.json").read_text())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    per_method = {}
    for m in meta["methods"]:
        mine = [r for r in rows if r["method"] == m]
        timed = [r["seconds"] for r in mine if r.get("seconds") is not None]  # each method's first batch is a warm-up
        per_method[m] = {"images": len(mine), "s_per_image": sum(timed) / len(timed) if timed else None,
                         "reward": sum(r["reward"] for r in mine if r["reward"] is not None) / len(mine)}
    return {"runtime": meta.get("runtime", {}), "methods": per_method}


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _load(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_gpu_check_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(result: dict) -> str:
    """The Markdown table for BENCHMARKS.md."""
    lines = [f"GPU check ({result['mode']}, device {result['device']}, {result['machine'].get('gpu') or 'no GPU'}, "
             f"torch {result['machine']['torch']})", "",
             "| part | setting | status | seconds | s / image or step | peak GPU MB |", "|---|---|---|---|---|---|"]
    fmt = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    for name, part in result["parts"].items():
        if part["status"] == "skipped":
            lines.append(f"| {name} | {part.get('reason', '')} | skipped | – | – | – |")
        elif name == "sd15_step":
            for r in part.get("rows", []):
                gpu = r["peak_mb"] if "cuda" in r.get("peak_kind", "") else None
                lines.append(f"| sd15_step | {r['variant']} | {part['status']} | – | {fmt(r['median_s'])} | "
                             f"{fmt(gpu, 0)} |")
        elif name == "eval":
            for run, r in part.get("runs", {}).items():
                rt = r.get("runtime", {})
                for m, v in r.get("methods", {}).items():
                    lines.append(f"| eval {run} | {m}, {v['images']} images, {rt.get('dtype')}, "
                                 f"batch {rt.get('batch_size')} | {part['status']} | {fmt(r['seconds'], 1)} | "
                                 f"{fmt(v['s_per_image'], 4)} | {fmt(rt.get('peak_gpu_mb'), 0)} |")
        else:
            detail = part.get("summary") or part.get("note", "")
            lines.append(f"| {name} | {detail} | {part['status']} | {fmt(part.get('seconds'), 1)} | – | "
                         f"{fmt(part.get('peak_gpu_mb'), 0)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke path: tiny sizes, pytest part skipped")
    p.add_argument("--device", default=None, help="auto (default; cpu with --tiny), cpu, cuda, cuda:N")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--batch-size", type=int, default=8, help="eval batch size (default 8)")
    p.add_argument("--work", default=None, help="folder for demo runs and eval folders (default runs/gpu-check[-tiny])")
    p.add_argument("--out", default=None, help="JSON result (default benchmarks/results/gpu_check[_tiny].json)")
    args = p.parse_args(argv)
    from focusnfix.devices import peak_memory_mb, reset_peak_memory, resolve_device

    suffix = "_tiny" if args.tiny else ""
    out = Path(args.out or HERE / "results" / f"gpu_check{suffix}.json")
    ctx = {"device": resolve_device(args.device or ("cpu" if args.tiny else "auto")),
           "work": Path(args.work or ROOT / "runs" / f"gpu-check{suffix.replace('_', '-')}")}
    ctx["work"].mkdir(parents=True, exist_ok=True)
    if ctx["device"].type != "cuda" and not args.tiny:
        print("gpu_check: no CUDA device; the GPU numbers need one (use --tiny for the CPU smoke path)",
              file=sys.stderr)
    wanted = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    funcs = {"tests": part_tests, "sd15_step": part_sd15, "demo": part_demo, "eval": part_eval}
    parts = {}
    for name in PARTS:
        if name not in wanted:
            parts[name] = {"status": "skipped", "reason": "not in --parts"}
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        reset_peak_memory(ctx["device"])
        t0 = time.perf_counter()
        try:
            parts[name] = funcs[name](args, ctx)
        except Exception as e:  # record it and go on with the other parts
            parts[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()[-3000:]}
        parts[name].update(seconds=time.perf_counter() - t0, peak_gpu_mb=peak_memory_mb(ctx["device"]))
        _free(ctx["device"])
        print(f"[gpu_check] {name}: {parts[name]['status']} ({parts[name]['seconds']:.1f} s)", flush=True)
    result = {"benchmark": "gpu_check", "mode": "tiny" if args.tiny else "full", "device": str(ctx["device"]),
              "settings": {k: v for k, v in vars(args).items()}, "parts": parts}
    write_result(out, result)
    text = table(json.loads(out.read_text()))
    out.with_suffix(".md").write_text(text)
    print(text)
    return 1 if any(part["status"] == "failed" for part in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
