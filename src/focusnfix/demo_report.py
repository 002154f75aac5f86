"""Self-contained HTML report rendered only from an eval folder's ``results.json`` and images.

Images are referenced by relative path, so the folder can be copied and opened anywhere offline.
"""
from __future__ import annotations

import html
import json
from pathlib import Path


def _table(summary: dict) -> str:
    cols = [("method", "method"), ("reward_base", "reward (base)"), ("reward", "reward (tuned)"),
            ("win_rate", "win rate vs base"), ("change_inside_mask", "mean |Δ| inside mask"),
            ("change_outside_mask", "mean |Δ| outside mask"), ("train_seconds", "train s")]
    head = "".join(f"<th>{html.escape(c[1])}</th>" for c in cols)
    body = ""
    for s in summary.values():
        cells = "".join(f"<td>{s[k]:.4f}</td>" if isinstance(s.get(k), float) else f"<td>{html.escape(str(s.get(k, '')))}</td>" for k, _ in cols)
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(folder: str | Path, title: str = "focusnfix report") -> Path:
    """Write ``folder/report.html`` from ``folder/results.json``; return its path."""
    folder = Path(folder)
    data = json.loads((folder / "results.json").read_text())
    methods = list(data["summary"])
    head = "<th>prompt / seed</th><th>base Î0</th><th>mask M(Î0)</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = ""
    for r in data["samples"]:
        cells = f"<td>{html.escape(r['prompt'])}<br><small>seed {r['seed']}</small></td>"
        for key in ["base", "mask", *methods]:
            score = r.get(f"{key}_reward", r.get("base_reward") if key == "base" else None)
            caption = f"<br><small>r = {score:+.3f}</small>" if score is not None and key != "mask" else ""
            cells += f"<td><img src='{html.escape(r[key])}' width='128'>{caption}</td>"
        rows += f"<tr>{cells}</tr>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center}}img{{image-rendering:pixelated}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Held-out (prompt, seed) pairs. Base Î0 is the frozen model; the mask is M(Î0) (red tint) from the
reward's heatmap; Δ = |Î − Î0| averaged over channels. Focus-N-Fix should change the image inside the mask
and leave the rest; DRaFT (λ = 0) is free to change everything.</p>
<h2>Summary</h2>{_table(data['summary'])}
<h2>Samples</h2><table><tr>{head}</tr>{rows}</table></body></html>"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
