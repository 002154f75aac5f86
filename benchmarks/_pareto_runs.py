"""pareto.py's runs: one training per (defect, λ, seed) with a LoRA exported at every length, and one eval
folder per (split, run), the base model's images sampled once per split. Everything is skipped when done."""
from __future__ import annotations

import json
import math
import shutil
import time
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFECTS = {"artifact": (ROOT / "configs" / "world-artifact.yaml", "defect_artifact"),
           "unwanted": (ROOT / "configs" / "world-safety.yaml", "defect_unwanted")}
FLOW_CONFIGS = {"artifact": ROOT / "configs" / "world-flow-artifact.yaml",
                "unwanted": ROOT / "configs" / "world-flow-safety.yaml"}


# -- training -------------------------------------------------------------------------------------
def run_name(knob: float | str, seed: int) -> str:
    """``knob``: a fixed λ (0 = DRaFT) or a family name (``fnf-b1``: Focus-N-Fix with a collateral budget of 1)."""
    return f"{knob if isinstance(knob, str) else family(knob)}-s{seed}"


def family(lam: float) -> str:
    return "draft" if lam == 0 else f"fnf-l{lam:g}"


def budget_family(budget: float) -> str:
    return f"fnf-b{budget:g}"


VARIANTS: dict[str, list[str]] = {}  # pareto.py --variant NAME=key=value,...: families with their own training keys


def family_overrides(fam: str) -> list[str]:
    """The config keys of a family: DRaFT, a fixed λ (``fnf-l0.2``), a budget in grey levels (``fnf-b1``), or a
    variant (``VARIANTS``: method=fnf unless it says otherwise)."""
    if fam in VARIANTS:
        keys = VARIANTS[fam]
        return keys if any(k.startswith("method=") for k in keys) else ["method=fnf", *keys]
    if fam == "draft":
        return ["method=draft"]
    kind, value = fam[len("fnf-")], fam[len("fnf-") + 1:]
    # a fixed λ clears the shipped configs' budget (which would otherwise take precedence)
    return ["method=fnf", *([f"objective.lam={value}", "objective.budget=null"] if kind == "l"
                            else [f"objective.budget={value}"])]


def family_info(fam: str) -> tuple[str, float | None, float | None]:
    """(method, fixed λ or None, budget or None) of a family name (see :func:`family_overrides`)."""
    if fam in VARIANTS:
        keys = dict(k.split("=", 1) for k in family_overrides(fam))
        lam, budget = keys.get("objective.lam"), keys.get("objective.budget")
        return (keys["method"], None if lam is None or budget is not None else float(lam),
                None if budget is None else float(budget))
    if fam == "draft":
        return "draft", 0.0, None
    kind, value = fam[len("fnf-")], float(fam[len("fnf-") + 1:])
    return "fnf", value if kind == "l" else None, value if kind == "b" else None


def export_dir(run: Path, steps: int) -> Path:
    """The run's LoRA at ``steps`` (``train.export_lora_steps``: ``RUN/lora-step-NNNNNN/``); work folders of
    this script before that option hold it in ``RUN/steps/step-NNNNNN/``, still read."""
    from focusnfix.training.trainer import export_name

    legacy = run / "steps" / f"step-{steps:06d}"
    return legacy if (legacy / "pytorch_lora_weights.safetensors").is_file() else run / export_name(steps)


def config_of(defect: str, arch: str = "unet") -> Path:
    """The world config of one defect: the UNet world, or the flow (SD3-format) world with ``arch="flow"``."""
    return FLOW_CONFIGS[defect] if arch == "flow" else DEFECTS[defect][0]


def train_run(defect: str, knob: float | str, seed: int, exports: list[int], work: Path, overrides: list[str],
              arch: str = "unet") -> Path:
    """Train one (λ or family, seed) run to max(exports), exporting a LoRA at every length; skip it when done."""
    from focusnfix.runs.checkpoint import latest_checkpoint
    from focusnfix.config import load_config
    from focusnfix.training.trainer import Trainer, check_output_dir

    out = work / defect / run_name(knob, seed)
    if (out / "bench.json").is_file() and all((export_dir(out, n) / "pytorch_lora_weights.safetensors").is_file()
                                              for n in exports):
        return out
    if (out / "summary.json").is_file():
        raise SystemExit(f"pareto: {out} finished without the LoRAs of lengths {exports}; "
                         "use another --work for a new grid")
    method = family_overrides(knob if isinstance(knob, str) else family(knob))
    cfg = load_config(config_of(defect, arch), [*method, f"train.seed={seed}", f"train.output_dir={out}",
                                                f"train.steps={max(exports)}",
                                                f"train.checkpoint_every={reduce(math.gcd, exports)}",
                                                "train.log_every=1", f"train.export_lora_steps={sorted(set(exports))}",
                                                *overrides])
    resume = latest_checkpoint(out / "checkpoints", quiet=True) is not None
    check_output_dir(out, resume)
    bench = (json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file()
             else {"train_s": 0.0, "sessions": 0})
    t0 = time.perf_counter()
    Trainer(cfg).train(resume=resume, progress=False)
    bench = {"train_s": bench["train_s"] + time.perf_counter() - t0, "sessions": bench["sessions"] + 1,
             "steps": max(exports)}
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
        if meta["seeds"] == sorted(seeds) and len((out / "samples.jsonl").read_text().splitlines()) \
                == len(meta["methods"]) * len(records) * len(seeds):
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
        ev = Evaluation(cfg, ["base"], records, seeds, work / defect / f"eval-{split}" / "_base", batch_size=8,
                        progress=False)
        # a changed split or seed list starts it afresh (WorkDir's state check)
        with WorkDir(ev.out, ev.state()) as folder:
            ev.generate(ev.specs[0], folder)
        _BASE_TEMPLATES[key] = folder.root
    return _BASE_TEMPLATES[key]
