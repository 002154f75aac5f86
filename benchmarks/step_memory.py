"""Benchmark (f): where a training step's memory goes, per component, for DRaFT and Focus-N-Fix.

    python benchmarks/step_memory.py [--model world] [--batch 2 4] [--variants ...]
        [--out benchmarks/results/step_memory.json]

Each variant runs in a fresh process (``--one``): build the trainer, one warm-up step (creates the
optimizer's moments), then one step under :class:`_tensor_memory.TensorMeter`, which charges every
tensor the step makes to the component that made it: the UNet calls without gradient (the T-K prefix,
the reference pass), the K UNet calls with gradient (and their recomputation in backward under
gradient checkpointing), the VAE decode, the reward and mask, the rest of the forward (sampler
arithmetic, the constraint), backward, and the optimizer. Reported: the peak of live tensor bytes
the step adds and, at that instant, who made them; the same at the end of the forward (what is kept
for backward); the peak RSS the steps add (``/proc/self/statm`` sampled every 2 ms during ``--steps``
unmetered steps, the first a warm-up; includes allocator slack and kernel scratch buffers); and the
median CPU time of those steps after the first (one process per variant, run one after another), and
of ``--rounds`` steps of every variant built in one process and stepped round-robin (the comparable
one: load changes hit all variants alike). CPU time, not wall time, so that other jobs on the machine
disturb it less.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CKPT = ["sampler.grad_checkpointing=true"]
VAE = ["sampler.vae_checkpointing=true"]
VARIANTS = {  # name -> (config overrides, row chunks of a checkpointed call or None for the default)
    "draft": (["method=draft"], None),
    "draft-ckpt-whole": (["method=draft", *CKPT], 1),  # before issue 16: each K call checkpointed whole
    "draft-ckpt": (["method=draft", *CKPT], None),  # TRL's setting: the K UNet calls checkpointed, not the VAE
    "draft-ckpt-vae-whole": (["method=draft", *CKPT, *VAE], 1),
    "draft-ckpt-vae": (["method=draft", *CKPT, *VAE], None),
    "fnf-cold": (["method=fnf", "train.reference_cache=off"], None),
    "fnf-cold-ckpt-vae": (["method=fnf", "train.reference_cache=off", *CKPT, *VAE], None),
    "fnf-warm": (["method=fnf", "data.seed_pool=2"], None),
}


def build(args, variant: str, out: Path):
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    overrides = [f"model.path={args.model}", f"sampler.steps={args.sampler_steps}", f"sampler.k={args.k}",
                 f"sampler.guidance_scale={args.guidance}", f"train.batch_size={args.batch}", "lora.rank=4",
                 "data.prompts=[a red circle, a blue square]", f"train.output_dir={out}", "reward.name=color",
                 "mask.threshold=0.3", "train.steps=100000", *VARIANTS[variant][0]]
    trainer = Trainer(load_config(None, overrides))
    if VARIANTS[variant][1] is not None:
        trainer.method.checkpoint_chunks = VARIANTS[variant][1]
    return trainer


def run_one(args, variant: str) -> dict:
    import torch

    from _tensor_memory import TensorMeter, instrument
    from trl_worker import RSSSampler, rss_bytes

    torch.set_num_threads(1)
    trainer = build(args, variant, Path(tempfile.mkdtemp(prefix="step-mem-")) / "run")
    if variant == "fnf-warm":  # the whole pool (2 prompts x seed_pool 2) in the cache: every step hits
        trainer.method.reference(["a red circle", "a blue square"] * 2, [0, 0, 1, 1])
    rss0, cpu = rss_bytes(), []
    with RSSSampler(0.002) as sampler:
        for _ in range(args.steps):
            c0 = time.process_time()
            trainer.train_step()
            cpu.append(time.process_time() - c0)
    meter = TensorMeter()
    step = instrument(trainer, meter)
    step()
    return {"variant": variant, "batch": args.batch, "tensor": meter.report(), "cpu_s_per_step": cpu[1:],
            "cpu_s_per_step_median": statistics.median(cpu[1:]),
            "rss_step_delta_mib": round((sampler.peak - rss0) / 2**20, 1), "loadavg": os.getloadavg()}


def time_interleaved(args, batch: int, variants: list[str], rounds: int) -> dict[str, dict]:
    """CPU seconds per step of every variant, built in one process and stepped round-robin (one step
    each per round) so that load changes hit all alike; the first step of each is a warm-up."""
    import torch

    torch.set_num_threads(1)
    args.batch = batch
    trainers = {v: build(args, v, Path(tempfile.mkdtemp(prefix="step-time-")) / "run") for v in variants}
    if "fnf-warm" in trainers:
        trainers["fnf-warm"].method.reference(["a red circle", "a blue square"] * 2, [0, 0, 1, 1])
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds + 1):
        for v, trainer in trainers.items():
            c0 = time.process_time()
            trainer.train_step()
            if r:
                times[v].append(time.process_time() - c0)
    return {v: {"median": statistics.median(t), "min": min(t), "max": max(t), "n": len(t)} for v, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=6,
                   help="unmetered steps per run (RSS window; CPU time of all but the first)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds per batch size (0: none)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child: run this variant, print JSON
    p.add_argument("--out", default="benchmarks/results/step_memory.json")
    args = p.parse_args(argv)
    if args.one:
        args.batch = args.batch[0]
        print(json.dumps(run_one(args, args.one)))
        return 0
    rows, load_start = [], os.getloadavg()
    for batch in args.batch:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--one", variant, "--model", args.model,
                   "--batch", str(batch), "--steps", str(args.steps),
                   "--sampler-steps", str(args.sampler_steps), "--k", str(args.k), "--guidance", str(args.guidance)]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if r.returncode:
                raise SystemExit(f"{variant} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if args.rounds:
            timing = time_interleaved(args, batch, args.variants, args.rounds)
            for row in rows:
                if row["batch"] == batch:
                    row["cpu_interleaved_s"] = timing[row["variant"]]
        print(table([r for r in rows if r["batch"] == batch]), flush=True)
    from _common import write_result

    write_result(args.out, {"benchmark": "step_memory", "settings": {k: v for k, v in vars(args).items() if k != "one"},
                            "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "rows": rows})
    return 0


COMPONENTS = ["UNet K steps (grad)", "UNet recompute (backward)", "UNet no grad (prefix, I0)", "VAE decode (grad)",
              "VAE recompute (backward)", "VAE decode (no grad, I0)", "reward (grad)", "reward + mask (no grad)",
              "forward: sampler, constraint, other", "backward (grads, temporaries)", "optimizer"]


def table(rows: list[dict]) -> str:
    """Per variant (columns): tensor MiB held at the step's peak by component, the peak, what the forward
    keeps for backward, and the step's RSS growth."""
    names = [r["variant"] for r in rows]
    width = max(12, *(len(n) for n in names))
    lines = [f"batch {rows[0]['batch']}: tensor MiB held at the step's peak, by the component that made it",
             f"{'component':38s}" + "".join(f" {n:>{width}s}" for n in names)]
    for comp in COMPONENTS:
        values = [r["tensor"]["at_peak_mib"].get(comp, 0.0) for r in rows]
        if any(v >= 0.05 for v in values):
            lines.append(f"{comp:38s}" + "".join(f" {v:>{width}.1f}" for v in values))
    kept = [r["tensor"]["marks_mib"].get("end of forward (kept for backward)", {}).get("total", 0.0) for r in rows]
    for label, values, fmt in (("= tensor peak MiB", [r["tensor"]["peak_mib"] for r in rows], ".1f"),
                               ("  peak during", [r["tensor"]["peak_during"].split(" (")[0] for r in rows], "s"),
                               ("kept for backward at end of forward MiB", kept, ".1f"),
                               ("step +RSS MiB (peak over the steps)", [r["rss_step_delta_mib"] for r in rows], ".1f"),
                               ("CPU s/step (own process, median)", [r["cpu_s_per_step_median"] for r in rows], ".3f"),
                               ("CPU s/step (interleaved, median)",
                                [r.get("cpu_interleaved_s", {}).get("median", float("nan")) for r in rows], ".3f")):
        lines.append(f"{label:38s}" + "".join(f" {v:>{width}{fmt}}" for v in values))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
