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
import math
import os
import shutil
import sys
import time
from functools import reduce
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFECTS = {"artifact": (ROOT / "configs" / "world-artifact.yaml", "defect_artifact"),
           "unwanted": (ROOT / "configs" / "world-safety.yaml", "defect_unwanted")}
FLOW_CONFIGS = {"artifact": ROOT / "configs" / "world-flow-artifact.yaml", "unwanted": ROOT / "configs" / "world-flow-safety.yaml"}
METRICS = {"defect": "{judge}", "alignment": "alignment", "outside": "outside_mae", "inside": "inside_mae", "reward": "reward"}
TOL = 0.015  # 1.5 points


# -- training -------------------------------------------------------------------------------------
def run_name(lam: float, seed: int) -> str:
    return f"{family(lam)}-s{seed}"


def family(lam: float) -> str:
    return "draft" if lam == 0 else f"fnf-l{lam:g}"


def export_dir(run: Path, steps: int) -> Path:
    """The run's LoRA at ``steps`` (``train.export_lora_steps``: ``RUN/lora-step-NNNNNN/``); work folders of
    this script before that option hold it in ``RUN/steps/step-NNNNNN/``, still read."""
    from focusnfix.training.trainer import export_name

    legacy = run / "steps" / f"step-{steps:06d}"
    return legacy if (legacy / "pytorch_lora_weights.safetensors").is_file() else run / export_name(steps)


def config_of(defect: str, arch: str = "unet") -> Path:
    """The world config of one defect: the UNet world, or the flow (SD3-format) world with ``arch="flow"``."""
    return FLOW_CONFIGS[defect] if arch == "flow" else DEFECTS[defect][0]


def train_run(defect: str, lam: float, seed: int, exports: list[int], work: Path, overrides: list[str], arch: str = "unet") -> Path:
    """Train one (λ, seed) run to max(exports), exporting a LoRA at every length; skip it when done."""
    from focusnfix.runs.checkpoint import latest_checkpoint
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer, check_output_dir

    out = work / defect / run_name(lam, seed)
    if (out / "bench.json").is_file() and all((export_dir(out, n) / "pytorch_lora_weights.safetensors").is_file() for n in exports):
        return out
    if (out / "summary.json").is_file():
        raise SystemExit(f"pareto: {out} finished without the LoRAs of lengths {exports}; use another --work for a new grid")
    method = ["method=draft"] if lam == 0 else ["method=fnf", f"objective.lam={lam}"]
    cfg = load_config(config_of(defect, arch), [*method, f"train.seed={seed}", f"train.output_dir={out}", f"train.steps={max(exports)}",
                                          f"train.checkpoint_every={reduce(math.gcd, exports)}", "train.log_every=1",
                                          f"train.export_lora_steps={sorted(set(exports))}", *overrides])
    resume = latest_checkpoint(out / "checkpoints", quiet=True) is not None
    check_output_dir(out, resume)
    bench = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {"train_s": 0.0, "sessions": 0}
    t0 = time.perf_counter()
    Trainer(cfg).train(resume=resume, progress=False)
    bench = {"train_s": bench["train_s"] + time.perf_counter() - t0, "sessions": bench["sessions"] + 1, "steps": max(exports)}
    (out / "bench.json").write_text(json.dumps(bench))
    print(f"[pareto] trained {defect}/{out.name} ({bench['train_s']:.0f} s)", flush=True)
    return out


def step_seconds(run: Path) -> dict[int, float]:
    """Cumulative logged training seconds at each step (metrics.jsonl, one row per step)."""
    rows = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[int(r["step"])] = float(r.get("seconds", 0.0))
    total, out = 0.0, {}
    for step in sorted(rows):
        total += rows[step]
        out[step] = total
    return out


# -- evaluation -----------------------------------------------------------------------------------
def eval_run(defect: str, split: str, run: Path, lengths: list[int], seeds: list[int], prompts: int, work: Path,
             overrides: list[str], judges, arch: str = "unet") -> Path:
    """One eval folder per (split, run): base + the run's LoRAs at ``lengths``; skipped when it has them."""
    from focusnfix.config import load_config
    from focusnfix.evaluation.runner import Evaluation
    from focusnfix.prompts.sets import load_prompt_set

    out = work / defect / f"eval-{split}" / run.name
    records = load_prompt_set(f"world:{split}")[:prompts]
    want = {f"s{n}" for n in lengths}
    have: set[str] = set()
    if (out / "eval.json").is_file():
        meta = json.loads((out / "eval.json").read_text())
        if meta["seeds"] == sorted(seeds) and len((out / "samples.jsonl").read_text().splitlines()) == len(meta["methods"]) * len(records) * len(seeds):
            have = set(meta["methods"]) - {"base"}
            if want <= have:
                return out
    steps = sorted(int(m[1:]) for m in want | have)
    cfg = load_config(config_of(defect, arch), overrides)
    methods = ["base", *[f"s{n}={export_dir(run, n)}" for n in steps]]
    t0 = time.perf_counter()
    partial = out.with_name(f".partial-{out.name}")
    if not partial.exists():  # start from the split's base images and masks instead of sampling them again
        shutil.copytree(base_template(defect, split, cfg, records, seeds, work), partial)
    ev = Evaluation(cfg, methods, records, seeds, out, batch_size=8, extra_metrics=[judges], progress=False)
    ev.prompt_set = f"world:{split}"
    ev.run(overwrite=True)
    print(f"[pareto] evaluated {defect}/{split}/{run.name} at {steps} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


_BASE_TEMPLATES: dict[tuple, Path] = {}


def base_template(defect: str, split: str, cfg, records, seeds: list[int], work: Path) -> Path:
    """The base model's images and masks M(I0) on one split, sampled once: every run's eval folder of that split
    starts as a copy of this in-progress eval (same settings, so the eval resumes past its base pass). Base images
    depend only on (prompt, noise seed) and the frozen model, so the copy equals sampling them again. Checked (one
    model load) once per process and split."""
    from focusnfix.config import to_dict
    from focusnfix.evaluation.runner import Evaluation
    from focusnfix.evaluation.workdir import WorkDir

    key = (defect, split, str(work.resolve()), tuple(seeds), tuple(r.prompt for r in records),
           json.dumps(to_dict(cfg), sort_keys=True, default=str))
    if key not in _BASE_TEMPLATES:
        ev = Evaluation(cfg, ["base"], records, seeds, work / defect / f"eval-{split}" / "_base", batch_size=8, progress=False)
        with WorkDir(ev.out, ev.state()) as folder:  # a changed split or seed list starts it afresh (WorkDir's state check)
            ev.generate(ev.specs[0], folder)
        _BASE_TEMPLATES[key] = folder.root
    return _BASE_TEMPLATES[key]


def read_eval(folder: Path, judge: str) -> dict[str, dict[str, "np.ndarray"]]:
    """Method -> metric -> per-image values in job order (NaN where missing)."""
    import numpy as np

    by_method: dict[str, list[dict]] = {}
    for line in (folder / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method, rows in by_method.items():
        rows.sort(key=lambda r: r["i"])
        out[method] = {k: np.array([np.nan if r.get(col.format(judge=judge)) is None else r[col.format(judge=judge)] for r in rows])
                       for k, col in METRICS.items()}
        out[method]["keys"] = [(r["prompt"], r["seed"]) for r in rows]
    return out


def make_point(fam: str, steps: int, per_seed: list[dict], train_s: list[float]) -> dict:
    """One operating point from its training seeds' per-image arrays (same image pairs in each)."""
    import numpy as np

    from focusnfix.evaluation.pareto import bootstrap_ci, wilson

    keys = per_seed[0]["keys"]
    if any(p["keys"] != keys for p in per_seed):
        raise SystemExit(f"pareto: {fam} at {steps} steps was evaluated on different images for different seeds")
    lam = 0.0 if fam in ("draft", "base") else float(fam.split("-l", 1)[1])
    point = {"family": fam, "method": fam.split("-")[0], "lam": lam, "steps": steps, "n_seeds": len(per_seed), "n_images": len(keys)}
    for k in METRICS:
        ci = bootstrap_ci(np.stack([p[k] for p in per_seed]))
        point.update({k: ci["mean"], f"{k}_lo": ci["lo"], f"{k}_hi": ci["hi"], f"{k}_seed_std": ci["seed_std"]})
    for k in ("defect", "alignment"):
        vals = np.concatenate([p[k] for p in per_seed])
        vals = vals[np.isfinite(vals)]
        point[f"{k}_wilson"] = list(wilson(float(vals.sum()), int(vals.size)))
    point["train_s"] = float(np.mean(train_s)) if train_s else 0.0
    point["train_s_seed_std"] = float(np.std(train_s, ddof=1)) if len(train_s) > 1 else 0.0
    return point


def collect(evals: dict[str, Path], runs: dict[str, Path], judge: str, lengths: list[int]) -> list[dict]:
    """Points (base at step 0 first) from the eval folders ``{run name: folder}`` at ``lengths``."""
    data = {name: read_eval(folder, judge) for name, folder in evals.items()}
    secs = {name: step_seconds(runs[name]) for name in evals}
    points = [make_point("base", 0, [next(iter(data.values()))["base"]], [])] if data else []
    families = sorted({name.rsplit("-s", 1)[0] for name in evals}, key=lambda f: (f != "draft", f))
    for fam in families:
        names = [n for n in evals if n.rsplit("-s", 1)[0] == fam]
        for n in lengths:
            have = [name for name in names if f"s{n}" in data[name]]
            if have:
                points.append(make_point(fam, n, [data[name][f"s{n}"] for name in have], [secs[name].get(n, 0.0) for name in have]))
    return points


# -- choosing and reporting -------------------------------------------------------------------------
def choose(points: list[dict]) -> dict:
    """Selection, equal-defect matches and the target check on one split's points."""
    from focusnfix.evaluation.pareto import (REDUCTION_RULE, SELECTION_RULE, best_point, describe_target, equal_defect,
                                             select_lowest_defect, select_point, target_check)

    draft = [p for p in points if p["method"] == "draft"]
    fnf = [p for p in points if p["method"] == "fnf"]
    rec, why = select_point(draft, fnf, TOL)
    out = {"rule": SELECTION_RULE.format(tol_pts=TOL * 100), "recommended": rec, "why": why,
           "equal_defect": equal_defect(draft, fnf), "draft_best": best_point(draft) if draft else None}
    if rec is not None and draft:
        out["target"] = target_check(out["draft_best"], rec, TOL)
        out["target_text"] = describe_target(out["target"], TOL)
    out["reduction_rule"], out["lowest_defect"] = REDUCTION_RULE, select_lowest_defect(draft, fnf)
    reduction = reduction_text(points, out["lowest_defect"])
    if reduction:
        out["reduction"], out["reduction_text"] = reduction
    return out


def reduction_text(points: list[dict], point: dict | None) -> tuple[dict, str] | None:
    """Issue 15's bar for ``point`` among ``points`` (one split): halves the base defect rate, changes less than
    DRaFT at the same length."""
    from focusnfix.evaluation.pareto import describe_reduction, reduction_check

    base = next((p for p in points if p["method"] == "base"), None)
    draft = point and next((p for p in points if p["method"] == "draft" and p["steps"] == point["steps"]), None)
    mine = point and next((p for p in points if (p["family"], p["steps"]) == (point["family"], point["steps"])), None)
    if base is None or draft is None or mine is None:
        return None
    check = reduction_check(base, mine, draft)
    return check, f"{label(mine)} vs base and DRaFT {mine['steps']} st: {describe_reduction(check)}"


def label(p: dict | None) -> str:
    if p is None:
        return "none"
    return "base" if p["family"] == "base" else f"{'DRaFT' if p['method'] == 'draft' else 'FnF λ=' + format(p['lam'], 'g')} {p['steps']} st"


def ci(p: dict, k: str, scale: float = 1.0, fmt: str = ".3g") -> str:
    return f"{p[k] * scale:{fmt}} [{p[k + '_lo'] * scale:{fmt}}, {p[k + '_hi'] * scale:{fmt}}]"


def points_table(points: list[dict]) -> str:
    head = ("| point | seeds x images | defect rate % [95% CI] | seed sd | Wilson 95% | alignment % [CI] | outside change "
            "[CI] | proxy reward | train s |")
    lines = [head, "|" + "---|" * 9]
    for p in points:
        w = p["defect_wilson"]
        lines.append(f"| {label(p)} | {p['n_seeds']} x {p['n_images']} | {ci(p, 'defect', 100, '.1f')} | {p['defect_seed_std'] * 100:.1f} | "
                     f"[{w[0] * 100:.1f}, {w[1] * 100:.1f}] | {ci(p, 'alignment', 100, '.1f')} | {ci(p, 'outside', 1, '.3g')} | "
                     f"{p['reward']:.3g} | {p['train_s']:.0f} |")
    return "\n".join(lines)


def equal_defect_table(rows: list[dict], test: list[dict] | None = None) -> str:
    """Markdown; with ``test``, the val-chosen pairs are looked up on the test points."""
    find = {(p["family"], p["steps"]): p for p in (test or [])}
    lines = ["| DRaFT point | DRaFT defect % | cheapest FnF reaching it | FnF defect % | outside FnF / DRaFT | "
             "alignment FnF - DRaFT (pts) | wall-clock FnF / DRaFT |", "|" + "---|" * 7]
    for r in rows:
        ref, m = r["reference"], r["match"]
        if test is not None:
            ref, m = find.get((ref["family"], ref["steps"])), find.get((m["family"], m["steps"])) if m else None
            if ref is None:
                continue
        if m is None:
            best = r["best"]
            lines.append(f"| {label(ref)} | {ref['defect'] * 100:.1f} | none (lowest FnF: {label(best)}, "
                         f"{best['defect'] * 100:.1f} %) | – | – | – | – |" if best else f"| {label(ref)} | {ref['defect'] * 100:.1f} | none | – | – | – | – |")
            continue
        ratio = f"{m['outside'] / ref['outside']:.2f}" if ref["outside"] else "–"
        cost = f"{m['train_s'] / ref['train_s']:.2f}" if ref["train_s"] else "–"
        lines.append(f"| {label(ref)} | {ref['defect'] * 100:.1f} | {label(m)} | {m['defect'] * 100:.1f} | {ratio} | "
                     f"{(m['alignment'] - ref['alignment']) * 100:+.1f} | {cost} |")
    return "\n".join(lines)


# -- plots (PIL only: matplotlib is not a dependency) --------------------------------------------------
COLORS = {"draft": (200, 60, 40), "fnf": (40, 90, 200), "base": (20, 20, 20)}
SHADES = [(40, 90, 200), (0, 150, 150), (130, 60, 180), (60, 150, 60), (230, 140, 20), (120, 120, 120)]  # one per λ


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = (hi - lo) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class Panel:
    """One x-y panel drawn into a PIL image inside ``box`` = (left, top, right, bottom)."""

    def __init__(self, draw, box, xlim, ylim, title, xlabel, ylabel):
        from PIL import ImageFont

        self.d, self.font, self.small = draw, ImageFont.load_default(size=13), ImageFont.load_default(size=10)
        left, top, right, bottom = box
        self.box = (left + 62, top + 26, right - 10, bottom - 42)
        self.xlim, self.ylim = _pad(xlim), _pad(ylim)
        x0, y0, x1, y1 = self.box
        draw.rectangle(self.box, outline=(0, 0, 0))
        for t in _ticks(*self.xlim):
            px = self.px(t, self.ylim[0])[0]
            draw.line([(px, y0), (px, y1)], fill=(232, 232, 232))
            draw.text((px, y1 + 4), f"{t:.4g}", fill=(0, 0, 0), font=self.small, anchor="ma")
        for t in _ticks(*self.ylim):
            py = self.px(self.xlim[0], t)[1]
            draw.line([(x0, py), (x1, py)], fill=(232, 232, 232))
            draw.text((x0 - 4, py), f"{t:.4g}", fill=(0, 0, 0), font=self.small, anchor="rm")
        draw.rectangle(self.box, outline=(0, 0, 0))
        draw.text(((x0 + x1) / 2, top + 6), title, fill=(0, 0, 0), font=self.font, anchor="ma")
        draw.text(((x0 + x1) / 2, y1 + 20), xlabel, fill=(0, 0, 0), font=self.font, anchor="ma")
        draw.text((left + 4, top + 6), ylabel, fill=(0, 0, 0), font=self.small, anchor="la")

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1)
        fy = (y - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def point(self, x, y, color, xerr=None, yerr=None, filled=True, r=4, text=None):
        cx, cy = self.px(x, y)
        if xerr is not None:  # 95 % interval bars
            self.d.line([self.px(xerr[0], y), self.px(xerr[1], y)], fill=color, width=1)
        if yerr is not None:
            self.d.line([self.px(x, yerr[0]), self.px(x, yerr[1])], fill=color, width=1)
        self.d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, fill=color if filled else (255, 255, 255), width=2)
        if text:
            self.d.text((cx + 6, cy - 6), text, fill=color, font=self.small, anchor="ls")

    def line(self, pts, color, width=2):
        if len(pts) > 1:
            self.d.line([self.px(x, y) for x, y in pts], fill=color, width=width)

    def legend(self, items, bottom: bool = False):
        x0, y0, x1, y1 = self.box
        for i, (text, color) in enumerate(items):
            y = (y1 - 8 - 16 * (len(items) - i)) if bottom else (y0 + 8 + 16 * i)
            self.d.rectangle([x1 - 170, y - 4, x1 - 160, y + 6], fill=color)
            self.d.text((x1 - 155, y + 1), text, fill=(0, 0, 0), font=self.small, anchor="lm")


def _pad(lim):
    lo, hi = lim
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.1, 1e-3)
    return lo - pad, hi + pad


def _lim(points, k):
    vals = [v for p in points for v in (p[k], p.get(f"{k}_lo", p[k]), p.get(f"{k}_hi", p[k])) if math.isfinite(v)]
    return (min(vals), max(vals)) if vals else (0.0, 1.0)


def pareto_plot(points: list[dict], x: str, x_lower: bool, title: str, xlabel: str, path: Path) -> Path:
    """Defect rate (y) vs ``x``: every point with its 95 % CIs, each method's front as a line, base in black."""
    from PIL import Image, ImageDraw

    from focusnfix.evaluation.pareto import pareto_front

    img = Image.new("RGB", (760, 500), "white")
    panel = Panel(ImageDraw.Draw(img), (0, 0, 760, 500), _lim(points, x), _lim(points, "defect"), title, xlabel,
                  "defect rate (judge), lower is better")
    for method in ("draft", "fnf"):
        mine = [p for p in points if p["method"] == method]
        front = pareto_front(mine, x, "defect", x_lower=x_lower)
        panel.line([(p[x], p["defect"]) for p in front], COLORS[method])
        for p in mine:
            on = p in front
            tag = (f"{p['steps']}" if method == "draft" else f"lam {p['lam']:g}/{p['steps']}") if on else None
            panel.point(p[x], p["defect"], COLORS[method], (p[f"{x}_lo"], p[f"{x}_hi"]), (p["defect_lo"], p["defect_hi"]),
                        filled=on, text=tag)
    for p in points:
        if p["method"] == "base":
            panel.point(p[x], p["defect"], COLORS["base"], yerr=(p["defect_lo"], p["defect_hi"]), text="base")
    panel.legend([("DRaFT (filled: front; tag = steps)", COLORS["draft"]), ("Focus-N-Fix, all lam (filled: front)", COLORS["fnf"]),
                  ("base model", COLORS["base"])])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def curves_plot(points: list[dict], title: str, path: Path) -> Path:
    """Proxy (training reward on the val images) and gold (judge defect rate, oracle alignment) vs training steps."""
    from PIL import Image, ImageDraw

    base = next(p for p in points if p["method"] == "base")
    fams = sorted({p["family"] for p in points if p["method"] != "base"}, key=lambda f: (f != "draft", f))
    color = {f: COLORS["draft"] if f == "draft" else SHADES[i % len(SHADES)] for i, f in enumerate(f for f in fams if f != "draft")}
    color["draft"] = COLORS["draft"]
    img = Image.new("RGB", (1200, 430), "white")
    draw = ImageDraw.Draw(img)
    steps = (0, max(p["steps"] for p in points))
    for i, (k, name) in enumerate((("reward", "proxy: training reward (higher better)"), ("defect", "gold: defect rate (judge)"),
                                   ("alignment", "gold: alignment-oracle accuracy"))):
        panel = Panel(draw, (400 * i, 0, 400 * (i + 1), 430), steps, _lim(points, k), f"{title}: {name}", "training steps", "")
        for j, f in enumerate(fams):
            dodge = (j - (len(fams) - 1) / 2) * 0.012 * steps[1]  # side by side, so the interval bars stay readable
            series = [base] + sorted((p for p in points if p["family"] == f), key=lambda p: p["steps"])
            panel.line([(0 if p is base else p["steps"] + dodge, p[k]) for p in series], color[f])
            for p in series[1:]:
                panel.point(p["steps"] + dodge, p[k], color[f], yerr=(p[f"{k}_lo"], p[f"{k}_hi"]), r=3)
        panel.point(0, base[k], COLORS["base"], r=3)
        if i == 0:
            panel.legend([("DRaFT" if f == "draft" else f"FnF lam={f.split('-l')[1]}", color[f]) for f in fams], bottom=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def html_report(result: dict, texts: dict[str, str], plots: list[Path], path: Path) -> Path:
    """A self-contained page: the printed tables (as preformatted markdown) and the PNGs inline."""
    parts = ["<!doctype html><meta charset='utf-8'><title>pareto sweep</title>",
             "<style>body{font-family:sans-serif;max-width:1250px;margin:auto}pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}</style><h1>Operating-point sweep: DRaFT vs Focus-N-Fix</h1>",
             f"<p>{html.escape(__doc__.split(chr(10) + chr(10))[0])}</p><pre>{html.escape(json.dumps(result['settings']))}</pre>"]
    for title, text in texts.items():
        parts.append(f"<h2>{html.escape(title)}</h2><pre>{html.escape(text)}</pre>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(p.name)}</h3><img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


# -- the sweep ------------------------------------------------------------------------------------
def sweep_defect(defect: str, args, work: Path, plots_dir: Path, judges) -> tuple[dict, dict[str, str], list[Path]]:
    judge = DEFECTS[defect][1]
    lams = [0.0, *args.defect_lambdas.get(defect, args.lambdas)]
    curve = sorted({n for n in range(args.curve_every, max(args.lengths) + 1, args.curve_every)} if args.curve_every else set())
    exports = sorted(set(args.lengths) | set(curve))
    runs = {run_name(lam, s): train_run(defect, lam, s, exports, work, args.set, args.arch) for lam in lams for s in args.seeds}
    out, texts, plots = {"runs": {}}, {}, []
    for name, run in runs.items():
        out["runs"][name] = {"train_s": json.loads((run / "bench.json").read_text())["train_s"],
                             "steps_s": {n: step_seconds(run).get(n) for n in exports}}
    val = {name: eval_run(defect, "val", run, exports, args.eval_seeds, args.prompts, work, args.set, judges, args.arch) for name, run in runs.items()}
    val_points = collect(val, runs, judge, args.lengths)
    curve_points = collect(val, runs, judge, exports)
    chosen = choose(val_points)
    out["val"] = {"points": val_points, "curve_points": curve_points, **chosen}
    texts[f"{defect}: val points"] = points_table(val_points)
    texts[f"{defect}: equal-defect (val)"] = equal_defect_table(chosen["equal_defect"])
    texts[f"{defect}: selection (val)"] = (f"rule: {chosen['rule']}\nrecommended: {label(chosen['recommended'])} ({chosen['why']})\n"
                                           f"DRaFT best: {label(chosen['draft_best'])}\ntarget (val): {chosen.get('target_text', 'n/a')}\n"
                                           f"lowest defect rate changing less than DRaFT ({chosen['reduction_rule']}): "
                                           f"{chosen.get('reduction_text', 'none')}")
    for x, lower, xl in (("outside", True, "mean |change| outside M(I0), lower is better"),
                         ("alignment", False, "alignment-oracle accuracy, higher is better")):
        plots.append(pareto_plot(val_points, x, lower, f"{defect}, val: defect rate vs {x}", xl, plots_dir / f"{defect}-val-{x}.png"))
    plots.append(curves_plot(curve_points, defect, plots_dir / f"{defect}-proxy-gold.png"))
    if "test" in args.eval_split:
        picked = {(p["family"], p["steps"]) for p in val_points if p["method"] == "draft" or args.test_points == "all"}
        picked |= {(p["family"], p["steps"]) for p in [chosen["recommended"], chosen["lowest_defect"],
                                                       *[r["match"] for r in chosen["equal_defect"]]] if p}
        test_evals = {}
        for name, run in runs.items():
            lengths = sorted(n for f, n in picked if f == name.rsplit("-s", 1)[0])
            if lengths:
                test_evals[name] = eval_run(defect, "test", run, lengths, args.test_seeds, args.prompts, work, args.set, judges, args.arch)
        test_points = [p for p in collect(test_evals, runs, judge, args.lengths)
                       if p["method"] == "base" or (p["family"], p["steps"]) in picked]
        out["test"] = {"points": test_points, "picked_on_val": sorted(picked)}
        texts[f"{defect}: test points (chosen on val)"] = points_table(test_points)
        texts[f"{defect}: equal-defect (pairs matched on val, numbers on test)"] = equal_defect_table(chosen["equal_defect"], test_points)
        rec = chosen["recommended"] and next((p for p in test_points if (p["family"], p["steps"]) == (chosen["recommended"]["family"],
                                                                                                     chosen["recommended"]["steps"])), None)
        if rec is not None:
            from focusnfix.evaluation.pareto import best_point, describe_target, target_check

            best = best_point([p for p in test_points if p["method"] == "draft"])
            out["test"]["target"] = target_check(best, rec, TOL)
            texts[f"{defect}: target (test)"] = f"{label(rec)} vs DRaFT best on test {label(best)}: {describe_target(out['test']['target'], TOL)}"
        reduction = reduction_text(test_points, chosen["lowest_defect"])
        if reduction:
            out["test"]["reduction"] = reduction[0]
            texts[f"{defect}: halving (test, point chosen on val)"] = reduction[1]
        for x, lower, xl in (("outside", True, "mean |change| outside M(I0)"), ("alignment", False, "alignment-oracle accuracy")):
            plots.append(pareto_plot(test_points, x, lower, f"{defect}, test (chosen on val): defect rate vs {x}", xl,
                                     plots_dir / f"{defect}-test-{x}.png"))
    out["eval_s"] = sum(json.loads(f.read_text())["runtime"]["wall_s"] for f in (work / defect).glob("eval-*/*/eval.json"))
    return out, texts, plots


def main(argv=None) -> int:
    from focusnfix.prompts.sets import WORLD_TEST_SEEDS, WORLD_VAL_SEEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defects", nargs="+", default=list(DEFECTS), choices=list(DEFECTS))
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.2, 0.45, 1.0, 2.0], help="Focus-N-Fix λ (DRaFT, λ = 0, always runs)")
    p.add_argument("--defect-lambdas", action="append", default=[], metavar="DEFECT=L1,L2,...",
                   help="a λ grid for one defect instead of --lambdas, e.g. unwanted=0.1,0.2,0.45 (repeatable)")
    p.add_argument("--lengths", type=int, nargs="+", default=[30, 60, 120, 240], help="training lengths (steps) of the grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--eval-split", nargs="+", default=["val", "test"], choices=["val", "test"],
                   help="val: choose (always run); test: report the chosen points")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=list(WORLD_VAL_SEEDS), help="noise seeds of the val split")
    p.add_argument("--test-seeds", type=int, nargs="+", default=list(WORLD_TEST_SEEDS), help="noise seeds of the test split")
    p.add_argument("--test-points", default="chosen", choices=["chosen", "all"], help="Focus-N-Fix points evaluated on test")
    p.add_argument("--prompts", type=int, default=27, help="captions of each split used (max 27)")
    p.add_argument("--curve-every", type=int, default=0, help="also export/evaluate (val) every N steps for the proxy-gold curves")
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="config override (training and eval)")
    p.add_argument("--arch", default="unet", choices=["unet", "flow"], help="the UNet world or the flow (SD3-format) world")
    p.add_argument("--work", default=None, help="default runs/pareto (runs/pareto-flow with --arch flow)")
    p.add_argument("--out", default=None, help="default benchmarks/results/pareto.json (pareto-flow.json with --arch flow)")
    args = p.parse_args(argv)
    suffix = "-flow" if args.arch == "flow" else ""
    args.work = args.work or f"runs/pareto{suffix}"
    args.out = args.out or f"benchmarks/results/pareto{suffix}.json"
    args.lambdas = [lam for lam in args.lambdas if lam != 0]
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
    result["wall_clock"] = {"this_invocation_s": time.perf_counter() - t0, "recorded_train_s": train_s, "recorded_eval_s": eval_s}
    texts["wall-clock"] = (f"this invocation {result['wall_clock']['this_invocation_s']:.0f} s; recorded over the sweep: training "
                           f"{train_s:.0f} s ({len([r for d in result['defects'].values() for r in d['runs']])} runs), "
                           f"evaluation {eval_s:.0f} s ({len(evals)} eval folders)")
    for title, text in texts.items():
        print(f"\n### {title}\n\n{text}", flush=True)
    report = html_report(result, texts, plots, work / "pareto.html")
    result["report"], result["plots"] = str(report), [str(p) for p in plots]
    from focusnfix.runs.metrics_log import json_safe  # NaN / inf as None: strict JSON (e.g. the change inside an empty mask)

    write_result(out, json_safe(result))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
