"""Benchmark: step cost and memory of GRPO / region-aware GRPO vs DRaFT and Focus-N-Fix on the world model.

    python benchmarks/grpo_step.py [--steps 4] [--repeats 3] [--threads 1]

Each variant trains ``--steps`` optimizer steps in its own process (so its peak RSS is its own), the
variants interleaved in each of ``--repeats`` rounds; the first step of each process is a warm-up and
not timed. Reported per variant: median seconds per optimizer step, reward evaluations per step
(trajectories that reach the reward), seconds per reward evaluation, and the peak RSS (max over
rounds). DRaFT/Focus-N-Fix use configs/world-artifact.yaml (batch 4, K = 2); GRPO the
world-artifact-grpo config (2 prompts x G = 4, 5 transitions with gradient of T = 20).
Prints a table and writes JSON (default benchmarks/results/grpo_step.json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {  # name -> (config, overrides)
    "draft": ("world-artifact.yaml", ["method=draft"]),
    "fnf": ("world-artifact.yaml", ["method=fnf", "train.reference_cache=off"]),  # cold: every reference computed
    "grpo": ("world-artifact-grpo.yaml", ["method=grpo"]),
    "fnf-grpo": ("world-artifact-grpo.yaml", ["method=fnf-grpo"]),
}


def worker(variant: str, steps: int, threads: int) -> dict:
    """Train ``steps`` steps of ``variant`` here; return timings and peak RSS."""
    import torch

    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    torch.set_num_threads(threads)
    config, overrides = VARIANTS[variant]
    out = tempfile.mkdtemp(prefix="grpo-bench-")
    trainer = Trainer(load_config(CONFIGS / config, [*overrides, f"train.output_dir={out}"]))
    seconds = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step()
        seconds.append(time.perf_counter() - t0)
    cfg = trainer.cfg
    evaluations = cfg.train.batch_size * cfg.train.grad_accum * (cfg.grpo.group_size if "grpo" in cfg.method else 1)
    return {"seconds": seconds[1:], "reward_evaluations": evaluations,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per process")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="benchmarks/results/grpo_step.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads)))
        return 0
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name, results in runs.items():
        seconds = [s for r in results for s in r["seconds"]]
        per_round = [statistics.median(r["seconds"]) for r in results]
        evals = results[0]["reward_evaluations"]
        rows.append({"variant": name, "median_s_per_step": statistics.median(seconds),
                     "round_medians": per_round, "reward_evaluations_per_step": evals,
                     "s_per_reward_evaluation": statistics.median(seconds) / evals,
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in results)})
    base = next((r for r in rows if r["variant"] == "draft"), rows[0])["median_s_per_step"]
    print(f"{'variant':10s} {'s/step':>8s} {'vs draft':>9s} {'evals':>6s} {'s/eval':>8s} {'peak RSS MB':>12s}  "
          "round medians")
    for r in rows:
        print(f"{r['variant']:10s} {r['median_s_per_step']:8.3f} {r['median_s_per_step'] / base:9.2f} "
              f"{r['reward_evaluations_per_step']:6d} {r['s_per_reward_evaluation']:8.3f} {r['peak_rss_mb']:12.0f}  "
              + " ".join(f"{m:.3f}" for m in r["round_medians"]))
    load = os.getloadavg()
    write_result(args.out, {"benchmark": "grpo_step",
                            "settings": {k: v for k, v in vars(args).items() if k != "worker"},
                            "load_average": load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
