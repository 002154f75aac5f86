"""change_origin: in which denoising steps does a trained LoRA make its fix, and its change outside the mask?

    python benchmarks/change_origin.py RUN/checkpoints/step-000120 [more checkpoints ...] \
        [--config configs/world-artifact.yaml] [--split val] [--out benchmarks/results/change_origin.json]

For each checkpoint (its ``lora.safetensors``) the world's split (27 captions x noise seeds 1000-1001 on val,
2000-2001 on test) is sampled with the LoRA switched on in every step, in the first T - K steps only (the steps
DRaFT-K's gradient never reaches), in the last K steps only, and in the last 5 steps only; each against the frozen
model's images of the same noise. Printed per variant: the defect judge's rate, and the mean |change| outside
M(I0) in grey levels, over all images, over the images the base model drew clean, and over those with the defect.
``--grid`` also saves the images (every-step variant) with their |change| maps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

SEEDS = {"val": (1000, 1001), "test": (2000, 2001)}
JUDGE = {"world-artifact": "artifact", "world-safety": "unwanted"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (RUN/checkpoints/step-NNNNNN)")
    p.add_argument("--config", default="configs/world-artifact.yaml", help="the runs' world config")
    p.add_argument("--split", default="val", choices=list(SEEDS))
    p.add_argument("--batch", type=int, default=18)
    p.add_argument("--prompts", type=int, default=27, help="captions of the split used (max 27)")
    p.add_argument("--out", default="benchmarks/results/change_origin.json")
    p.add_argument("--grid", default=None, help="also save a PNG: per row (5 images the base model drew with the "
                   "defect, 3 without) base | M(I0) | each checkpoint's image and its |change| x 20")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from focusnfix.backbones.lora import adapters_disabled, add_lora, load_lora_state
    from focusnfix.config import load_config
    from focusnfix.methods.objective import outside_change
    from focusnfix.prompts.sets import load_prompt_set
    from focusnfix.rewards.compose import problem_mask
    from focusnfix.rewards.registry import build_reward
    from focusnfix.sampling import sample
    from focusnfix.training.setup import backbone_for
    from focusnfix.world import DefectJudge

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    cfg = load_config(args.config, [])
    s, steps, k = cfg.sampler, cfg.sampler.steps, cfg.sampler.k
    bb = backbone_for(cfg, torch.device("cpu"))
    add_lora(bb.unet, cfg.lora.rank, cfg.lora.alpha, list(cfg.lora.targets or bb.lora_targets))
    reward, judge = build_reward(cfg.reward.name, **cfg.reward.args), DefectJudge()
    defect = JUDGE.get(cfg.reward.name, "artifact")
    records = load_prompt_set(f"world:{args.split}")[:args.prompts]
    prompts = [r.prompt for r in records for _ in SEEDS[args.split]]
    seeds = [sd for _ in records for sd in SEEDS[args.split]]

    @torch.no_grad()
    def images(on: tuple[int, int]) -> torch.Tensor:
        """The split's images with the LoRA on in steps on[0] <= i < on[1] only (off elsewhere)."""
        out = []
        for a in range(0, len(prompts), args.batch):
            cond = bb.encode(prompts[a:a + args.batch], s.negative_prompt, s.guidance_scale)
            x = bb.initial_noise(seeds[a:a + args.batch])
            for lo, hi, active in ((0, on[0], False), (on[0], on[1], True), (on[1], steps, False)):
                if lo < hi:
                    if active:
                        x = sample(bb, cond, x, steps, first=lo, last=hi)
                    else:
                        with adapters_disabled(bb.unet):
                            x = sample(bb, cond, x, steps, first=lo, last=hi)
            out.append(bb.decode(x))
        return torch.cat(out)

    ref = images((0, 0))
    mask, _ = problem_mask(reward, ref, prompts, cfg.mask)
    had = judge(ref)[defect] > 0.5
    variants = {"every step": (0, steps), f"first T-K = {steps - k} steps only": (0, steps - k),
                f"last K = {k} steps only": (steps - k, steps), "last 5 steps only": (steps - 5, steps)}
    result = {"benchmark": "change_origin", "config": args.config, "split": args.split, "images": len(prompts),
              "base_defect_rate": float(had.float().mean()), "runs": {}}
    lines = ["| checkpoint | LoRA on in | defect rate % | outside change, grey levels | on clean base images | "
             "on defect base images |", "|---|---|---|---|---|---|",
             f"| base | (none) | {100 * had.float().mean():.1f} | 0 | 0 | 0 |"]
    picked = [*had.nonzero().flatten()[:5].tolist(), *(~had).nonzero().flatten()[:3].tolist()]
    columns = [ref[picked], mask[picked].expand(-1, 3, -1, -1)]
    for ck in args.checkpoints:
        load_lora_state(bb.unet, load_file(str(Path(ck) / "lora.safetensors")))
        rows = {}
        for name, on in variants.items():
            img = images(on)
            if on == (0, steps):
                columns += [img[picked], ((img[picked] - ref[picked]).abs().mean(1, keepdim=True) * 20).clamp(0, 1)
                            .expand(-1, 3, -1, -1)]
            grey = outside_change(img, ref, mask)
            rate = float((judge(img)[defect] > 0.5).float().mean())
            rows[name] = {"defect_rate": rate, "outside_grey": float(grey.mean()),
                          "outside_grey_clean": float(grey[~had].mean()) if (~had).any() else None,
                          "outside_grey_defect": float(grey[had].mean()) if had.any() else None}
            r = rows[name]
            lines.append(f"| {ck} | {name} | {100 * rate:.1f} | {r['outside_grey']:.3f} | "
                         f"{_num(r['outside_grey_clean'])} | {_num(r['outside_grey_defect'])} |")
            print(lines[-1], flush=True)
        result["runs"][ck] = rows
    if args.grid:
        from PIL import Image

        grid = torch.cat([torch.cat(list(col), 1) for col in columns], 2)  # (3, rows*H, cols*W)
        pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST).save(args.grid)
        result["grid"] = args.grid
    result["seconds"] = time.perf_counter() - t0
    print("\n".join(lines))
    write_result(args.out, result)
    return 0


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
