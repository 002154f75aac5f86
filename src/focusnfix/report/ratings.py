"""The "Human ratings" section of an eval folder's report: the summary of a ``focusnfix rate`` study
(:func:`focusnfix.rating.summary.load_summary`) as HTML tables, text escaped."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FocusNFixError
from ..rating.summary import _ci, _num, _p, _pct, load_summary
from .page import esc, table, url


def summary_html(s: dict[str, Any]) -> str:
    """The summary as HTML tables (text escaped), for the eval report."""
    raters = ", ".join(f"{esc(r['name'])} ({r['answers']})" for r in s["raters"]) or "none"
    parts = [f"<p class='note'>{s['answers']} answers from {len(s['raters'])} raters: {raters}. Each task showed the "
             f"<b>{esc(s['reference'])}</b> image and one method's image of the same (prompt, seed), sides randomized, "
             "method names hidden. Cells: share of answers with the 95% Wilson CI and the count. Paired tests: exact "
             "two-sided sign test (exact McNemar on yes/no) on answers of the same rater and sample, Holm-corrected "
             "per question; \"better\" is the answer better for the method by the question's order (below). "
             "Agreement: Krippendorff's alpha (nominal) and Fleiss' kappa over the tasks rated by "
             "at least two raters (1 = perfect, 0 = chance).</p>"]
    if s.get("per_method"):
        heads = [esc(c["heading"]) for c in s["per_method"][0]["questions"]]
        body = [[f"<b>{esc(e['method'])}</b>",
                 *[f"{esc(_pct(c['share']))}<br><small>{esc(_ci(c['ci']))} · {c['k']}/{c['n']}</small>"
                   for c in e["questions"]]] for e in s["per_method"]]
        parts.append("<h3>Per method</h3>" + table(["method", *heads], body)
                     + "<p class='small'>The share of each question's first answer (for the preference: the method's "
                     "image) with its 95% Wilson CI; the paper reports these three.</p>")
    for q in s["questions"]:
        body = []
        for m in s["methods"]:
            sh = q["shares"][m]
            cells = [f"<b>{esc(m)}</b>", str(sh["n"])]
            for v, _ in q["options"]:
                o = sh["options"][v]
                cells.append(f"{esc(_pct(o['share']))}<br><small>{esc(_ci(o['ci']))} · {o['k']}/{sh['n']}</small>")
            body.append(cells)
        parts.append(f"<h3>{esc(q['text'])}</h3>"
                     + table(["method", "n", *[esc(label) for _, label in q["options"]]], body))
        if q["vs_reference"]:
            vs = [[f"<b>{esc(e['method'])}</b>", str(e["method_preferred"]), str(e["reference_preferred"]),
                   str(e["other"]), esc(_p(e["p"])), esc(_p(e["p_holm"]))] for e in q["vs_reference"]]
            parts.append(table(["method", "method preferred", f"{esc(s['reference'])} preferred", "other",
                                "p (sign test)", "p (Holm)"], vs))
        if q["pairs"]:
            pairs = [[f"{esc(e['a'])} vs {esc(e['b'])}", str(e["n"]), str(e["a_better"]), str(e["b_better"]),
                      str(e["ties"]), esc(_p(e["p"])), esc(_p(e["p_holm"]))] for e in q["pairs"]]
            parts.append(table(["pair (A vs B)", "paired answers", "A better", "B better", "ties", "p (sign test)",
                                "p (Holm)"], pairs)
                         + f"<p class='small'>Order, better first: {' &gt; '.join(esc(x) for x in q['order'])}.</p>")
    agree = [[f"<td class='text'>{esc(q['text'])}</td>", str(q["agreement"]["units"]),
              esc(_num(q["agreement"]["alpha"])), esc(_num(q["agreement"]["kappa"]))] for q in s["questions"]]
    if len(s["raters"]) >= 2:
        parts.append("<h3>Inter-rater agreement</h3>"
                     + table(["question", "tasks rated by ≥ 2", "Krippendorff α", "Fleiss κ"], agree))
    return "".join(parts)


def ratings_section(db: Path) -> str:
    """The report's "Human ratings" section for a ratings database."""
    try:
        s = load_summary(db)
    except FocusNFixError as e:  # the rest of the report still renders
        return f"<p class='note bad'>{esc(e)}</p>"
    if not s["answers"]:
        return f"<p class='note'>{esc(db.name)} holds no answers yet.</p>"
    return summary_html(s) + f"<p class='small'>Data: <a href='{url(db.name)}'>{esc(db.name)}</a> (SQLite; " \
                             "<code>focusnfix rate EVAL_DIR --export results.csv</code> writes one row per answer).</p>"
