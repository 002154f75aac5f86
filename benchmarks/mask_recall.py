"""mask_recall: how much of the defect the problem mask M(I0) covers, against the world's exact ground truth.

    python benchmarks/mask_recall.py                          # 2048 images, both rewards, 18 settings each
    python benchmarks/mask_recall.py --n 512 --out /tmp/mr.json

The world model's generated images have no ground-truth mask, so generated images are imitated by the
world's ground-truth renders (``world.data``, exact ``artifact_mask`` / ``unwanted_mask``) passed through
the world pipeline's VAE (encode, a posterior sample, decode: ``train_heads.build_pool``, as the world's
gates do); the raw renders are measured too. Data stream 900011 is used by nothing else (rewards 201,
judges 301, gates 900001). For each reward with the mask settings of its config (artifact:
configs/world-artifact.yaml, heatmap masks; unwanted element: configs/world-safety.yaml, gradient-saliency
masks with its skip_above) and each setting of mask.threshold x mask.dilate x mask.blur, M is made exactly
as training makes it (``rewards.compose.mask_from``; checked against it) and scored on the images that have
the defect (the metric functions below):

* recall: share of defect pixels inside M (pooled over images; a soft mask counts its weight M, the share
  of the constraint that is lifted there);
* precision: share of the mask's weight on defect pixels (pooled);
* area: mean mask fraction of the image;
* detected: images whose binary core (M >= 0.5) touches the defect; covered: images with recall >= 0.9;
* on clean: images without the defect that still get a non-empty core (there the constraint is lifted for
  nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REWARDS = {"artifact": (ROOT / "configs" / "world-artifact.yaml", "art"),
           "unwanted": (ROOT / "configs" / "world-safety.yaml", "unw")}
THRESHOLDS, DILATES, BLURS = (0.3, 0.5, 0.7), (0, 3, 6), (0.0, 2.0)
DATA_SEED = 900_011
CHUNK = 256


# -- the metrics (pure functions of masks; tests/test_mask_recall.py) ------------------------------------
def mask_metrics(mask, defect) -> dict:
    """Coverage of binary ground-truth ``defect`` masks ``(B,1,H,W)`` by problem masks ``mask`` ``(B,1,H,W)``
    in [0, 1]: recall, precision and area over the images that have a defect, the share of those detected
    (core M >= 0.5 touches the defect) and covered (recall >= 0.9), and the share of defect-free images
    with a non-empty core. A rate with no image to count is NaN."""
    import torch

    m, d = mask.double().flatten(1), (defect > 0.5).double().flatten(1)
    core = (m >= 0.5).double()
    has = d.sum(1) > 0
    inter, size, area = (m * d).sum(1), d.sum(1), m.sum(1)
    nan = float("nan")

    def share(values: "torch.Tensor", rows: "torch.Tensor") -> float:
        return float(values[rows].double().mean()) if bool(rows.any()) else nan

    return {
        "n_defect": int(has.sum()), "n_clean": int((~has).sum()),
        "recall": float(inter[has].sum() / size[has].sum()) if bool(has.any()) else nan,
        "precision": (float(inter[has].sum() / area[has].sum()) if bool(has.any()) and float(area[has].sum()) > 0
                      else nan),
        "area": share(area / m.shape[1], has),
        "detected": share((core * d).sum(1) > 0, has),
        "covered": share(inter / size.clamp(min=1) >= 0.9, has),
        "on_clean": share(core.sum(1) > 0, ~has),
    }


# -- the measurement --------------------------------------------------------------------------------------
def mask_of(heat, score, m):
    """M from a precomputed map and score with settings ``m``: rewards.compose.mask_from without the reward call."""
    from focusnfix.rewards.masks import heatmap_to_mask

    mask = heatmap_to_mask(heat, m.threshold, m.quantile, m.dilate, m.blur, m.min_area)
    if m.skip_above is not None:
        mask = mask * (score < m.skip_above).to(mask).view(-1, 1, 1, 1)
    return mask


def maps(reward, images, captions, m):
    """The reward's map (heatmap or saliency, as ``m.source`` says) and score of every image, in chunks."""
    import torch

    from focusnfix.rewards.compose import problem_map

    heats, scores = [], []
    for s in range(0, len(images), CHUNK):
        heat, score = problem_map(reward, images[s: s + CHUNK], captions[s: s + CHUNK], m.source)
        heats.append(heat.detach())
        scores.append(score.detach())
    return torch.cat(heats), torch.cat(scores)


def settings(base):
    """Every (threshold, dilate, blur) variant of a config's MaskConfig ``base``."""
    return [dataclasses.replace(base, threshold=t, dilate=d, blur=b)
            for t, d, b in itertools.product(THRESHOLDS, DILATES, BLURS)]


def measure(name: str, pool: dict) -> tuple[list[dict], dict]:
    """Rows for one reward over both image kinds and every setting, and the config's shipped setting."""
    import torch

    from focusnfix.config import load_config
    from focusnfix.rewards.registry import build_reward
    from focusnfix.rewards.compose import mask_from

    cfg = load_config(REWARDS[name][0])
    reward = build_reward(cfg.reward.name, **cfg.reward.args)
    defect = pool[REWARDS[name][1]]
    shipped = {"threshold": cfg.mask.threshold, "dilate": cfg.mask.dilate, "blur": cfg.mask.blur,
               "source": cfg.mask.source, "skip_above": cfg.mask.skip_above, "min_area": cfg.mask.min_area,
               "quantile": cfg.mask.quantile}
    rows = []
    for kind in ("vae", "raw"):
        images = pool["recon" if kind == "vae" else "clean"]
        heat, score = maps(reward, images, pool["captions"], cfg.mask)
        with torch.no_grad():  # the shortcut makes what training makes (a few images suffice: the same ops)
            want, _ = mask_from(reward, images[:16], pool["captions"][:16], cfg.mask)
            assert torch.equal(mask_of(heat[:16], score[:16], cfg.mask), want), "mask_of drifted from mask_from"
        for m in settings(cfg.mask):
            row = {"reward": name, "images": kind, "threshold": m.threshold, "dilate": m.dilate, "blur": m.blur}
            rows.append({**row, **mask_metrics(mask_of(heat, score, m), defect)})
    return rows, shipped


def table(rows: list[dict], shipped: dict[str, dict]) -> str:
    """Markdown: one line per (reward, setting), VAE round trip first, the raw renders' recall / precision after."""
    raw = {(r["reward"], r["threshold"], r["dilate"], r["blur"]): r for r in rows if r["images"] == "raw"}
    pct = lambda x: "n/a" if math.isnan(x) else f"{100 * x:.1f}"  # noqa: E731
    lines = ["| reward | thr | dilate | blur | recall % | precision % | area % | detected % | covered % "
             "| mask on clean % | raw: recall % | raw: precision % |", "|" + "---|" * 12]
    for r in (r for r in rows if r["images"] == "vae"):
        s = shipped[r["reward"]]
        mark = (" **(config)**" if (r["threshold"], r["dilate"], r["blur"]) == (s["threshold"], s["dilate"], s["blur"])
                else "")
        q = raw[(r["reward"], r["threshold"], r["dilate"], r["blur"])]
        lines.append(f"| {r['reward']}{mark} | {r['threshold']:g} | {r['dilate']} | {r['blur']:g} | "
                     f"{pct(r['recall'])} | {pct(r['precision'])} | {pct(r['area'])} | {pct(r['detected'])} | "
                     f"{pct(r['covered'])} | {pct(r['on_clean'])} | {pct(q['recall'])} | {pct(q['precision'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048,
                   help="world samples (about half carry the artifact, a fifth the element)")
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    p.add_argument("--out", default="benchmarks/results/mask_recall.json")
    args = p.parse_args(argv)
    import torch
    from diffusers import AutoencoderKL

    from focusnfix.world import pipeline_path
    from focusnfix.world.train_heads import build_pool

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(pipeline_path() / "vae", local_files_only=True).eval()
    with torch.no_grad():
        pool = build_pool(args.n, DATA_SEED, vae, p_artifact=0.5, p_unwanted=0.6)
    rows, shipped = [], {}
    for name in args.rewards:
        r, shipped[name] = measure(name, pool)
        rows += r
    counts = {name: int((pool[REWARDS[name][1]].flatten(1).sum(1) > 0).sum()) for name in args.rewards}
    text = table(rows, shipped)
    print(f"defect images: {counts} of {args.n} (data stream {DATA_SEED}); {time.perf_counter() - t0:.0f} s\n\n{text}")
    write_result(args.out, {"benchmark": "mask_recall", "n_images": args.n, "data_seed": DATA_SEED,
                            "defect_images": counts,
                            "settings": {"threshold": THRESHOLDS, "dilate": DILATES, "blur": BLURS}, "shipped": shipped,
                            "rows": rows, "table": text, "seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
