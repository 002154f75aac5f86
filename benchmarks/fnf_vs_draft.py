"""Benchmark (a): Focus-N-Fix vs DRaFT step time at the same settings, reference cache cold and warm.

    python benchmarks/fnf_vs_draft.py [--model tiny] [--steps 8] [--repeats 3] [--out benchmarks/results/fnf_vs_draft.json]

"cold": every step computes I0 and M(I0) (cache off); "warm": a fixed pool of (prompt, seed) pairs
whose references are already cached. Variants run interleaved (round-robin) so machine noise hits
all of them alike; the first step of every run (warm-up) is not timed. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_trainer(args, method: str, cache: str, out: Path):
    from focusnfix.config import load_config
    from focusnfix.trainer import Trainer

    overrides = [f"model.path={args.model}", f"method={method}", f"sampler.steps={args.sampler_steps}", f"sampler.k={args.k}",
                 f"train.batch_size={args.batch}", f"train.reference_cache={cache}", "data.seed_pool=2",
                 "data.prompts=[a red circle, a blue square]", f"train.output_dir={out}", "lora.rank=4",
                 "reward.name=color", "mask.threshold=0.3", "train.steps=100000"]
    return Trainer(load_config(None, overrides))


def time_steps(trainer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="pipeline folder or `tiny`")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/fnf_vs_draft.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fnf-bench-"))
    variants = {"draft": ("draft", "off"), "fnf-cold": ("fnf", "off"), "fnf-warm": ("fnf", "memory")}
    trainers = {name: make_trainer(args, m, c, tmp / name) for name, (m, c) in variants.items()}
    for trainer in trainers.values():  # warm-up: one untimed step each; fills the warm cache's pool
        time_steps(trainer, 1)
    warm = trainers["fnf-warm"].method
    warm.reference(["a red circle", "a blue square"] * 2, [0, 0, 1, 1])  # the whole pool (seed_pool = 2)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name] += time_steps(trainer, args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"variant": n, "median_s": med[n], "mean_s": statistics.mean(t), "stdev_s": statistics.stdev(t) if len(t) > 1 else 0.0,
             "n": len(t), "ratio_vs_draft": med[n] / med["draft"]} for n, t in times.items()]
    cache = warm.cache
    result = {"benchmark": "fnf_vs_draft", "command": " ".join([sys.executable, *sys.argv]), "settings": vars(args),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
              "warm_cache": {"hits": cache.hits, "misses": cache.misses}, "rows": rows}
    print(f"{'variant':10s} {'median s/step':>14s} {'mean':>8s} {'stdev':>8s} {'n':>4s} {'vs DRaFT':>9s}")
    for r in rows:
        print(f"{r['variant']:10s} {r['median_s']:14.4f} {r['mean_s']:8.4f} {r['stdev_s']:8.4f} {r['n']:4d} {r['ratio_vs_draft']:9.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
