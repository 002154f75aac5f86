"""Benchmark (a): Focus-N-Fix vs DRaFT step time at the same settings, reference cache cold and warm.

    python benchmarks/fnf_vs_draft.py [--model tiny] [--steps 8] [--repeats 3] [--out benchmarks/results/fnf_vs_draft.json]

"cold": every step computes I0 and M(I0) (cache off), with the frozen model's first T-K steps batched
with the trained model's (``train.batch_reference``, the default) or as a separate pass ("2pass"); "warm": a fixed pool of (prompt, seed) pairs
whose references are already cached. Variants run interleaved (round-robin) so machine noise hits
all of them alike; the first step of every run (warm-up) is not timed. Prints a table, writes JSON.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def make_trainer(args, method: str, cache: str, out: Path, batch_reference: bool = True):
    from focusnfix.config import load_config
    from focusnfix.trainer import Trainer

    overrides = [f"model.path={args.model}", f"method={method}", f"sampler.steps={args.sampler_steps}", f"sampler.k={args.k}",
                 f"train.batch_size={args.batch}", f"train.reference_cache={cache}", "data.seed_pool=2",
                 "data.prompts=[a red circle, a blue square]", f"train.output_dir={out}", "lora.rank=4",
                 "reward.name=color", "mask.threshold=0.3", "train.steps=100000", f"train.batch_reference={batch_reference}"]
    return Trainer(load_config(None, overrides))


def time_steps(trainer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return times


def component_costs(trainer, repeats: int = 5) -> dict[str, float]:
    """Median seconds of the pieces one step is made of: a UNet call (CFG batch) without and with
    backward, a VAE decode without and with backward, for the trainer's batch size; and a UNet call
    without grad on twice the batch (the batched reference + trained prefix)."""
    import torch

    bb, cfg = trainer.backbone, trainer.cfg
    prompts = ["a red circle"] * cfg.train.batch_size
    cond = bb.encode(prompts, "", cfg.sampler.guidance_scale)
    x = bb.initial_noise(list(range(len(prompts))))
    t = bb.scheduler.timesteps[0] if len(bb.scheduler.timesteps) else torch.tensor(999)

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def unet_grad():
        bb.model_fn(x, t, cond).float().mean().backward()

    def vae_grad():
        z = x.clone().requires_grad_(True)
        bb.decode(z).mean().backward()

    cond2 = bb.encode(prompts * 2, "", cfg.sampler.guidance_scale)
    x2 = torch.cat([x, x])
    with torch.no_grad():
        unet_fwd = timed(lambda: bb.model_fn(x, t, cond))
        unet_fwd2 = timed(lambda: bb.model_fn(x2, t, cond2))
        vae_fwd = timed(lambda: bb.decode(x))
    costs = {"unet_nograd": unet_fwd, "unet_nograd_2x_batch": unet_fwd2, "unet_grad": timed(unet_grad), "vae_nograd": vae_fwd, "vae_grad": timed(vae_grad)}
    trainer.optimizer.zero_grad(set_to_none=True)
    return costs


def floor(costs: dict[str, float], steps: int, k: int) -> dict[str, float]:
    """Lower bounds from the component costs: what a step must evaluate at least."""
    draft = (steps - k) * costs["unet_nograd"] + k * costs["unet_grad"] + costs["vae_grad"]
    reference = steps * costs["unet_nograd"] + costs["vae_nograd"]
    # batched: the T-K shared no-grad steps at twice the batch, then K steps for each of I0 and I
    batched = (steps - k) * costs["unet_nograd_2x_batch"] + k * (costs["unet_nograd"] + costs["unet_grad"]) \
        + costs["vae_nograd"] + costs["vae_grad"]
    return {"draft": draft, "fnf-cold": batched, "fnf-cold-2pass": draft + reference, "fnf-warm": draft}


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
    variants = {"draft": ("draft", "off", True), "fnf-cold": ("fnf", "off", True), "fnf-cold-2pass": ("fnf", "off", False),
                "fnf-warm": ("fnf", "memory", True)}
    trainers = {name: make_trainer(args, m, c, tmp / name, b) for name, (m, c, b) in variants.items()}
    for trainer in trainers.values():  # warm-up: one untimed step each; fills the warm cache's pool
        time_steps(trainer, 1)
    warm = trainers["fnf-warm"].method
    warm.reference(["a red circle", "a blue square"] * 2, [0, 0, 1, 1])  # the whole pool (seed_pool = 2)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name] += time_steps(trainer, args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    costs = component_costs(trainers["draft"])
    bound = floor(costs, args.sampler_steps, args.k)
    rows = [{"variant": n, "median_s": med[n], "mean_s": statistics.mean(t), "stdev_s": statistics.stdev(t) if len(t) > 1 else 0.0,
             "n": len(t), "ratio_vs_draft": med[n] / med["draft"], "floor_s": bound[n], "floor_share": bound[n] / med[n]}
            for n, t in times.items()]
    cache = warm.cache
    result = {"benchmark": "fnf_vs_draft", "settings": vars(args),
              "warm_cache": {"hits": cache.hits, "misses": cache.misses}, "component_costs_s": costs, "rows": rows}
    print(f"{'variant':14s} {'median s/step':>14s} {'mean':>8s} {'stdev':>8s} {'n':>4s} {'vs DRaFT':>9s} {'floor s':>8s} {'floor/step':>10s}")
    for r in rows:
        print(f"{r['variant']:14s} {r['median_s']:14.4f} {r['mean_s']:8.4f} {r['stdev_s']:8.4f} {r['n']:4d} {r['ratio_vs_draft']:9.3f}"
              f" {r['floor_s']:8.4f} {r['floor_share']:10.2f}")
    print("component costs (s): " + ", ".join(f"{k} {v:.4f}" for k, v in costs.items()))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
