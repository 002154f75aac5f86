"""The study's summary: shares with Wilson CIs, paired sign tests, inter-rater agreement; as text
(``focusnfix rate --summary``) and as CSV rows (``--export``); :mod:`focusnfix.report.ratings` renders it as
the report's HTML section.

Units: every answer counts once (a method's share pools its samples and raters). Paired tests pair two
methods' answers by the same rater on the same sample; "vs reference" counts, for a sided question
(which image is preferred), the answers preferring the method against those preferring the reference.
Holm-Bonferroni corrects across the method pairs (or the methods) of each question.

Per method, the summary leads with the share of each question's *first* answer with its Wilson CI: for the
paper's questions "problem fixed: yes", "other aspects worse: yes" (the paper's "degraded") and "prefer: the
method's image" (a sided question's first analysed answer).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from ..evaluation.stats import holm
from .questions import Question, from_data
from .stats import fleiss_kappa, krippendorff_alpha, sign_test, wilson


def analysed(rows: list[dict[str, Any]], questions: tuple[Question, ...]) -> list[dict[str, Any]]:
    """Rows with ``values``: each question's analysed answer (sided: method / reference)."""
    out = []
    for r in rows:
        values = {q.key: q.normalized(str(r["answers"][q.key]), r["base_side"])
                  for q in questions if q.key in r["answers"]}
        out.append({**r, "values": values})
    return out


def summarize(rows: list[dict[str, Any]], questions: tuple[Question, ...], reference: str = "base",
              methods: list[str] | None = None) -> dict[str, Any]:
    """Everything the summary shows, as plain data (see the module docstring)."""
    rows = analysed(rows, questions)
    methods = list(methods or [])
    methods += sorted({r["method"] for r in rows} - set(methods))
    raters: dict[int, dict[str, Any]] = {}
    for r in rows:
        raters.setdefault(r["rater_id"], {"name": r.get("rater", str(r["rater_id"])), "answers": 0})["answers"] += 1
    out: dict[str, Any] = {"reference": reference, "methods": methods, "answers": len(rows),
                           "raters": list(raters.values()), "questions": []}
    for q in questions:
        options = q.analysed_options(reference)
        entry: dict[str, Any] = {"key": q.key, "text": q.neutral(), "sided": q.sided,
                                 "options": [(o.value, o.label) for o in options], "shares": {}, "vs_reference": [],
                                 "pairs": [], "agreement": _agreement(rows, q, options)}
        for m in methods:
            vals = [r["values"][q.key] for r in rows if r["method"] == m and q.key in r["values"]]
            entry["shares"][m] = {"n": len(vals), "options": {
                o.value: {"k": vals.count(o.value), "share": vals.count(o.value) / len(vals) if vals else None,
                          "ci": wilson(vals.count(o.value), len(vals))} for o in options}}
        if q.sided:
            for m in methods:
                counts = entry["shares"][m]["options"]
                wins, losses = counts["method"]["k"], counts["reference"]["k"]
                entry["vs_reference"].append({"method": m, "method_preferred": wins, "reference_preferred": losses,
                                              "other": entry["shares"][m]["n"] - wins - losses,
                                              "p": sign_test(wins, losses)})
            for e, p in zip(entry["vs_reference"], holm([e["p"] for e in entry["vs_reference"]])):
                e["p_holm"] = p
        if all(o.score is not None for o in options):
            entry["pairs"] = _pairs(rows, q, methods)
            entry["order"] = [o.label for o in sorted(options, key=lambda o: -o.score)]
        out["questions"].append(entry)
    out["per_method"] = per_method(out)
    return out


def per_method(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method: for each question, the share of its first (analysed) answer, ``k``/``n`` and the Wilson CI."""
    out = []
    for m in s["methods"]:
        cells = []
        for q in s["questions"]:
            value, label = q["options"][0]
            sh = q["shares"][m]
            o = sh["options"][value]
            cells.append({"key": q["key"], "heading": f"{q['key']}: {label}", "k": o["k"], "n": sh["n"],
                          "share": o["share"], "ci": o["ci"]})
        out.append({"method": m, "questions": cells})
    return out


def _pairs(rows: list[dict[str, Any]], q: Question, methods: list[str]) -> list[dict[str, Any]]:
    """Sign test per method pair on scores paired by (rater, sample); Holm across the pairs."""
    score: dict[tuple[str, int, str], float] = {}
    for r in rows:
        if q.key in r["values"]:
            score[(r["method"], r["rater_id"], json.dumps(r["sample"]))] = q.score(r["values"][q.key])
    out = []
    for a, b in combinations(methods, 2):
        keys = [(rid, s) for (m, rid, s) in score if m == a and (b, rid, s) in score]
        diffs = [score[(a, *k)] - score[(b, *k)] for k in keys]
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        out.append({"a": a, "b": b, "n": len(diffs), "a_better": wins, "b_better": losses,
                    "ties": len(diffs) - wins - losses, "p": sign_test(wins, losses)})
    for e, p in zip(out, holm([e["p"] for e in out])):
        e["p_holm"] = p
    return out


def _agreement(rows: list[dict[str, Any]], q: Question, options) -> dict[str, Any]:
    """Krippendorff's alpha (nominal) over tasks; Fleiss' kappa when every rated-twice task has the
    same number of raters."""
    units: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if q.key in r["values"]:
            units[r["task"]].append(r["values"][q.key])
    multi = [v for v in units.values() if len(v) >= 2]
    raters = len({r["rater_id"] for r in rows})
    kappa = None
    if multi and len({len(v) for v in multi}) == 1:
        kappa = fleiss_kappa([[v.count(o.value) for o in options] for v in multi])
    return {"raters": raters, "units": len(multi), "alpha": krippendorff_alpha(multi) if multi else None,
            "kappa": kappa, "kappa_note": None if kappa is not None or not multi else
            ("unequal raters per task" if len({len(v) for v in multi}) > 1 else "one category only")}


def load_summary(db: str | Path, methods: list[str] | None = None) -> dict[str, Any]:
    """:func:`summarize` of a ratings database (read only)."""
    from .storage import read_ratings

    rows, questions_json, reference = read_ratings(db)
    questions = from_data(json.loads(questions_json), str(db))
    return summarize(rows, questions, reference, methods)


# -- text ----------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _p(p: float | None) -> str:
    return "—" if p is None else ("<1e-6" if p < 1e-6 else f"{p:.3g}")


def _ci(ci) -> str:
    return "—" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def summary_text(s: dict[str, Any]) -> str:
    """The summary as plain text for the terminal."""
    who = ", ".join(f"{r['name']}: {r['answers']}" for r in s["raters"]) or "none"
    lines = [f"{s['answers']} answers from {len(s['raters'])} raters ({who}); reference: {s['reference']}"]
    lines += _per_method_text(s)
    for q in s["questions"]:
        lines += ["", f"[{q['key']}] {q['text']}"]
        for m in s["methods"]:
            sh = q["shares"][m]
            cells = [f"{label} {_pct(sh['options'][v]['share'])} {_ci(sh['options'][v]['ci'])}"
                     for v, label in q["options"]]
            lines.append(f"  {m} (n={sh['n']}): " + "; ".join(cells))
        for e in q["vs_reference"]:
            lines.append(f"  {e['method']} vs {s['reference']}: preferred {e['method_preferred']} "
                         f"vs {e['reference_preferred']} "
                         f"(other {e['other']}), sign test p={_p(e['p'])}, Holm {_p(e['p_holm'])}")
        for e in q["pairs"]:
            lines.append(f"  {e['a']} vs {e['b']}: {e['n']} paired answers, {e['a']} better {e['a_better']}, "
                         f"{e['b']} better {e['b_better']}, ties {e['ties']}, sign test p={_p(e['p'])}, "
                         f"Holm {_p(e['p_holm'])}")
        a = q["agreement"]
        if a["raters"] >= 2:
            lines.append(f"  agreement over {a['units']} tasks rated by >= 2: Krippendorff alpha {_num(a['alpha'])}, "
                         f"Fleiss kappa {_num(a['kappa'])}" + (f" ({a['kappa_note']})" if a["kappa_note"] else ""))
    return "\n".join(lines)


def _per_method_text(s: dict[str, Any]) -> list[str]:
    """The per-method table: one row per method, one column per question (share [95% CI] k/n)."""
    if not s.get("per_method"):
        return []
    rows = [["method", *[c["heading"] for c in s["per_method"][0]["questions"]]]]
    for e in s["per_method"]:
        rows.append([e["method"], *[f"{_pct(c['share'])} {_ci(c['ci'])} {c['k']}/{c['n']}" for c in e["questions"]]])
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return (["", f"Per method: share of each question's first answer, 95% Wilson CI, count (vs {s['reference']})"]
            + ["  " + "   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows])


# -- CSV -----------------------------------------------------------------------------------------

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs: a string starting with = + - @ tab or CR (a formula to
    Excel, LibreOffice, Google Sheets; rater names and prompts are anyone's) gets a leading ``'`` (OWASP's advice
    on CSV injection). Numbers are left as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def export_csv(db: str | Path, study=None) -> tuple[str, int]:
    """(CSV text, number of answers): one row per answer; prompt and seed from the eval folder when given.
    Cells that a spreadsheet would read as a formula are neutralised (:func:`text_cell`); lines end in CRLF
    (RFC 4180), so a prompt holding a CR or LF stays inside its quoted cell."""
    from .storage import read_ratings

    rows, questions_json, reference = read_ratings(db)
    questions = from_data(json.loads(questions_json), str(db))
    tasks = study.tasks if study is not None else {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["rater", "rater_id", "task", "sample", "prompt", "seed", "method", "reference", "base_side",
                *[c for q in questions for c in ((q.key + "_shown", q.key) if q.sided else (q.key,))],
                "revisions", "created_at", "updated_at"])
    for r in analysed(rows, questions):
        t = tasks.get(r["task"])
        w.writerow(map(text_cell, [
            r["rater"], r["rater_id"], r["task"], json.dumps(r["sample"]), t.prompt if t else "",
            t.seed if t else "", r["method"], reference, r["base_side"],
            *[c for q in questions for c in ((r["answers"].get(q.key, ""), r["values"].get(q.key, ""))
                                               if q.sided else (r["values"].get(q.key, ""),))],
            r["revisions"], r["created_at"], r["updated_at"]]))
    return buf.getvalue(), len(rows)
