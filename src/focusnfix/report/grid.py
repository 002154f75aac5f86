"""The eval report's sample grids: per sample, the base image Î0, its heatmap, the mask overlay M(Î0), then for
each other method its image Î and the amplified difference |Î − Î0| (:mod:`.diffs`) with the mask outline.

Two selections come first on the page (:func:`previews`): the samples where the methods differ most outside the
mask although every compared method fixed the defect (the evidence of collateral change), and the samples with
the worst base reward. The whole grid (:func:`sample_grid`) follows at the end, worst base reward first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.stats import finite, sample_key
from .diffs import AMPLIFY, write_diff
from .eval_tables import Metric
from .glance import BY_DESIGN, fnf_draft_pairs
from .page import esc, fmt, image, table

MAX_ROWS = 64  # sample-grid rows shown; the rest are counted in a note
PREVIEW_ROWS = 3  # rows of each selection at the top of the page
OUTSIDE = ("outside_grey", "outside_mae", "outside_mse")  # the change outside M that ranks samples, first present
DIFF_NOTE = (f"|Î − Î0| ×{AMPLIFY}: the absolute change from the base image (mean over R, G, B) amplified {AMPLIFY} "
             f"times (1 grey level shows as {AMPLIFY}; black = unchanged), the mask M(Î0) outlined in yellow: "
             "anything bright outside the outline is collateral change.")

Samples = dict[Any, dict[str, dict[str, Any]]]


class Grid:
    """The samples of an eval folder by key and method, and the difference images written for them."""

    def __init__(self, folder: Path, rows: list[dict[str, Any]], methods: list[str], reference: str,
                 metrics: dict[str, Metric]):
        self.folder, self.methods, self.reference, self.metrics = folder, methods, reference, metrics
        self.others = [m for m in methods if m != reference]
        self.samples: Samples = {}
        for r in rows:
            self.samples.setdefault(sample_key(r), {})[str(r.get("method"))] = r
        self.defects = [n for n in metrics if n.startswith("defect_")]
        self._diffs: dict[tuple[Any, str], str | None] = {}

    def worst_first(self) -> list[Any]:
        """Sample keys, the lowest base reward first (samples without one last)."""
        def key(k: Any) -> tuple:
            base_reward = (self.samples[k].get(self.reference) or {}).get("reward")
            return (base_reward if finite(base_reward) else float("inf"), isinstance(k, tuple),
                    str(k) if isinstance(k, tuple) else k)
        return sorted(self.samples, key=key)

    def diff(self, key: Any, method: str) -> str | None:
        if (key, method) not in self._diffs:
            by = self.samples[key]
            row, ref = by.get(method) or {}, by.get(self.reference) or {}
            self._diffs[key, method] = write_diff(self.folder, row.get("image"), ref.get("image"),
                                                  ref.get("mask") or row.get("mask"))
        return self._diffs[key, method]

    def _caption(self, row: dict[str, Any] | None) -> str:
        if row is None:
            return ""
        text = f"r = {esc(fmt(row.get('reward'), 3))}" if "reward" in row else ""
        flagged = [d[len("defect_"):] for d in self.defects if row.get(d) == 1]
        if flagged:
            text += f"<br><span class='flag'>⚠ {esc(', '.join(flagged))}</span>"
        return f"<div class='cap'>{text}</div>"

    def _diff_cell(self, key: Any, method: str) -> str:
        row = self.samples[key].get(method)
        rel = self.diff(key, method) if row else None
        if rel is None:
            return "<span class='missing'>no difference image</span>"
        parts = []
        if finite(row.get("outside_grey")):
            parts.append(f"out {esc(fmt(row['outside_grey'], 3))} grey")
        if row.get("outside_psnr_inf"):
            parts.append("PSNR ∞")
        elif finite(row.get("outside_psnr")):
            parts.append(f"PSNR {esc(fmt(row['outside_psnr'], 3))} dB")
        caption = f"<div class='cap'>{'<br>'.join(parts)}</div>"
        return image(self.folder, rel, alt=f"|Î − Î0| ×{AMPLIFY} {method}") + caption

    def table(self, keys: list[Any]) -> str:
        """Per sample: a row naming the prompt, then Î0 | heatmap | mask | per method: Î, |Î − Î0| ×AMPLIFY."""
        ref_name = esc(self.reference)
        header = [f"{ref_name} (Î0)", "heatmap", "mask M(Î0)"]
        for m in self.others:
            header += [f"<b>{esc(m)}</b>", f"<th class='diff'>|Î − Î0| ×{AMPLIFY}<br><small>{esc(m)}</small></th>"]
        body, classes = [], []
        for key in keys:
            by = self.samples[key]
            any_row = by.get(self.reference) or next(iter(by.values()))
            info = " · ".join(x for x in (f"#{any_row.get('i')}" if any_row.get("i") is not None else "",
                                          f"seed {any_row.get('seed')}", any_row.get("category") or "") if x)
            body.append([f"<td class='text' colspan='{len(header)}'>{esc(any_row.get('prompt', ''))} "
                         f"<small>{esc(info)}</small></td>"])
            classes.append("prompt")
            ref = by.get(self.reference)
            cells = [image(self.folder, ref.get("image") if ref else None, alt=self.reference) + self._caption(ref),
                     image(self.folder, any_row.get("heatmap"), alt="heatmap"),
                     image(self.folder, any_row.get("mask"), alt="mask")]
            for m in self.others:
                r = by.get(m)
                cells += [image(self.folder, r.get("image") if r else None, alt=m) + self._caption(r),
                          f"<td class='diff'>{self._diff_cell(key, m)}</td>"]
            body.append(cells)
            classes.append("")
        return f"<div style='--cols:{len(header)}'>{table(header, body, classes, cls='grid')}</div>"

    # -- the selection "largest difference between methods outside the mask, defect fixed by both" --------------
    def compared(self, meta: dict[str, Any]) -> list[str]:
        """The methods compared outside the mask: Focus-N-Fix and DRaFT when both are here, else every other."""
        pairs = fnf_draft_pairs(meta, self.methods, self.reference)
        return list(pairs[0]) if pairs else self.others

    def target_defect(self, reward: str) -> str | None:
        """The defect the training reward targets: the ``defect_*`` metric named in the reward (world-artifact ->
        defect_artifact), else the first one."""
        named = [d for d in self.defects if d[len("defect_"):] in reward]
        return (named or self.defects or [None])[0]

    def differ_first(self, compared: list[str], defect: str | None) -> list[Any]:
        """Samples where the base image has the defect and every compared method fixed it (without a defect
        judge: every compared method raised the reward), the largest difference between the methods' change
        outside the mask first (one method: its change)."""
        outside = next((n for n in OUTSIDE if n in self.metrics), None)
        if outside is None or not compared:
            return []
        scored = []
        for key, by in self.samples.items():
            ref, rows = by.get(self.reference), [by.get(m) for m in compared]
            if ref is None or any(r is None for r in rows):
                continue
            if defect:
                fixed = ref.get(defect) == 1 and all(r.get(defect) == 0 for r in rows)
            else:
                fixed = finite(ref.get("reward")) and all(finite(r.get("reward")) and r["reward"] > ref["reward"]
                                                          for r in rows)
            values = [r.get(outside) for r in rows]
            if fixed and all(finite(v) for v in values):
                scored.append((max(values) - min(values) if len(values) > 1 else values[0], key))
        return [k for _, k in sorted(scored, key=lambda s: -s[0])]


def previews(grid: Grid, meta: dict[str, Any]) -> str:
    """The two selections shown under "At a glance", PREVIEW_ROWS rows each."""
    keys = grid.worst_first()
    if not keys:
        return ""
    compared = grid.compared(meta)
    defect = grid.target_defect(str(meta.get("reward") or ""))
    differ = grid.differ_first(compared, defect)
    names = " and ".join(f"<b>{esc(m)}</b>" for m in compared)
    what = (f"the base image has the defect {esc(defect[len('defect_'):])} (<code>{esc(defect)}</code>) and {names} "
            "fixed it" if defect else f"{names} raised the reward")
    out = ""
    if differ:
        out += ("<section id='differ'><h2>Where the methods differ outside the mask</h2>"
                f"<p class='note'>Samples where {what}, the largest difference between the methods' change outside "
                f"the mask first ({len(differ)} such samples; {PREVIEW_ROWS} shown). {esc(DIFF_NOTE)}</p>"
                + grid.table(differ[:PREVIEW_ROWS]) + "</section>")
    shown = keys[:min(PREVIEW_ROWS, MAX_ROWS)]
    return out + ("<section id='preview'><h2>Samples with the worst base reward</h2>" + grid.table(shown)
                  + f"<p class='note'>{len(shown)} of {len(keys)} samples; <a href='#samples'>all samples</a> are "
                  f"below. {esc(BY_DESIGN)}</p></section>")


def sample_grid(grid: Grid) -> str:
    """The whole sample grid, capped at MAX_ROWS, with a note on its order, captions and difference images."""
    keys = grid.worst_first()
    note = f"<p class='note'>{len(keys)} samples"
    if len(keys) > MAX_ROWS:
        note += f"; the first {MAX_ROWS} are shown (all are in samples.jsonl and images/)"
    note += (", ordered by the base image's reward, worst first. r = reward (higher is better); ⚠ names a defect a "
             "judge found in the image; under each difference image: the mean |change| outside the mask in grey "
             f"levels and the PSNR outside the mask. {esc(DIFF_NOTE)}</p>")
    return note + grid.table(keys[:MAX_ROWS])
