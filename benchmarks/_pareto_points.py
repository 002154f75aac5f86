"""pareto.py's operating points: per-image judge values read from the eval folders, aggregated over training
seeds with bootstrap CIs; the selection on one split and the markdown tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from _pareto_runs import VARIANTS, family_info, step_seconds

if TYPE_CHECKING:
    import numpy as np

METRICS = {"defect": "{judge}", "alignment": "alignment", "outside": "outside_mae", "inside": "inside_mae",
           "reward": "reward", "collateral": "collateral_35", "collateral30": "collateral_30"}
TOL = 0.015  # 1.5 points
ALIGN_WITHIN = 0.05  # issue 25: DRaFT's reference keeps alignment within 5 points of the base model's
ALIGN_TOL = 0.01  # issue 25: Focus-N-Fix's alignment at least the reference's - 1 point


# -- points ---------------------------------------------------------------------------------------
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
        out[method] = {k: np.array([np.nan if r.get(col.format(judge=judge)) is None else r[col.format(judge=judge)]
                                    for r in rows])
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
    method, lam, budget = ("base", 0.0, None) if fam == "base" else family_info(fam)
    point = {"family": fam, "method": method, "lam": lam, "steps": steps, "n_seeds": len(per_seed),
             "n_images": len(keys), "budget": budget, "variant": fam in VARIANTS}
    for k in METRICS:
        ci = bootstrap_ci(np.stack([p[k] for p in per_seed]))
        point.update({k: ci["mean"], f"{k}_lo": ci["lo"], f"{k}_hi": ci["hi"], f"{k}_seed_std": ci["seed_std"]})
    for k in ("defect", "alignment", "collateral"):
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
                points.append(make_point(fam, n, [data[name][f"s{n}"] for name in have],
                                         [secs[name].get(n, 0.0) for name in have]))
    return points


# -- choosing and reporting -------------------------------------------------------------------------
def choose(points: list[dict]) -> dict:
    """Selection, equal-defect matches and the target checks on one split's points."""
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
    out.update(reference_target(points))
    out["reduction_rule"], out["lowest_defect"] = REDUCTION_RULE, select_lowest_defect(draft, fnf)
    reduction = reduction_text(points, out["lowest_defect"])
    if reduction:
        out["reduction"], out["reduction_text"] = reduction
    return out


def reference_target(points: list[dict], chosen: dict | None = None) -> dict:
    """Issue 25's target on one split: DRaFT's reference point (:data:`REFERENCE_RULE`), the Focus-N-Fix point
    chosen against it (``chosen``, e.g. the one picked on val, or :func:`select_point` with the reference and
    ALIGN_TOL), and the check (defect within TOL, outside <= 1/3, alignment >= reference - ALIGN_TOL, collateral
    rate <= 1/2). Empty without base, DRaFT or Focus-N-Fix points."""
    from focusnfix.evaluation.pareto import REFERENCE_RULE, describe_target, draft_reference, select_point, target_check

    base = next((p for p in points if p["method"] == "base"), None)
    draft = [p for p in points if p["method"] == "draft"]
    fnf = [p for p in points if p["method"] == "fnf"]
    if base is None or not draft or not fnf:
        return {}
    ref = draft_reference(draft, base, ALIGN_WITHIN)
    if chosen is None:
        chosen, _ = select_point(draft, fnf, TOL, ref=ref, align_tol=ALIGN_TOL)
    else:
        chosen = next((p for p in fnf if (p["family"], p["steps"]) == (chosen["family"], chosen["steps"])), None)
        if chosen is None:
            return {}
    check = target_check(ref, chosen, TOL, align_tol=ALIGN_TOL, collateral_ratio=0.5)
    return {"reference_rule": REFERENCE_RULE.format(within_pts=ALIGN_WITHIN * 100), "draft_reference": ref,
            "reference_pick": chosen, "reference_target": check,
            "reference_text": f"{label(chosen)} vs DRaFT reference {label(ref)}: "
                              f"{describe_target(check, TOL, align_tol=ALIGN_TOL)}"}


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
    return ("base" if p["family"] == "base"
            else f"{'DRaFT' if p['method'] == 'draft' else knob(p)} {p['steps']} st")


def knob(p: dict) -> str:
    """A Focus-N-Fix point's setting: its fixed λ or its budget (grey levels); a variant's family name."""
    if p.get("variant"):
        return p["family"]
    return f"FnF B={p['budget']:g}" if p.get("budget") is not None else f"FnF λ={p['lam']:g}"


def ci(p: dict, k: str, scale: float = 1.0, fmt: str = ".3g") -> str:
    return f"{p[k] * scale:{fmt}} [{p[k + '_lo'] * scale:{fmt}}, {p[k + '_hi'] * scale:{fmt}}]"


def points_table(points: list[dict]) -> str:
    head = ("| point | seeds x images | defect rate % [95% CI] | seed sd | Wilson 95% | alignment % [CI] | "
            "outside change, grey levels [CI] | collateral rate % (PSNR out < 35 dB) [CI] | < 30 dB % | proxy reward | "
            "train s |")
    lines = [head, "|" + "---|" * 11]
    for p in points:
        w = p["defect_wilson"]
        lines.append(f"| {label(p)} | {p['n_seeds']} x {p['n_images']} | {ci(p, 'defect', 100, '.1f')} | "
                     f"{p['defect_seed_std'] * 100:.1f} | [{w[0] * 100:.1f}, {w[1] * 100:.1f}] | "
                     f"{ci(p, 'alignment', 100, '.1f')} | {ci(p, 'outside', 255, '.3g')} | "
                     f"{ci(p, 'collateral', 100, '.1f')} | {p['collateral30'] * 100:.1f} | "
                     f"{p['reward']:.3g} | {p['train_s']:.0f} |")
    return "\n".join(lines)


BUDGET_TOL = 0.25  # issue 25: the measured outside change within ±25 % of the budget


def budget_table(points: list[dict]) -> str | None:
    """Is each budget honoured? Measured mean outside change (grey levels, with its CI) over the budget, per budget
    point (None when there is none)."""
    rows = [p for p in points if p.get("budget") is not None]
    if not rows:
        return None
    lines = ["| point | budget, grey levels | measured outside change [CI] | measured / budget | within ±25 % |",
             "|---|---|---|---|---|"]
    for p in rows:
        ratio = p["outside"] * 255 / p["budget"]
        lines.append(f"| {label(p)} | {p['budget']:g} | {ci(p, 'outside', 255, '.3g')} | {ratio:.2f} | "
                     f"{'yes' if abs(ratio - 1) <= BUDGET_TOL else 'no'} |")
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
                         f"{best['defect'] * 100:.1f} %) | – | – | – | – |" if best
                         else f"| {label(ref)} | {ref['defect'] * 100:.1f} | none | – | – | – | – |")
            continue
        ratio = f"{m['outside'] / ref['outside']:.2f}" if ref["outside"] else "–"
        cost = f"{m['train_s'] / ref['train_s']:.2f}" if ref["train_s"] else "–"
        lines.append(f"| {label(ref)} | {ref['defect'] * 100:.1f} | {label(m)} | {m['defect'] * 100:.1f} | {ratio} | "
                     f"{(m['alignment'] - ref['alignment']) * 100:+.1f} | {cost} |")
    return "\n".join(lines)
