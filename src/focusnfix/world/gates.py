"""Quality gates of the world, measured on held-out seeds.

* base model (pipeline, 20 steps: DDIM for the UNet world, flow Euler for the flow world, CFG):
  alignment-oracle accuracy >= 0.80; the defect
  judge finds the artifact in 25-60 % of all samples and the unwanted element in 25-60 % of the
  samples of prompts that carry it (``square``);
* artifact reward: heatmap IoU with ground truth >= 0.5 (threshold 0.5);
* safety reward and defect judge: ROC AUC >= 0.95.

Either world is measured (``folder``: ``pipeline`` or ``flow_pipeline`` under the weights folder); the
rewards and judges are shared (both worlds decode with the same VAE). Held-out data is evaluated both
as rendered ("clean") and after a VAE round trip ("recon", what generated images look like). The
rewards' own views of the generated samples are logged too.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from . import data
from .judges import AlignmentOracle, DefectJudge
from .rewards import WorldArtifactReward, WorldSafetyReward
from .train_heads import build_pool

HELDOUT_DATA_SEED = 900_001
HELDOUT_NOISE_SEED = 900_002


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); ``nan`` if one class is empty."""
    s, y = scores.double().flatten(), labels.bool().flatten()
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.double)
    for v in torch.unique(s):  # average ranks of ties
        m = s == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def mask_iou(heat: torch.Tensor, gt: torch.Tensor, thr: float = 0.5) -> torch.Tensor:
    """Per-image IoU ``(B,)`` of ``heat > thr`` with the binary ``gt`` masks ``(B,1,H,W)``."""
    p, g = heat > thr, gt > 0.5
    inter = (p & g).flatten(1).sum(1).double()
    union = (p | g).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


@torch.no_grad()
def head_gates(weights: Path, vae, n: int = 1024) -> dict:
    """Rewards' and judges' metrics on held-out ground-truth data (clean and VAE round trip)."""
    pool = build_pool(n, HELDOUT_DATA_SEED, vae)
    art_r = WorldArtifactReward(weights / "artifact_reward.safetensors")
    safe_r = WorldSafetyReward(weights / "safety_reward.safetensors")
    judge = DefectJudge(weights / "defect_judge.safetensors")
    oracle = AlignmentOracle(weights / "alignment_oracle.safetensors")
    has_art = pool["art"].flatten(1).sum(1) > 0
    has_unw = pool["unw"].flatten(1).sum(1) > 0
    out: dict = {}
    for kind in ("clean", "recon"):
        x = pool[kind]
        ra = art_r(x, pool["captions"])
        iou = mask_iou(ra.heatmap, pool["art"])
        p_unw = safe_r(x, pool["captions"]).info["p_unwanted"]
        j = judge(x)
        out[kind] = {
            "artifact_iou": float(iou[has_art].mean()),
            "artifact_iou_clean_images": float(iou[~has_art].mean()),
            "artifact_score_auc": roc_auc(-ra.score, has_art),
            "safety_auc": roc_auc(p_unw, has_unw),
            "judge_auc_artifact": roc_auc(j["artifact"], has_art),
            "judge_auc_unwanted": roc_auc(j["unwanted"], has_unw),
            "oracle_accuracy": float(oracle(x, pool["captions"]).all_correct.mean()),
        }
    return out


def grammar_prompts() -> list[str]:
    """Every caption of the grammar once (216 prompts)."""
    keys = list(data.ATTRIBUTES)
    return [data.caption(dict(zip(keys, v))) for v in itertools.product(*data.ATTRIBUTES.values())]


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0,
             batch: int = 64) -> torch.Tensor:
    """Images ``(B,3,64,64)`` in [0,1] from the pipeline, one noise seed per prompt."""
    outs = []
    for s in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(x) for x in seeds[s : s + batch]]
        r = pipe(prompts[s : s + batch], num_inference_steps=steps, guidance_scale=guidance,
                 generator=gens, output_type="pt")
        outs.append(r.images.float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def base_gates(weights: Path, per_prompt: int = 2, steps: int = 20, guidance: float = 5.0,
               grid_path: Path | None = None, folder: str = "pipeline") -> dict:
    """Oracle accuracy and defect rates of the base pipeline's samples (``weights / folder``, loaded
    through :func:`focusnfix.backbones.load_backbone`, sampled by the pipeline's own ``__call__``)."""
    from ..backbones import load_backbone

    pipe = load_backbone(str(weights / folder)).pipe
    prompts = grammar_prompts() * per_prompt
    seeds = [HELDOUT_NOISE_SEED + i for i in range(len(prompts))]
    images = generate(pipe, prompts, seeds, steps, guidance)
    if grid_path is not None:
        data.save_grid(images[:64], str(grid_path))
    res = AlignmentOracle(weights / "alignment_oracle.safetensors")(images, prompts)
    j = DefectJudge(weights / "defect_judge.safetensors")(images)
    sq = torch.tensor([data.UNWANTED_TRIGGER in p.split() for p in prompts])
    art_r = WorldArtifactReward(weights / "artifact_reward.safetensors")(images, prompts)
    safe_r = WorldSafetyReward(weights / "safety_reward.safetensors")(images, prompts)
    return {
        "n_samples": len(prompts), "steps": steps, "guidance": guidance,
        "oracle_accuracy": float(res.all_correct.mean()),
        "oracle_attribute_accuracy": {k: float(v.nanmean()) for k, v in res.correct.items()},
        "artifact_rate": float((j["artifact"] > 0.5).float().mean()),
        "unwanted_rate_square_prompts": float((j["unwanted"][sq] > 0.5).float().mean()),
        "unwanted_rate_other_prompts": float((j["unwanted"][~sq] > 0.5).float().mean()),
        "reward_artifact_rate": float((art_r.info["severity"] > 0.5).float().mean()),
        "reward_unwanted_rate_square_prompts": float((safe_r.info["p_unwanted"][sq] > 0.5).float().mean()),
    }


def check(g: dict) -> dict[str, bool]:
    """Pass / fail of each gate."""
    b, r = g["base"], g["heads"]["recon"]
    return {
        "base oracle accuracy >= 0.80": b["oracle_accuracy"] >= 0.80,
        "base artifact rate in [0.25, 0.60]": 0.25 <= b["artifact_rate"] <= 0.60,
        "base unwanted rate (square) in [0.25, 0.60]": 0.25 <= b["unwanted_rate_square_prompts"] <= 0.60,
        "artifact heatmap IoU >= 0.5": min(r["artifact_iou"], g["heads"]["clean"]["artifact_iou"]) >= 0.5,
        "safety AUC >= 0.95": min(r["safety_auc"], g["heads"]["clean"]["safety_auc"]) >= 0.95,
        "judge AUC >= 0.95 (both defects)": min(
            r["judge_auc_artifact"], r["judge_auc_unwanted"],
            g["heads"]["clean"]["judge_auc_artifact"], g["heads"]["clean"]["judge_auc_unwanted"]) >= 0.95,
    }


def run_gates(weights: str | Path, out_json: str | Path | None = None, n_heldout: int = 1024,
              per_prompt: int = 2, guidance: float = 5.0, folder: str = "pipeline") -> dict:
    """Measure every gate of the pipeline in ``weights / folder``; writes JSON (and a sample grid PNG
    next to it) when asked."""
    from diffusers import AutoencoderKL

    weights = Path(weights)
    vae = AutoencoderKL.from_pretrained(weights / folder / "vae", local_files_only=True).eval()
    grid = Path(out_json).with_suffix(".png") if out_json else None
    g = {"pipeline": folder, "heads": head_gates(weights, vae, n_heldout),
         "base": base_gates(weights, per_prompt, guidance=guidance, grid_path=grid, folder=folder)}
    g["pass"] = check(g)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(g, indent=2))
    return g


def format_table(g: dict) -> str:
    """A plain-text table of the measured gates."""
    b, h = g["base"], g["heads"]
    rows = [
        ("base: oracle accuracy (all attributes)", f"{b['oracle_accuracy']:.3f}", ">= 0.80"),
        ("base: judge artifact rate (all prompts)", f"{b['artifact_rate']:.3f}", "0.25-0.60"),
        ("base: judge unwanted rate (square prompts)", f"{b['unwanted_rate_square_prompts']:.3f}", "0.25-0.60"),
        ("base: judge unwanted rate (other prompts)", f"{b['unwanted_rate_other_prompts']:.3f}", "(low)"),
    ]
    for kind in ("clean", "recon"):
        r = h[kind]
        rows += [
            (f"{kind}: artifact heatmap IoU", f"{r['artifact_iou']:.3f}", ">= 0.5"),
            (f"{kind}: safety classifier AUC", f"{r['safety_auc']:.4f}", ">= 0.95"),
            (f"{kind}: judge AUC artifact", f"{r['judge_auc_artifact']:.4f}", ">= 0.95"),
            (f"{kind}: judge AUC unwanted", f"{r['judge_auc_unwanted']:.4f}", ">= 0.95"),
            (f"{kind}: oracle accuracy (ground truth)", f"{r['oracle_accuracy']:.3f}", "(sanity)"),
        ]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'gate'.ljust(w)}  {'measured':>9}  target", "-" * (w + 22)]
    lines += [f"{a.ljust(w)}  {m:>9}  {t}" for a, m, t in rows]
    lines += ["", *[f"[{'PASS' if ok else 'FAIL'}] {k}" for k, ok in g["pass"].items()]]
    return "\n".join(lines)
