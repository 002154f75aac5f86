"""Benchmark (a): Focus-N-Fix vs DRaFT step time at the same settings, reference cache cold and warm.

    python benchmarks/fnf_vs_draft.py [--model tiny] [--batch 2 4] [--steps 8] [--repeats 3]
        [--out benchmarks/results/fnf_vs_draft.json]

"cold": every step computes I0 and M(I0) (cache off), with the frozen model's first T-K steps batched
with the trained model's (``train.batch_reference``, the default) or as a separate pass ("2pass");
"warm": a fixed pool of (prompt, seed) pairs whose references are already cached; "slack-4": a collateral budget
while its multiplier is 0, computing the reference on one step in 4 (``objective.budget_measure_every``). Variants run
interleaved (round-robin) so machine noise hits all of them alike; the first step of every run
(warm-up) is not timed. Each step is timed twice: wall clock and the process's CPU time
(``time.process_time``; one torch thread). On a shared machine the CPU time is the steadier measure
(waiting for a core is not counted), so the ratios are given on both. Component costs (a UNet call with
and without LoRA, on twice the batch with per-row adapters, with backward; the VAE decode; the mask)
are CPU-time minima and give each variant's floor. Prints a table per batch size, writes JSON.
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


def make_trainer(args, method: str, cache: str, out: Path, batch_reference: bool = True, extra: tuple = ()):
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    overrides = [f"model.path={args.model}", f"method={method}", f"sampler.steps={args.sampler_steps}",
                 f"sampler.k={args.k}", f"train.batch_size={args.batch}", f"train.reference_cache={cache}",
                 "data.seed_pool=2", "data.prompts=[a red circle, a blue square]", f"train.output_dir={out}",
                 "lora.rank=4", "reward.name=color", "mask.threshold=0.3", "train.steps=100000",
                 f"train.batch_reference={batch_reference}", *extra]
    return Trainer(load_config(None, overrides))


def time_steps(trainer, n: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of ``n`` training steps."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def component_costs(trainer, repeats: int = 5) -> dict[str, float]:
    """CPU seconds (minimum of ``repeats``) of the pieces a step is made of, at the trainer's batch size
    with CFG: a UNet call without grad with the LoRA on (the trained prefix) and off (the frozen pass), on
    twice the batch with per-row adapters (the batched prefix), with forward+backward; a VAE decode
    without and with backward; the mask of the batch (reward heatmap, threshold, dilation)."""
    import torch

    from focusnfix.backbones.lora import adapters_disabled, adapters_per_row

    bb, cfg, method = trainer.backbone, trainer.cfg, trainer.method
    b = cfg.train.batch_size
    prompts = ["a red circle"] * b
    cond = bb.encode(prompts, "", cfg.sampler.guidance_scale)
    cond2 = bb.encode(prompts * 2, "", cfg.sampler.guidance_scale)
    x = bb.initial_noise(list(range(b)))
    x2 = torch.cat([x, x])
    t = bb.scheduler.timesteps[len(bb.scheduler.timesteps) // 2]

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            c0 = time.process_time()
            fn()
            out.append(time.process_time() - c0)
        return min(out)

    def unet_grad():
        bb.model_fn(x, t, cond).float().mean().backward()

    def vae_grad():
        z = x.clone().requires_grad_(True)
        bb.decode(z).mean().backward()

    with torch.no_grad():
        costs = {"unet_nograd_lora": timed(lambda: bb.model_fn(x, t, cond))}
        with adapters_disabled(bb.unet):
            costs["unet_nograd_base"] = timed(lambda: bb.model_fn(x, t, cond))
        with adapters_per_row(bb.unet, torch.tensor([0.0] * b + [1.0] * b)):
            costs["unet_nograd_2x_batch_per_row"] = timed(lambda: bb.model_fn(x2, t, cond2))
        images = bb.decode(x)
        costs["vae_nograd"] = timed(lambda: bb.decode(x))
        costs["mask"] = timed(lambda: method.mask(images, prompts)) if hasattr(method, "mask") else 0.0
    costs["unet_grad"] = timed(unet_grad)
    costs["vae_grad"] = timed(vae_grad)
    trainer.optimizer.zero_grad(set_to_none=True)
    return costs


def floor(c: dict[str, float], steps: int, k: int) -> dict[str, float]:
    """Lower bounds (CPU s) from the component costs: the model evaluations a step must do at least."""
    draft = (steps - k) * c["unet_nograd_lora"] + k * c["unet_grad"] + c["vae_grad"]
    reference = steps * c["unet_nograd_base"] + c["vae_nograd"] + c["mask"]
    # batched: the T-K shared no-grad steps at twice the batch, then K steps for each of I0 and I
    batched = (steps - k) * c["unet_nograd_2x_batch_per_row"] + k * (c["unet_nograd_base"] + c["unet_grad"]) \
        + c["vae_nograd"] + c["mask"] + c["vae_grad"]
    return {"draft": draft, "fnf-cold": batched, "fnf-cold-2pass": draft + reference, "fnf-warm": draft,
            "fnf-slack-4": draft + (batched - draft) / 4}


# name: (method, reference cache, batch_reference, extra keys). fnf-slack-4: a budget in its slack (lambda = 0, a
# budget it never reaches) measuring the change on one step in 4 (objective.budget_measure_every), cache off
VARIANTS = {"draft": ("draft", "off", True, ()), "fnf-cold": ("fnf", "off", True, ()),
            "fnf-cold-2pass": ("fnf", "off", False, ()), "fnf-warm": ("fnf", "memory", True, ()),
            "fnf-slack-4": ("fnf", "off", True, ("objective.budget=250", "objective.budget_measure_every=4"))}


def run_batch(args, batch: int, tmp: Path) -> dict:
    """All variants at one batch size, interleaved; the rows and component costs."""
    args.batch = batch
    trainers = {name: make_trainer(args, m, c, tmp / f"{name}-b{batch}", b, x)
                for name, (m, c, b, x) in VARIANTS.items()}
    warm = trainers["fnf-warm"].method
    warm.reference(["a red circle", "a blue square"] * 2, [0, 0, 1, 1])  # the whole pool (seed_pool = 2)
    for trainer in trainers.values():  # warm-up: one untimed step each
        time_steps(trainer, 1)
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            w, c = time_steps(trainer, args.steps)
            wall[name] += w
            cpu[name] += c
    costs = component_costs(trainers["fnf-cold"])
    bound = floor(costs, args.sampler_steps, args.k)
    med = {n: statistics.median(cpu[n]) for n in VARIANTS}
    med_wall = {n: statistics.median(wall[n]) for n in VARIANTS}
    rows = [{"variant": n, "batch": batch, "n": len(cpu[n]), "cpu_median_s": med[n], "cpu_min_s": min(cpu[n]),
             "cpu_max_s": max(cpu[n]),
             "cpu_quartiles_s": statistics.quantiles(cpu[n], n=4) if len(cpu[n]) > 1 else [med[n]] * 3,
             "ratio_vs_draft_cpu": med[n] / med["draft"], "wall_median_s": med_wall[n], "wall_min_s": min(wall[n]),
             "wall_max_s": max(wall[n]), "ratio_vs_draft_wall": med_wall[n] / med_wall["draft"],
             "floor_cpu_s": bound[n], "floor_share": bound[n] / med[n]} for n in VARIANTS]
    cache = warm.cache
    return {"batch": batch, "rows": rows, "component_costs_cpu_s": costs,
            "warm_cache": {"hits": cache.hits, "misses": cache.misses}}


def print_table(res: dict) -> None:
    print(f"batch {res['batch']}:")
    print(f"{'variant':15s} {'CPU s/step med':>14s} {'IQR':>15s} {'vs DRaFT':>8s} {'wall med':>9s} {'min..max':>13s} "
          f"{'vs DRaFT':>8s} {'floor':>6s} {'floor/CPU':>9s}")
    for r in res["rows"]:
        q = r["cpu_quartiles_s"]
        print(f"{r['variant']:15s} {r['cpu_median_s']:14.4f} {q[0]:7.4f}..{q[2]:<6.4f} {r['ratio_vs_draft_cpu']:8.3f} "
              f"{r['wall_median_s']:9.4f} {r['wall_min_s']:6.3f}..{r['wall_max_s']:<6.3f} "
              f"{r['ratio_vs_draft_wall']:8.3f} {r['floor_cpu_s']:6.3f} {r['floor_share']:9.2f}")
    print("component CPU s: " + ", ".join(f"{k} {v:.4f}" for k, v in res["component_costs_cpu_s"].items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="pipeline folder, `world` or `tiny`")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per variant and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--costs-only", action="store_true",
                   help="only the component costs per batch size and batched / two-pass prefix cost "
                        "(the batch_reference rule)")
    p.add_argument("--out", default="benchmarks/results/fnf_vs_draft.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    batches = list(args.batch)
    tmp = Path(tempfile.mkdtemp(prefix="fnf-bench-"))
    load_start = os.getloadavg()
    results = []
    if args.costs_only:
        for batch in batches:
            args.batch = batch
            costs = component_costs(make_trainer(args, "fnf", "off", tmp / f"costs-b{batch}"))
            ratio = costs["unet_nograd_2x_batch_per_row"] / (costs["unet_nograd_lora"] + costs["unet_nograd_base"])
            results.append({"batch": batch, "component_costs_cpu_s": costs, "batched_over_two_pass_prefix": ratio})
            print(f"batch {batch}: batched prefix call / (LoRA call + frozen call) = {ratio:.3f}; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in costs.items()), flush=True)
        args.batch = batches
        write_result(args.out, {"benchmark": "fnf_vs_draft costs", "settings": vars(args), "loadavg_start": load_start,
                                "loadavg_end": os.getloadavg(), "results": results})
        return 0
    for batch in batches:
        results.append(run_batch(args, batch, tmp))
        print_table(results[-1])
    args.batch = batches
    write_result(args.out, {"benchmark": "fnf_vs_draft", "settings": vars(args), "loadavg_start": load_start,
                            "loadavg_end": os.getloadavg(), "results": results,
                            "rows": [r for res in results for r in res["rows"]]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
