"""Benchmark: model.compile on vs off, compile time and step time (Focus-N-Fix, reference cache off).

    python benchmarks/compile.py [--model tiny] [--steps 4] [--out benchmarks/results/compile.json]

Variants: eager with the batched reference pass (the default), eager with two passes, compiled (two
passes: the batched reference is off under compile). Each variant runs in this process with a fresh,
empty inductor cache (TORCHINDUCTOR_CACHE_DIR set to a new temporary folder before torch is imported),
so "first step" includes the cold compile of every UNet graph a step needs (no-grad adapters off,
no-grad adapters on, with gradient). Then ``--steps`` timed steps; the median is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="focusnfix-inductor-")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def run(args, compiled: bool, batch_reference: bool, out: Path) -> dict:
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    overrides = [f"model.path={args.model}", "method=fnf", f"sampler.steps={args.sampler_steps}", f"sampler.k={args.k}",
                 f"train.batch_size={args.batch}", "train.reference_cache=off",
                 "data.prompts=[a red circle, a blue square]", f"train.output_dir={out}", "lora.rank=4",
                 "reward.name=color", "mask.threshold=0.3", "train.steps=100000",
                 f"model.compile={str(compiled).lower()}", f"train.batch_reference={batch_reference}"]
    trainer = Trainer(load_config(None, overrides))
    t0 = time.perf_counter()
    trainer.train_step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return {"compile": compiled, "batch_reference": trainer.method.batch_reference, "first_step_s": first,
            "median_step_s": statistics.median(times), "steps_s": times}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/compile.json")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # eager with the batched reference (the default), eager with two passes, compiled (always two passes)
        for compiled, batched in ((False, True), (False, False), (True, False)):
            rows.append(run(args, compiled, batched, Path(tmp) / f"run-{compiled}-{batched}"))
            r = rows[-1]
            print(f"{args.model} compile={compiled} batch_reference={batched}: first step {r['first_step_s']:.2f} s, "
                  f"median step {r['median_step_s']:.4f} s")
    eager, two_pass, comp = rows
    print(f"compile cost (first step minus a steady step): {comp['first_step_s'] - comp['median_step_s']:.1f} s; "
          f"step time compiled / eager two-pass: {comp['median_step_s'] / two_pass['median_step_s']:.3f}, "
          f"compiled / eager batched (default): {comp['median_step_s'] / eager['median_step_s']:.3f}")
    write_result(args.out, {"model": args.model, "sampler_steps": args.sampler_steps, "k": args.k, "batch": args.batch,
                            "rows": rows})


if __name__ == "__main__":
    main()
