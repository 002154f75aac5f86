r"""Benchmark (b): our DRaFT-K vs TRL 0.23.1's AlignPropTrainer, seconds per optimizer step and memory.

    .venv/bin/python benchmarks/trl_alignprop.py [--sizes 8 16] [--steps 8] [--repeats 7]
        [--out benchmarks/results/trl_alignprop.json]

Run it with OUR virtualenv's Python (it builds the tiny pipelines with ``focusnfix.backbones.tiny`` and runs
our side with ``sys.executable``). TRL runs in its own virtualenv, ``benchmarks/.venv-trl`` by
default, created on first use with::

    python -m venv benchmarks/.venv-trl
    benchmarks/.venv-trl/bin/pip install torch==2.13.0 trl==0.23.1 diffusers==0.35.2 transformers==4.57.6 \
        peft accelerate

Both sides train LoRA (r = alpha = 4 on to_q/to_k/to_v/to_out.0) of the same saved tiny
SD-architecture pipeline (``--sizes``: UNet sample sizes, images are 4x that in px) with the same
reward (mean redness, ``trl_worker.redness``), T DDIM steps (eta = 0), CFG, gradient through the
last K steps only, batch size, AdamW settings, clipping, and fp32. Variants:

* ``ours``       focusnfix ``Trainer`` with ``method=draft`` (defaults: no gradient checkpointing);
* ``ours-ckpt``  the same with ``sampler.grad_checkpointing=true`` (TRL always checkpoints its UNet calls;
  ours checkpoints each of the K calls in 2 row chunks, neither side the VAE decode);
* ``trl``        ``AlignPropTrainer.step`` on ``DefaultDDPOStableDiffusionPipeline``.

Every run is a fresh process (``trl_worker.py``): one untimed warm-up step, then ``--steps`` timed
optimizer steps (sampling + reward + backward + clipping + AdamW). Runs are interleaved (the order of
the variants rotates every repeat) so machine noise hits all alike. Reported per variant: the median
over runs of each run's median seconds/step, the min..max of those run medians (speed-ups are given
on the medians and on the fastest runs: on a shared CPU, bursts of foreign load only ever slow a
run down), peak RSS of the process (``ru_maxrss``, fresh process per run) and the RSS the steps add
on top of the loaded model (background ``/proc/self/statm`` sampling, no tracemalloc).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "trl_worker.py"
TRL_VENV = HERE / ".venv-trl"
TRL_PACKAGES = ["torch==2.13.0", "trl==0.23.1", "diffusers==0.35.2", "transformers==4.57.6", "peft", "accelerate"]
VARIANTS = ("ours", "ours-ckpt", "trl")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(THREAD_ENV)
    return env


# -- the TRL virtualenv ---------------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


TRL_CHECK = ("from trl import AlignPropConfig, AlignPropTrainer, DDPOStableDiffusionPipeline, "
             "DefaultDDPOStableDiffusionPipeline; import trl; print(trl.__version__)")


def trl_ready(venv: Path) -> bool:
    py = venv_python(venv)
    if not py.exists():
        return False
    r = subprocess.run([str(py), "-c", TRL_CHECK], capture_output=True, text=True, env=child_env())
    return r.returncode == 0 and r.stdout.strip() == "0.23.1"


def ensure_trl_venv(venv: Path) -> dict:
    """Create ``venv`` and install TRL 0.23.1 there if it is missing; return its package versions."""
    if not trl_ready(venv):
        print(f"creating {venv} (TRL 0.23.1; torch pinned to 2.13.0 in the same pip command) ...", flush=True)
        if not venv_python(venv).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv_python(venv)), "-m", "pip", "install", *TRL_PACKAGES], check=True, env=child_env())
        if not trl_ready(venv):
            raise SystemExit(f"{venv}: trl 0.23.1 does not import AlignPropTrainer / "
                             "DefaultDDPOStableDiffusionPipeline")
    r = subprocess.run([str(venv_python(venv)), "-m", "pip", "list", "--format", "json"], capture_output=True,
                       text=True, check=True, env=child_env())
    return {p["name"].lower(): p["version"] for p in json.loads(r.stdout)}


# -- the tiny pipeline ------------------------------------------------------------------------------
def prepare_model(folder: str | Path, sample_size: int) -> Path:
    """Save a tiny random SD pipeline (images ``4 * sample_size`` px) that both environments load.

    ``save_pretrained`` under transformers 5 writes only ``tokenizer.json``, and the CLIP text encoder
    without the ``text_model.`` key prefix; transformers 4.57 (TRL's environment) needs the CLIP BPE
    files and silently re-initialises unprefixed weights at random. So the same vocabulary is added
    as vocab.json/merges.txt and the text encoder's keys get the classic prefix (which transformers
    5 loads as well). :func:`check_same_model` verifies both environments then see the same model."""
    from safetensors.torch import load_file, save_file

    from focusnfix.backbones.tiny import build_tiny_pipeline, write_clip_tokenizer

    folder = Path(folder)
    build_tiny_pipeline(folder, sample_size=sample_size)
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in state.items()},
              weights, metadata={"format": "pt"})
    tok = write_clip_tokenizer(tempfile.mkdtemp(prefix="trl-bench-tok-"), max_length=16)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok / name, folder / "tokenizer" / name)
    shutil.rmtree(tok, ignore_errors=True)
    return folder


LOAD_CHECK = """
import json, sys, torch
from diffusers import StableDiffusionPipeline
p = StableDiffusionPipeline.from_pretrained(sys.argv[1])
ids = p.tokenizer(json.loads(sys.argv[2]), padding="max_length", max_length=p.tokenizer.model_max_length).input_ids
w = {m: sum(float(v.double().abs().sum()) for v in getattr(p, m).state_dict().values()) \
for m in ("unet", "vae", "text_encoder")}
with torch.no_grad():
    emb = p.text_encoder(torch.tensor(ids))[0]
print(json.dumps({"ids": ids, "weight_abs_sums": w, "embeds_abs_sum": float(emb.double().abs().sum())}))
"""


def check_same_model(model: Path, trl_py: Path) -> None:
    """Both environments must tokenize identically and load the same weights from ``model``."""
    out = []
    for py in (sys.executable, str(trl_py)):
        r = subprocess.run([py, "-c", LOAD_CHECK, str(model), json.dumps(PROMPTS + [""])], capture_output=True,
                           text=True, env=child_env())
        if r.returncode:
            raise SystemExit(f"{py} cannot load {model}:\n{r.stderr[-2000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    a, b = out
    close = lambda x, y: abs(x - y) <= 1e-5 * max(1.0, abs(x))  # noqa: E731
    if a["ids"] != b["ids"] or not all(close(a["weight_abs_sums"][m], b["weight_abs_sums"][m])
                                       for m in a["weight_abs_sums"]) \
            or not close(a["embeds_abs_sum"], b["embeds_abs_sum"]):
        raise SystemExit(f"{model} loads differently in the two environments: {out}")


# -- runs -------------------------------------------------------------------------------------------
def worker_command(variant: str, model: Path, args, trl_py: Path | None = None) -> list[str]:
    py = str(trl_py) if variant == "trl" else sys.executable
    cmd = [py, str(WORKER), "--side", "trl" if variant == "trl" else "ours", "--model", str(model),
           "--steps", str(args.steps), "--sampler-steps", str(args.sampler_steps), "--k", str(args.k),
           "--batch", str(args.batch), "--rank", str(args.rank), "--lr", str(args.lr), "--guidance", str(args.guidance),
           "--seed", str(args.seed), "--threads", "1", "--prompts", *PROMPTS]
    if variant == "ours-ckpt":
        cmd.append("--grad-checkpointing")
    if getattr(args, "meter", True):
        cmd.append("--meter")
    return cmd


def run_worker(cmd: list[str], timeout: float = 900) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"worker failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """Median over runs of the per-run median seconds/step, its min..max, and memory medians."""
    meds = [statistics.median(r["times"]) for r in runs]
    pooled = [t for r in runs for t in r["times"]]
    return {
        "runs": len(runs), "sec_per_step_median": statistics.median(meds), "sec_per_step_min": min(meds),
        "sec_per_step_max": max(meds), "sec_per_step_pooled_mean": statistics.fmean(pooled),
        "maxrss_mb_median": statistics.median(r["maxrss_mb"] for r in runs),
        "rss_step_delta_mb_median": statistics.median(r["rss_step_delta_mb"] for r in runs),
        "rss_before_steps_mb_median": statistics.median(r["rss_before_steps_mb"] for r in runs),
        "cpu_sec_per_step_median": (statistics.median(statistics.median(r["cpu_times"]) for r in runs)
                                    if runs[0].get("cpu_times") else None),
        "tensor_peak_mib": runs[0]["tensor"]["peak_mib"] if runs[0].get("tensor") else None,
        "tensor_at_peak_mib": runs[0]["tensor"]["at_peak_mib"] if runs[0].get("tensor") else None,
        "tensor_kept_for_backward_mib": (runs[0]["tensor"]["marks_mib"].get("end of forward (kept for backward)", {})
                                         .get("total") if runs[0].get("tensor") else None),
    }


def table(results: dict) -> str:
    """Text table of ``{size_label: {variant: summary}}``; ratios are relative to ``trl``.

    ``TRL/this`` is the speed-up on the medians; ``(on min)`` the same on the fastest run of each
    variant, which is less sensitive to bursts of load from other processes on a shared machine;
    ``(CPU)`` on the median CPU time per step (waiting for a core not counted). ``tensor peak``: the
    most tensor memory the step holds at once (``_tensor_memory.TensorMeter``, one metered step per
    variant, deterministic); ``step +RSS``: peak RSS of the steps over RSS before them (includes
    allocator slack and kernel scratch)."""
    head = (f"{'size':>6} {'variant':>10} {'s/step med':>10} {'min..max':>14} {'TRL/this':>9} {'(on min)':>8} "
            f"{'(CPU)':>6} {'peak RSS MB':>11} {'step +RSS MB':>12} {'this/TRL +RSS':>13} {'tensor peak MiB':>15} "
            f"{'this/TRL':>8}")
    lines = [head, "-" * len(head)]
    for size, variants in results.items():
        trl = variants.get("trl")
        for name, s in variants.items():
            speed = f"{trl['sec_per_step_median'] / s['sec_per_step_median']:.2f}x" if trl else "-"
            speed_min = f"{trl['sec_per_step_min'] / s['sec_per_step_min']:.2f}x" if trl else "-"
            cpu = (f"{trl['cpu_sec_per_step_median'] / s['cpu_sec_per_step_median']:.2f}x"
                   if trl and s.get("cpu_sec_per_step_median") and trl.get("cpu_sec_per_step_median") else "-")
            mem = (f"{s['rss_step_delta_mb_median'] / trl['rss_step_delta_mb_median']:.2f}"
                   if trl and trl["rss_step_delta_mb_median"] > 0 else "-")
            peak = f"{s['tensor_peak_mib']:.1f}" if s.get("tensor_peak_mib") is not None else "-"
            peak_ratio = (f"{s['tensor_peak_mib'] / trl['tensor_peak_mib']:.2f}"
                          if trl and s.get("tensor_peak_mib") and trl.get("tensor_peak_mib") else "-")
            lines.append(f"{size:>6} {name:>10} {s['sec_per_step_median']:>10.3f} "
                         f"{s['sec_per_step_min']:>6.3f}..{s['sec_per_step_max']:<6.3f} {speed:>9} {speed_min:>8} "
                         f"{cpu:>6} {s['maxrss_mb_median']:>11.0f} {s['rss_step_delta_mb_median']:>12.0f} {mem:>13} "
                         f"{peak:>15} {peak_ratio:>8}")
    return "\n".join(lines)


def machine_facts() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), "0") \
        if Path("/proc/meminfo").exists() else "0"
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "mem_total_gb": round(int(mem) / 2**20, 1), "python": platform.python_version()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="UNet sample sizes (images are 4x in px)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (after 1 warm-up step)")
    p.add_argument("--repeats", type=int, default=7, help="runs per variant and size, interleaved")
    p.add_argument("--sampler-steps", type=int, default=20, help="T: DDIM steps")
    p.add_argument("--k", type=int, default=2, help="K: gradient through the last K steps")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (= alpha); TRL hard-codes 4")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--venv", type=Path, default=TRL_VENV, help="TRL's virtualenv (created if missing)")
    p.add_argument("--no-meter", dest="meter", action="store_false",
                   help="skip the one extra metered step per run (tensor memory per component)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "trl_alignprop.json")
    args = p.parse_args(argv)
    if not 1 <= args.k <= args.sampler_steps:
        p.error("need 1 <= K <= T")

    sys.path.insert(0, str(HERE))
    from trl_worker import trl_settings

    started, load_start = time.time(), os.getloadavg()
    trl_versions, trl_py = None, None
    if "trl" in args.variants:
        trl_versions = ensure_trl_venv(args.venv)
        trl_py = venv_python(args.venv)
    tmp = Path(tempfile.mkdtemp(prefix="trl-bench-"))
    results, raw = {}, {}
    try:
        for size in args.sizes:
            label = f"{4 * size}px"
            model = prepare_model(tmp / f"tiny-{size}", size)
            if trl_py is not None:
                check_same_model(model, trl_py)
            raw[label] = {v: [] for v in args.variants}
            for rep in range(args.repeats):
                order = args.variants[rep % len(args.variants):] + args.variants[:rep % len(args.variants)]
                for variant in order:
                    res = run_worker(worker_command(variant, model, args, trl_py))
                    res["repeat"] = rep
                    raw[label][variant].append(res)
                    print(f"{label} repeat {rep + 1}/{args.repeats} {variant:>9}: "
                          f"{statistics.median(res['times']):.3f} s/step, peak RSS {res['maxrss_mb']:.0f} MB, "
                          f"steps +{res['rss_step_delta_mb']:.0f} MB", flush=True)
            results[label] = {v: summarise(raw[label][v]) for v in args.variants}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    text = table(results)
    print()
    print(text)
    ours_versions = raw[next(iter(raw))].get("ours", raw[next(iter(raw))].get("ours-ckpt", [{}]))[0].get("versions")
    trl_run_versions = raw[next(iter(raw))]["trl"][0]["versions"] if "trl" in args.variants else None
    facts = machine_facts()
    facts["loadavg_1_5_15min_start"], facts["loadavg_1_5_15min_end"] = load_start, os.getloadavg()
    shared = {"sampler_steps_T": args.sampler_steps, "K": args.k, "eta": 0.0, "guidance_scale": args.guidance,
              "negative_prompt": "", "batch_size": args.batch, "lora_rank": args.rank, "lora_alpha": args.rank,
              "lora_targets": ["to_q", "to_k", "to_v", "to_out.0"], "lora_init": "gaussian", "lr": args.lr,
              "adamw": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}, "max_grad_norm": 1.0,
              "grad_accum": 1, "mixed_precision": "no (fp32)",
              "reward": "mean over pixels of R - (G + B) / 2; loss = -mean (TRL: 10 - mean)",
              "prompts": PROMPTS, "torch_threads": 1, "timed_steps_per_run": args.steps, "warmup_steps_per_run": 1,
              "repeats": args.repeats}
    ours_overrides = ("method=draft, sampler.steps=T, sampler.k=K, sampler.guidance_scale, sampler.grad_checkpointing "
                      "(false; true for ours-ckpt), train.batch_size, train.grad_accum=1, lora.rank, lora.alpha=rank, "
                      "train.lr, train.weight_decay=0, adam betas/eps, train.max_grad_norm=1, "
                      "train.mixed_precision=no, train.lr_schedule=constant, "
                      "train.reference_cache=off (unused by draft)")
    report = {
        "benchmark": "ours (focusnfix DRaFT-K) vs TRL 0.23.1 AlignPropTrainer",
        "command": (shlex.join([os.path.relpath(sys.executable), *sys.argv]) if argv is None
                    else shlex.join(["trl_alignprop.py", *argv])),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": facts,
        "trl_venv": str(args.venv), "trl_venv_packages": trl_versions,
        "versions": {"ours": ours_versions, "trl": trl_run_versions},
        "settings": {"shared": shared, "ours_overrides": ours_overrides,
                     "alignprop_config": trl_settings(args, "<tmp>") if "trl" in args.variants else None,
                     "trl_other": "DefaultDDPOStableDiffusionPipeline(model, use_lora=True) (LoRA r=4, alpha=4, "
                                  "gaussian, to_k/to_q/to_v/to_out.0 fixed in TRL); "
                                  "AlignPropTrainer.step(epoch=0, global_step) per optimizer step; "
                                  "diffusers progress bar disabled after construction"},
        "timing": "median over runs of each run's median seconds per optimizer step (min..max over runs); "
                  "model loading and the first step of every run excluded; speed-up TRL/this on the medians and on the "
                  "fastest run (min) of each variant",
        "memory": "maxrss_mb: getrusage(RUSAGE_SELF).ru_maxrss of the run's fresh process (includes imports and model "
                  "load); rss_step_delta_mb: highest RSS sampled from /proc/self/statm every 2 ms during the warm-up "
                  "and timed steps, minus RSS after model/LoRA/optimizer setup; tensor_peak_mib: most tensor bytes "
                  "one step holds at once (benchmarks/_tensor_memory.py, one extra step after the timed ones), with "
                  "tensor_at_peak_mib per component",
        "table": text.splitlines(),
        "results": results,
        "runs": {label: {v: [{k: r[k] for k in r if k != "versions"} for r in runs] for v, runs in variants.items()}
                 for label, variants in raw.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
