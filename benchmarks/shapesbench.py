"""shapesbench: the paper's comparison on the built-in world, for both defect kinds.

    python benchmarks/shapesbench.py [--seeds 0 1 2] [--eval-seeds 0 1] [--out benchmarks/results/shapesbench.json]
    python benchmarks/shapesbench.py --arch flow   # the flow world (SD3 format): world-flow-*.yaml, no SLD

For each defect (artifact: configs/world-artifact.yaml; unwanted element: configs/world-safety.yaml)
it trains Focus-N-Fix and DRaFT with the same budget (steps, LR, LoRA rank) for every training seed,
then evaluates base, DRaFT, Focus-N-Fix, Reward Guidance, Reward Guidance + region (and SLD for the
unwanted element) on held-out prompts (world:heldout) and held-out noise seeds with `focusnfix eval`
(independent judges: alignment oracle, defect judge). Trained methods are reported as mean ± std
over training seeds. Prints markdown tables and writes JSON; eval folders (with report.html) stay
under --work. ``--arch flow`` runs the same comparison on the flow-matching world (configs
world-flow-artifact.yaml / world-flow-safety.yaml; SLD is left out: it refuses flow-matching models);
its defaults are --work runs/shapesbench-flow and --out benchmarks/results/shapesbench-flow.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
DEFECTS = {
    "artifact": {"config": ROOT / "configs" / "world-artifact.yaml", "judge": "defect_artifact", "inference": ["rg", "rg-region"]},
    "unwanted": {"config": ROOT / "configs" / "world-safety.yaml", "judge": "defect_unwanted", "inference": ["rg", "rg-region", "sld"]},
}
FLOW_CONFIGS = {"artifact": ROOT / "configs" / "world-flow-artifact.yaml", "unwanted": ROOT / "configs" / "world-flow-safety.yaml"}
COLUMNS = ["reward", "{judge}", "alignment", "outside_mae", "inside_mae", "outside_mse", "inside_mse", "outside_ssim", "seconds"]


def config_of(defect: str, arch: str = "unet") -> Path:
    return FLOW_CONFIGS[defect] if arch == "flow" else DEFECTS[defect]["config"]


def train_runs(defect: str, seeds: list[int], work: Path, overrides: list[str], arch: str = "unet") -> dict[str, Path]:
    from focusnfix.config import load_config
    from focusnfix.trainer import Trainer

    runs = {}
    for seed in seeds:
        for method in ("fnf", "draft"):
            out = work / defect / f"{method}-s{seed}"
            if not (out / "lora" / "pytorch_lora_weights.safetensors").is_file():
                cfg = load_config(config_of(defect, arch), [f"method={method}", f"train.seed={seed}", f"train.output_dir={out}",
                                                              *overrides])
                Trainer(cfg).train(progress=False)
            runs[f"{method}-s{seed}"] = out
    return runs


def evaluate(defect: str, runs: dict[str, Path], args, work: Path) -> Path:
    from focusnfix.config import load_config
    from focusnfix.evaluation.runner import Evaluation
    from focusnfix.evaluation.world_metrics import world_metrics
    from focusnfix.prompt_sets import load_prompt_set
    from focusnfix.report import render_report

    cfg = load_config(config_of(defect, args.arch), args.set)
    methods = ["base", *[f"{name}={path}" for name, path in runs.items()]]
    inference = {"rg": f"rg:scale={args.rg_scale}", "rg-region": f"rg-region:scale={args.rg_scale}",
                 "sld": f"sld:{args.sld_preset},concept={args.sld_concept}"}
    methods += [inference[m] for m in DEFECTS[defect]["inference"] if not (args.arch == "flow" and m == "sld")]
    records = load_prompt_set("world:heldout")[: args.prompts]
    out = work / defect / "eval"
    ev = Evaluation(cfg, methods, records, args.eval_seeds, out, batch_size=8, extra_metrics=[world_metrics()], progress=False)
    ev.prompt_set = "world:heldout"
    ev.run(overwrite=True)
    render_report(out, title=f"shapesbench: {defect}")
    return out


def aggregate(eval_dir: Path, defect: str) -> list[dict]:
    """Per method family: mean over samples per method, then mean ± std over training seeds."""
    from focusnfix.evaluation.runner import method_means

    cols = [c.format(judge=DEFECTS[defect]["judge"]) for c in COLUMNS]
    per_method = method_means(eval_dir, cols)
    families: dict[str, list[dict]] = {}
    for method, values in per_method.items():
        families.setdefault(method.split("-s")[0] if method[:3] in ("fnf", "dra") else method, []).append(values)
    table = []
    for family, items in families.items():
        entry = {"method": family, "training_seeds": len(items)}
        for c in cols:
            vals = [v[c] for v in items if c in v]
            if vals:
                entry[c] = statistics.mean(vals)
                entry[f"{c}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        table.append(entry)
    return table


def markdown(defect: str, table: list[dict]) -> str:
    cols = [c.format(judge=DEFECTS[defect]["judge"]) for c in COLUMNS]
    lines = [f"| method | seeds | {' | '.join(cols)} |", "|---|---|" + "---|" * len(cols)]
    for e in table:
        cells = [f"{e[c]:.4g} ± {e[c + '_std']:.2g}" if c in e else "–" for c in cols]
        lines.append(f"| {e['method']} | {e['training_seeds']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[1000, 1001], help="held-out noise seeds")
    p.add_argument("--prompts", type=int, default=54, help="held-out prompts used (max 54)")
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=list(DEFECTS))
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="override for both configs")
    p.add_argument("--rg-scale", type=float, default=30.0)
    p.add_argument("--sld-preset", default="strong")
    p.add_argument("--sld-concept", default="magenta")
    p.add_argument("--arch", default="unet", choices=["unet", "flow"], help="the UNet world or the flow (SD3-format) world")
    p.add_argument("--work", default=None, help="default runs/shapesbench (runs/shapesbench-flow with --arch flow)")
    p.add_argument("--out", default=None, help="default benchmarks/results/shapesbench.json (shapesbench-flow.json)")
    p.add_argument("--aggregate-only", action="store_true", help="re-read existing eval folders under --work, no training")
    args = p.parse_args(argv)
    suffix = "-flow" if args.arch == "flow" else ""
    args.work = args.work or f"runs/shapesbench{suffix}"
    args.out = args.out or f"benchmarks/results/shapesbench{suffix}.json"
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    work, result = Path(args.work), {"benchmark": "shapesbench", "settings": vars(args), "defects": {}}
    for defect in args.defects:
        t0 = time.perf_counter()
        if args.aggregate_only:
            eval_dir = work / defect / "eval"
        else:
            eval_dir = evaluate(defect, train_runs(defect, args.seeds, work, args.set, args.arch), args, work)
        table = aggregate(eval_dir, defect)
        result["defects"][defect] = {"table": table, "eval_dir": str(eval_dir), "seconds": time.perf_counter() - t0}
        print(f"\n### {defect}\n\n{markdown(defect, table)}\n", flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
