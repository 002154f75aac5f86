"""shapesbench: the paper's comparison on the built-in world, for both defect kinds.

    python benchmarks/shapesbench.py [--seeds 0 1 2] [--eval-seeds 0 1] [--out benchmarks/results/shapesbench.json]
    python benchmarks/shapesbench.py --arch flow   # the flow world (SD3 format): world-flow-*.yaml, no SLD
    python benchmarks/shapesbench.py --methods fnf grpo fnf-grpo --inference --split test \
        --eval-seeds 2000 2001 2002 2003 --work runs/grpobench --out benchmarks/results/grpobench.json

For each defect (artifact: configs/world-artifact.yaml; unwanted element: configs/world-safety.yaml)
it trains Focus-N-Fix and DRaFT with the same budget (steps, LR, LoRA rank) for every training seed,
then evaluates base, DRaFT, Focus-N-Fix, Reward Guidance, Reward Guidance + region (and SLD for the
unwanted element) on held-out prompts (world:heldout) and held-out noise seeds with `focusnfix eval`
(independent judges: alignment oracle, defect judge). Trained methods are reported as mean ± std
over training seeds. Prints markdown tables and writes JSON; eval folders (with report.html) stay
under --work. ``--arch flow`` runs the same comparison on the flow-matching world (configs
world-flow-artifact.yaml / world-flow-safety.yaml; SLD is left out: it refuses flow-matching models);
its defaults are --work runs/shapesbench-flow and --out benchmarks/results/shapesbench-flow.json.

``--methods`` picks the trained methods (default fnf draft): ``grpo`` and ``fnf-grpo`` train with the
score-only detectors (configs/world-artifact-grpo.yaml, world-safety-grpo.yaml; docs/grpo.md).
``--split`` picks the held-out captions: heldout (54), or its disjoint halves val (27, for choosing
settings) and test (27, for reporting them). Each run's training wall-clock and reward evaluations are
recorded (bench.json in its folder) and reported per method.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import json
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
DEFECTS = {
    "artifact": {"config": ROOT / "configs" / "world-artifact.yaml", "judge": "defect_artifact",
                 "inference": ["rg", "rg-region"]},
    "unwanted": {"config": ROOT / "configs" / "world-safety.yaml", "judge": "defect_unwanted",
                 "inference": ["rg", "rg-region", "sld"]},
}
FLOW_CONFIGS = {"artifact": ROOT / "configs" / "world-flow-artifact.yaml",
                "unwanted": ROOT / "configs" / "world-flow-safety.yaml"}
GRPO_CONFIGS = {"artifact": ROOT / "configs" / "world-artifact-grpo.yaml",
                "unwanted": ROOT / "configs" / "world-safety-grpo.yaml"}
TRAINED = ("fnf", "draft", "grpo", "fnf-grpo")
COLUMNS = ["reward", "{judge}", "alignment", "outside_mae", "inside_mae", "outside_mse", "inside_mse", "outside_ssim",
           "seconds", "train_s", "reward_evals"]


def config_of(defect: str, arch: str = "unet", method: str = "fnf") -> Path:
    if method in ("grpo", "fnf-grpo"):
        if arch == "flow":
            raise SystemExit("shapesbench: grpo methods run on the UNet world only (no flow GRPO config shipped)")
        return GRPO_CONFIGS[defect]
    return FLOW_CONFIGS[defect] if arch == "flow" else DEFECTS[defect]["config"]


def reward_evaluations(cfg) -> int:
    """Reward calls over a run: one per image, G images per prompt for the GRPO methods."""
    per_step = cfg.train.batch_size * (cfg.grpo.group_size if cfg.method in ("grpo", "fnf-grpo") else 1)
    return per_step * cfg.train.grad_accum * cfg.train.steps


def train_runs(defect: str, seeds: list[int], work: Path, overrides: list[str], arch: str = "unet",
               methods: tuple[str, ...] = ("fnf", "draft")) -> dict[str, Path]:
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer

    runs = {}
    for seed in seeds:
        for method in methods:
            out = work / defect / f"{method}-s{seed}"
            if not (out / "lora" / "pytorch_lora_weights.safetensors").is_file():
                cfg = load_config(config_of(defect, arch, method), [f"method={method}", f"train.seed={seed}",
                                                                    f"train.output_dir={out}", *overrides])
                t0 = time.perf_counter()
                Trainer(cfg).train(progress=False)
                (out / "bench.json").write_text(json.dumps({"train_s": time.perf_counter() - t0,
                                                            "reward_evals": reward_evaluations(cfg)}))
            runs[f"{method}-s{seed}"] = out
    return runs


def evaluate(defect: str, runs: dict[str, Path], args, work: Path) -> Path:
    from focusnfix.config import load_config
    from focusnfix.evaluation.runner import Evaluation
    from focusnfix.evaluation.world_metrics import world_metrics
    from focusnfix.prompts.sets import load_prompt_set
    from focusnfix.report import render_report

    cfg = load_config(config_of(defect, args.arch), args.set)
    methods = ["base", *[f"{name}={path}" for name, path in runs.items()]]
    inference = {"rg": f"rg:scale={args.rg_scale}", "rg-region": f"rg-region:scale={args.rg_scale}",
                 "sld": f"sld:{args.sld_preset},concept={args.sld_concept}"}
    if args.inference:
        methods += [inference[m] for m in DEFECTS[defect]["inference"] if not (args.arch == "flow" and m == "sld")]
    records = load_prompt_set(f"world:{args.split}")[: args.prompts]
    out = work / defect / "eval"
    ev = Evaluation(cfg, methods, records, args.eval_seeds, out, batch_size=8, extra_metrics=[world_metrics()],
                    progress=False)
    ev.prompt_set = f"world:{args.split}"
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
        bench = eval_dir.parent / method / "bench.json"  # training wall-clock and reward calls of a trained run
        if bench.is_file():
            values = {**values, **json.loads(bench.read_text())}
        families.setdefault(re.sub(r"-s\d+$", "", method), []).append(values)
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
    p.add_argument("--split", default="heldout", choices=["heldout", "val", "test"],
                   help="held-out captions: all 54, or the val / test halves (27 each)")
    p.add_argument("--methods", nargs="+", default=["fnf", "draft"], choices=TRAINED, help="trained methods")
    p.add_argument("--inference", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the inference-time baselines (Reward Guidance, SLD)")
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=list(DEFECTS))
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="override for both configs")
    p.add_argument("--rg-scale", type=float, default=30.0)
    p.add_argument("--sld-preset", default="strong")
    p.add_argument("--sld-concept", default="magenta")
    p.add_argument("--arch", default="unet", choices=["unet", "flow"],
                   help="the UNet world or the flow (SD3-format) world")
    p.add_argument("--work", default=None, help="default runs/shapesbench (runs/shapesbench-flow with --arch flow)")
    p.add_argument("--out", default=None, help="default benchmarks/results/shapesbench.json (shapesbench-flow.json)")
    p.add_argument("--aggregate-only", action="store_true",
                   help="re-read existing eval folders under --work, no training")
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
            eval_dir = evaluate(defect, train_runs(defect, args.seeds, work, args.set, args.arch, tuple(args.methods)),
                                args, work)
        table = aggregate(eval_dir, defect)
        result["defects"][defect] = {"table": table, "eval_dir": str(eval_dir), "seconds": time.perf_counter() - t0}
        print(f"\n### {defect}\n\n{markdown(defect, table)}\n", flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
