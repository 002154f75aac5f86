"""Benchmark (c): inference seconds per image for base, Focus-N-Fix LoRA (unfused and fused),
Reward Guidance and SLD, with the same sampler settings, interleaved repeats.

    python benchmarks/inference.py [--model tiny|world|tiny-sd3|tiny-flux|PATH] [--steps 20] [--batch 4] [--repeats 5]

``tiny-sd3`` / ``tiny-flux`` build the tiny flow-matching pipelines of ``focusnfix.backbones.tiny_flow`` (32 px);
SLD is UNet-only and is left out for them.

A LoRA is first trained for a few steps (Focus-N-Fix) so unfused/fused timings use real adapters.
Prints a table and writes JSON (default benchmarks/results/inference.json).
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
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny, world, tiny-sd3, tiny-flux or a pipeline folder")
    p.add_argument("--resolution", type=int, help="image side in px (default: the model's; 32 for tiny-sd3/tiny-flux)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/inference.json")
    args = p.parse_args(argv)
    import torch

    from focusnfix.backbones import load_backbone
    from focusnfix.config import load_config
    from focusnfix.backbones.lora import load_lora_into
    from focusnfix.methods.reward_guidance import RewardGuidance
    from focusnfix.methods.sld import SLDGuidance
    from focusnfix.rewards import ColorReward
    from focusnfix.sampling import generate
    from focusnfix.training.trainer import train

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="inf-bench-"))
    run, model = work / "run", args.model
    if model in ("tiny-sd3", "tiny-flux"):
        from focusnfix import tiny_flow

        model = str(work / model)
        (tiny_flow.build_tiny_sd3_pipeline if args.model == "tiny-sd3" else tiny_flow.build_tiny_flux_pipeline)(model)
        args.resolution = args.resolution or 32
    size = [f"model.resolution={args.resolution}"] if args.resolution else []
    train(load_config(None, [f"model.path={model}", "data.prompts=[a red circle]", "train.steps=2",
                             "sampler.steps=4", f"train.output_dir={run}", *size]), progress=False)
    prompts = (PROMPTS * args.batch)[: args.batch]
    seeds = list(range(args.batch))
    plain = load_backbone(model, resolution=args.resolution)
    unfused, fused = load_backbone(model, resolution=args.resolution), load_backbone(model, resolution=args.resolution)
    load_lora_into(unfused.pipe, run / "lora")
    load_lora_into(fused.pipe, run / "lora")
    fused.pipe.fuse_lora()
    fused.pipe.unload_lora_weights()  # keep the merged weights, drop the adapter layers
    reward = ColorReward()
    variants = {
        "base": (plain, lambda: None),
        "fnf-lora-unfused": (unfused, lambda: None),
        "fnf-lora-fused": (fused, lambda: None),
        "reward-guidance": (plain, lambda: RewardGuidance(plain, reward, prompts, scale=30.0, steps=args.steps)),
        "sld-medium": (plain, lambda: SLDGuidance(plain, "medium")),
    }
    if plain.denoiser != "unet":
        del variants["sld-medium"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, (backbone, guidance) in variants.items():
            t0 = time.perf_counter()
            generate(backbone, prompts, seeds, args.steps, 7.5, guidance=guidance())
            if rep:
                times[name].append((time.perf_counter() - t0) / args.batch)
    base = statistics.median(times["base"])
    rows = [{"variant": n, "median_s_per_image": statistics.median(t),
             "stdev": statistics.stdev(t) if len(t) > 1 else 0.0,
             "n": len(t), "ratio_vs_base": statistics.median(t) / base} for n, t in times.items()]
    print(f"{'variant':18s} {'s/image':>9s} {'stdev':>8s} {'vs base':>8s}")
    for r in rows:
        print(f"{r['variant']:18s} {r['median_s_per_image']:9.4f} {r['stdev']:8.4f} {r['ratio_vs_base']:8.3f}")
    write_result(args.out, {"benchmark": "inference", "settings": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
