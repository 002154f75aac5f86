"""pareto: operating-point sweeps of DRaFT and Focus-N-Fix on the built-in world, with uncertainty.

    make pareto                                                   # BENCHMARKS.md's sweep (about an hour on 2 cores)
    python benchmarks/pareto.py --defect-lambdas artifact=0.2,0.45,1 --defect-lambdas unwanted=0.1,0.2,0.45 \
        --lengths 30 60 120 --seeds 0 1 2                         # the same, one defect after the other
    python benchmarks/pareto.py --arch flow --defects artifact --lambdas 0.1 --lengths 30 60 120  # the flow world
    python benchmarks/pareto.py                                   # the default grid (hours on 2 CPU cores)
    python benchmarks/pareto.py --defects artifact --lambdas 0.2 0.45 --lengths 30 60 --seeds 0 1 \
        --eval-split val --work runs/pareto-small --out runs/pareto-small/pareto.json   # a quick look

What it does, per defect (artifact: configs/world-artifact.yaml; unwanted element: world-safety.yaml):

1. Trains DRaFT and Focus-N-Fix at every --lambdas, for every training seed, ONCE to the longest of
   --lengths; a diffusers-format LoRA is exported at every length (``train.export_lora_steps``:
   ``RUN/lora-step-NNNNNN/``; ``RUN/steps/step-NNNNNN/`` in older work folders), so the
   shorter training lengths come free. Training wall-clock per length is the sum of the logged step
   times up to that step (metrics.jsonl), so it survives resumes; ``bench.json`` holds each run's total.
2. Evaluates every (run, length) on the validation split (world:val x --eval-seeds, default 1000 1001:
   54 images per point and seed) with the world's independent judges (defect judge, alignment oracle);
   one eval folder per run (base + its lengths) under ``--work/DEFECT/eval-val/RUN``; the base model's images
   and masks are sampled once per split (``eval-SPLIT/.partial-_base``) and copied into each run's folder.
3. Chooses on val (rule below), then evaluates on the disjoint test split (world:test x --test-seeds,
   default 2000-2007: 216 images per point and seed) every DRaFT point and the chosen Focus-N-Fix
   points: the recommended one and, for each DRaFT length, the equal-defect match found on val
   (``--test-points all``: every point). Test numbers are reported for settings chosen on val only.
4. Aggregates points (mean over training seeds of per-seed image means), Pareto fronts (defect rate vs
   mean |change| outside M(I0); defect rate vs alignment-oracle accuracy), the equal-defect table, the
   target check, proxy (the training reward, measured on the val images) vs gold (the judges) over
   training, PNG plots (``<out stem>-plots/``), an HTML report (``--work/pareto.html``) and JSON (--out).

Everything is resumable: finished trainings (all exports present) and finished eval folders holding the
needed lengths are skipped; an interrupted training resumes from its newest checkpoint, an interrupted
eval from its finished images.

Issue 15's bar is reported too: the Focus-N-Fix point with the lowest val defect rate among those changing less
outside M than DRaFT at the same length (``REDUCTION_RULE``) is evaluated on test, against the base rate
(at least halved?) and DRaFT at that length.

Recommended λ (selection rule, on val): among Focus-N-Fix points (λ, length) whose defect rate is at most
DRaFT's best (lowest over lengths) defect rate + 1.5 points and whose alignment-oracle accuracy is at least
that DRaFT point's, the one with the smallest mean outside change (ties: fewer steps). If none qualifies:
the lowest defect rate among points that keep alignment, else the lowest defect rate.

Issue 25's target (``REFERENCE_RULE``): DRaFT's reference is the lowest defect rate among its points whose
alignment stays within 5 points of the base model's (a DRaFT point that reward-hacks the prompt away is no fix to
match), else its shortest run; the Focus-N-Fix point is chosen on val against it (defect within 1.5 points,
alignment at least the reference's - 1 point, then the smallest outside change) and checked on test: defect
within 1.5 points, outside change <= 1/3, alignment >= reference - 1 point, collateral rate <= 1/2.
``--fnf-lengths`` lets the Focus-N-Fix families stop earlier than DRaFT (whose longer runs are references).

Equal-defect table: for each DRaFT point, the cheapest (training wall-clock) Focus-N-Fix point whose defect
rate is <= DRaFT's, with its outside change, alignment and wall-clock ratio. Target ("a Focus-N-Fix setting
reaches DRaFT's best defect rate within 1.5 points, outside change <= 1/3 of DRaFT's, alignment >= DRaFT's")
is checked for the recommended point against DRaFT's best point, on val and (for the recommended point) test.

Uncertainty: 95 % two-stage percentile bootstrap (2000 replicates) over training seeds and then (prompt,
noise seed) pairs, the same pairs for every drawn seed (focusnfix.evaluation.pareto.bootstrap_ci); the
seed standard deviation and a Wilson interval of the pooled rate (images x seeds, no seed variance) are
reported next to it.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from _pareto_plots import curves_plot, pareto_plot  # noqa: E402
from _pareto_points import (TOL, budget_table, choose, collect, equal_defect_table, label, points_table,  # noqa: E402
                            reduction_text, reference_target)
from _pareto_runs import (DEFECTS, VARIANTS, budget_family, eval_run, export_dir, run_name,  # noqa: E402, F401
                          step_seconds, train_run)  # (export_dir: tests)


def html_report(result: dict, texts: dict[str, str], plots: list[Path], path: Path) -> Path:
    """A self-contained page: the printed tables (as preformatted markdown) and the PNGs inline."""
    parts = ["<!doctype html><meta charset='utf-8'><title>pareto sweep</title>",
             "<style>body{font-family:sans-serif;max-width:1250px;margin:auto}pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}</style><h1>Operating-point sweep: DRaFT vs Focus-N-Fix</h1>",
             f"<p>{html.escape(__doc__.split(chr(10) + chr(10))[0])}</p>"
             f"<pre>{html.escape(json.dumps(result['settings']))}</pre>"]
    for title, text in texts.items():
        parts.append(f"<h2>{html.escape(title)}</h2><pre>{html.escape(text)}</pre>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(p.name)}</h3><img alt='{html.escape(p.name)}' "
                     f"src='data:image/png;base64,{data}'>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


# -- the sweep ------------------------------------------------------------------------------------
def sweep_defect(defect: str, args, work: Path, plots_dir: Path, judges) -> tuple[dict, dict[str, str], list[Path]]:
    judge = DEFECTS[defect][1]
    knobs = [0.0, *args.defect_lambdas.get(defect, args.lambdas), *[budget_family(b) for b in args.budgets],
             *VARIANTS]
    curve = sorted({n for n in range(args.curve_every, max(args.lengths) + 1, args.curve_every)}
                   if args.curve_every else set())
    exports = sorted(set(args.lengths) | set(curve))
    # Focus-N-Fix families may stop earlier than DRaFT (--fnf-lengths): DRaFT's reference points need its longer runs
    fnf_exports = sorted({n for n in exports if n <= max(args.fnf_lengths)} | set(args.fnf_lengths))
    runs = {run_name(knob, s): train_run(defect, knob, s, exports if knob == 0.0 else fnf_exports, work, args.set,
                                         args.arch)
            for knob in knobs for s in args.seeds}
    lengths = sorted(set(args.lengths) | set(args.fnf_lengths))
    out, texts, plots = {"runs": {}}, {}, []
    for name, run in runs.items():
        out["runs"][name] = {"train_s": json.loads((run / "bench.json").read_text())["train_s"],
                             "steps_s": {n: step_seconds(run).get(n) for n in exports}}
    val = {name: eval_run(defect, "val", run, exports if name.startswith("draft-") else fnf_exports, args.eval_seeds,
                          args.prompts, work, args.set, judges, args.arch)
           for name, run in runs.items()}
    def asked(points: list[dict]) -> list[dict]:  # a Focus-N-Fix eval folder may hold lengths beyond --fnf-lengths
        return [p for p in points if p["method"] in ("base", "draft") or p["steps"] in args.fnf_lengths]

    val_points = asked(collect(val, runs, judge, lengths))
    curve_points = collect(val, runs, judge, sorted(set(exports) | set(fnf_exports)))
    chosen = choose(val_points)
    out["val"] = {"points": val_points, "curve_points": curve_points, **chosen}
    texts[f"{defect}: val points"] = points_table(val_points)
    texts[f"{defect}: equal-defect (val)"] = equal_defect_table(chosen["equal_defect"])
    if budget_table(val_points):
        texts[f"{defect}: budgets honoured? (val)"] = budget_table(val_points)
    texts[f"{defect}: selection (val)"] = (f"rule: {chosen['rule']}\nrecommended: {label(chosen['recommended'])} "
                                           f"({chosen['why']})\n"
                                           f"DRaFT best: {label(chosen['draft_best'])}\n"
                                           f"target (val): {chosen.get('target_text', 'n/a')}\n"
                                           f"issue 25's target (val; {chosen.get('reference_rule', 'n/a')}): "
                                           f"{chosen.get('reference_text', 'n/a')}\n"
                                           f"lowest defect rate changing less than DRaFT ({chosen['reduction_rule']}): "
                                           f"{chosen.get('reduction_text', 'none')}")
    for x, lower, xl in (("outside", True, "mean |change| outside M(I0), lower is better"),
                         ("alignment", False, "alignment-oracle accuracy, higher is better")):
        plots.append(pareto_plot(val_points, x, lower, f"{defect}, val: defect rate vs {x}", xl,
                                 plots_dir / f"{defect}-val-{x}.png"))
    plots.append(curves_plot(curve_points, defect, plots_dir / f"{defect}-proxy-gold.png"))
    if "test" in args.eval_split:
        picked = {(p["family"], p["steps"]) for p in val_points if p["method"] == "draft" or args.test_points == "all"}
        picked |= {(p["family"], p["steps"]) for p in [chosen["recommended"], chosen["lowest_defect"],
                                                       *[r["match"] for r in chosen["equal_defect"]]] if p}
        test_evals = {}
        for name, run in runs.items():
            lengths = sorted(n for f, n in picked if f == name.rsplit("-s", 1)[0])
            if lengths:
                test_evals[name] = eval_run(defect, "test", run, lengths, args.test_seeds, args.prompts, work, args.set,
                                            judges, args.arch)
        test_points = [p for p in asked(collect(test_evals, runs, judge, lengths))
                       if p["method"] == "base" or (p["family"], p["steps"]) in picked]
        out["test"] = {"points": test_points, "picked_on_val": sorted(picked)}
        texts[f"{defect}: test points (chosen on val)"] = points_table(test_points)
        if budget_table(test_points):
            texts[f"{defect}: budgets honoured? (test)"] = budget_table(test_points)
        texts[f"{defect}: equal-defect (pairs matched on val, numbers on test)"] = equal_defect_table(
            chosen["equal_defect"], test_points)
        rec = chosen["recommended"] and next((p for p in test_points
                                              if (p["family"], p["steps"]) == (chosen["recommended"]["family"],
                                                                               chosen["recommended"]["steps"])), None)
        if rec is not None:
            from focusnfix.evaluation.pareto import best_point, describe_target, target_check

            best = best_point([p for p in test_points if p["method"] == "draft"])
            out["test"]["target"] = target_check(best, rec, TOL)
            texts[f"{defect}: target (test)"] = (f"{label(rec)} vs DRaFT best on test {label(best)}: "
                                                 f"{describe_target(out['test']['target'], TOL)}")
        if chosen.get("reference_pick"):
            ref25 = reference_target(test_points, chosen["reference_pick"])
            if ref25:
                out["test"]["reference_target"] = ref25["reference_target"]
                texts[f"{defect}: issue 25's target (test, point chosen on val)"] = ref25["reference_text"]
        reduction = reduction_text(test_points, chosen["lowest_defect"])
        if reduction:
            out["test"]["reduction"] = reduction[0]
            texts[f"{defect}: halving (test, point chosen on val)"] = reduction[1]
        for x, lower, xl in (("outside", True, "mean |change| outside M(I0)"),
                             ("alignment", False, "alignment-oracle accuracy")):
            plots.append(pareto_plot(test_points, x, lower, f"{defect}, test (chosen on val): defect rate vs {x}", xl,
                                     plots_dir / f"{defect}-test-{x}.png"))
    out["eval_s"] = sum(json.loads(f.read_text())["runtime"]["wall_s"]
                        for f in (work / defect).glob("eval-*/*/eval.json"))
    return out, texts, plots


def main(argv=None) -> int:
    from focusnfix.prompts.sets import WORLD_TEST_SEEDS, WORLD_VAL_SEEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=list(DEFECTS))
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.2, 0.45, 1.0, 2.0],
                   help="Focus-N-Fix λ (DRaFT, λ = 0, always runs)")
    p.add_argument("--defect-lambdas", action="append", default=[], metavar="DEFECT=L1,L2,...",
                   help="a λ grid for one defect instead of --lambdas, e.g. unwanted=0.1,0.2,0.45 (repeatable)")
    p.add_argument("--budgets", type=float, nargs="+", default=[],
                   help="Focus-N-Fix with these collateral budgets (objective.budget, grey levels) beside the λ grid")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=key=value,key=value",
                   help="a Focus-N-Fix family with its own training keys (method=fnf unless given), e.g. "
                        "global-b1=objective.budget=1,mask.source=none (repeatable); run names NAME-sSEED")
    p.add_argument("--lengths", type=int, nargs="+", default=[30, 60, 120, 240],
                   help="training lengths (steps) of the grid")
    p.add_argument("--fnf-lengths", type=int, nargs="+", default=None,
                   help="training lengths of the Focus-N-Fix families (default: --lengths); DRaFT always runs to "
                        "--lengths, whose points are the references")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--eval-split", nargs="+", default=["val", "test"], choices=["val", "test"],
                   help="val: choose (always run); test: report the chosen points")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=list(WORLD_VAL_SEEDS),
                   help="noise seeds of the val split")
    p.add_argument("--test-seeds", type=int, nargs="+", default=list(WORLD_TEST_SEEDS),
                   help="noise seeds of the test split")
    p.add_argument("--test-points", default="chosen", choices=["chosen", "all"],
                   help="Focus-N-Fix points evaluated on test")
    p.add_argument("--prompts", type=int, default=27, help="captions of each split used (max 27)")
    p.add_argument("--curve-every", type=int, default=0,
                   help="also export/evaluate (val) every N steps for the proxy-gold curves")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="config override (training and eval)")
    p.add_argument("--arch", default="unet", choices=["unet", "flow"],
                   help="the UNet world or the flow (SD3-format) world")
    p.add_argument("--work", default=None, help="default runs/pareto (runs/pareto-flow with --arch flow)")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/pareto.json (pareto-flow.json with --arch flow)")
    args = p.parse_args(argv)
    suffix = "-flow" if args.arch == "flow" else ""
    args.work = args.work or f"runs/pareto{suffix}"
    args.out = args.out or f"benchmarks/results/pareto{suffix}.json"
    args.lambdas = [lam for lam in args.lambdas if lam != 0]
    args.fnf_lengths = args.fnf_lengths or args.lengths
    grids = {}
    for item in args.defect_lambdas:
        defect, _, values = item.partition("=")
        try:
            lams = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            lams = []
        if defect not in DEFECTS or not lams:
            p.error(f"--defect-lambdas {item!r}: expected DEFECT=L1,L2,... with DEFECT one of {', '.join(DEFECTS)}")
        grids[defect] = [lam for lam in lams if lam != 0]
    args.defect_lambdas = grids
    for item in args.variant:
        name, _, keys = item.partition("=")
        pairs = [k.strip() for k in keys.split(",") if k.strip()]
        if not name or "-s" in name or name == "draft" or name.startswith("fnf-") or not pairs \
                or any("=" not in k for k in pairs):
            p.error(f"--variant {item!r}: expected NAME=key=value,key=value with NAME free of '-s', not draft, "
                    "not starting fnf-")
        VARIANTS[name] = pairs
    import torch

    from focusnfix.evaluation.world_metrics import world_metrics

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0, work, out = time.perf_counter(), Path(args.work), Path(args.out)
    plots_dir = out.parent / f"{out.stem}-plots"
    result, texts, plots = {"benchmark": "pareto", "settings": vars(args), "defects": {}}, {}, []
    judges = world_metrics()
    for defect in args.defects:
        res, txt, pl = sweep_defect(defect, args, work, plots_dir, judges)
        result["defects"][defect] = res
        texts.update(txt)
        plots += pl
    train_s = sum(r["train_s"] for d in result["defects"].values() for r in d["runs"].values())
    evals = list(work.glob("*/eval-*/*/eval.json"))
    eval_s = sum(json.loads(f.read_text())["runtime"]["wall_s"] for f in evals)
    result["wall_clock"] = {"this_invocation_s": time.perf_counter() - t0, "recorded_train_s": train_s,
                            "recorded_eval_s": eval_s}
    texts["wall-clock"] = (f"this invocation {result['wall_clock']['this_invocation_s']:.0f} s; "
                           f"recorded over the sweep: training "
                           f"{train_s:.0f} s ({len([r for d in result['defects'].values() for r in d['runs']])} runs), "
                           f"evaluation {eval_s:.0f} s ({len(evals)} eval folders)")
    for title, text in texts.items():
        print(f"\n### {title}\n\n{text}", flush=True)
    report = html_report(result, texts, plots, work / "pareto.html")
    result["report"], result["plots"] = str(report), [str(p) for p in plots]
    # NaN / inf as None: strict JSON (e.g. the change inside an empty mask)
    from focusnfix.runs.metrics_log import json_safe

    write_result(out, json_safe(result))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
