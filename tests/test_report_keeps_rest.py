"""Issue 27: the eval report shows whether a method "keeps the rest": an amplified |Î − Î0| column with the mask
outline, the Focus-N-Fix / DRaFT outside-change ratio and the collateral rate at a glance, a selection of the
samples where the methods differ outside the mask (defect fixed by both), rates as percentages, a word on defects
outside the mask, and a grid that uses the page width on a desktop (checked in headless Chromium)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_rating import CHROMIUM_ARGS
from test_report import _cells, _check_links

from focusnfix.images import overlay, save_png
from focusnfix.report import render_report
from focusnfix.report.diffs import AMPLIFY, EDGE, diff_name

N, SIZE = 6, 16
BASE_GREY, DRAFT_SHIFT = 100, 10  # DRaFT brightens the whole image by 10 grey levels
PATCH = (slice(5, 9), slice(5, 9))  # the defect; the mask M covers rows / columns 4..9
DRAFT_OUT = [2.5, 20.5, 8.5, 30.5, 0.5, 0.5]  # mean 10.5 = 21 x Focus-N-Fix's 0.5
DEFECT = {"base": [1, 1, 1, 1, 0, 0], "fnf": [0, 0, 0, 1, 0, 0], "draft": [0] * N}  # fnf misses the defect on #3
UNWANTED = {"base": [1, 1, 0, 0, 0, 0], "fnf": [1, 1, 0, 0, 0, 0], "draft": [0] * N}  # outside M: fnf keeps it
COLLATERAL = {"base": [0] * N, "fnf": [1, 0, 0, 0, 0, 0], "draft": [1, 1, 1, 1, 0, 0]}
ALIGNED = {"base": [1, 1, 1, 0, 1, 1], "fnf": [1, 1, 1, 0, 1, 1], "draft": [1, 0, 1, 0, 0, 1]}


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_keeps_rest_eval(root: Path) -> Path:
    """base / fnf / draft on 6 samples with real mask overlays (focusnfix.images.overlay): the base image has a
    black defect patch inside M; fnf repaints the patch only; draft repaints it and brightens everything."""
    root.mkdir(parents=True, exist_ok=True)
    metric = {"label": "", "higher_is_better": False}
    metrics = {"reward": {"label": "reward", "higher_is_better": True},
               "defect_artifact": {**metric, "label": "artifact rate (defect judge)"},
               "defect_unwanted": {**metric, "label": "unwanted rate (defect judge)"},
               "alignment": {"label": "alignment", "higher_is_better": True},
               "outside_grey": {**metric, "label": "mean |change| vs base outside mask (8-bit grey levels)"},
               "outside_psnr": {"label": "PSNR vs base outside mask (dB)", "higher_is_better": True},
               "collateral_35": {**metric, "label": "collateral rate: share of images with PSNR outside mask < 35 dB"},
               "inside_mae": {**metric, "label": "mean |change| vs base inside mask"}}
    judges = {"ocr": {"judge": "ocr", "label": "text written (ocr)", "methods": {
        "base": {"n": 6, "mean": 0.5, "ci": [0.1876, 0.8124], "ci_kind": "wilson"},
        "fnf": {"n": 6, "mean": 2 / 3, "ci": [0.3, 0.9032], "ci_kind": "wilson", "delta": 1 / 6,
                "delta_ci": [-0.2, 0.5]},
        "draft": {"n": 6, "mean": 0.5, "ci": [0.1876, 0.8124], "ci_kind": "wilson", "delta": 0.0,
                  "delta_ci": [-0.3, 0.3]}}}}
    (root / "eval.json").write_text(json.dumps({
        "title": "keeps the rest", "model": "world", "reward": "world-artifact", "methods": ["base", "draft", "fnf"],
        "reference": "base", "seeds": [1000], "metrics": metrics, "judges": judges,
        "method_specs": {"base": {"kind": "base"}, "draft": {"kind": "lora", "path": "runs/d"},
                         "fnf": {"kind": "lora", "path": "runs/f"}}}))
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:10, 4:10] = 1
    rows = []
    for i in range(N):
        base = np.full((SIZE, SIZE, 3), BASE_GREY)
        base[PATCH] = 0
        fixed = base.copy()
        fixed[PATCH] = BASE_GREY
        images = {"base": base, "fnf": fixed, "draft": fixed + DRAFT_SHIFT}
        for method, arr in images.items():
            _save(root / "images" / method / f"{i:05d}.png", arr)
        save_png(overlay(torch.from_numpy(base).permute(2, 0, 1)[None].float() / 255, mask)[0],
                 root / "masks" / f"{i:05d}.png")
        _save(root / "heatmaps" / f"{i:05d}.png", np.zeros((SIZE, SIZE, 3)))
        for method in images:
            out = {"base": 0.0, "fnf": 0.5, "draft": DRAFT_OUT[i]}[method]
            rows.append({"i": i, "prompt": f"prompt {i}", "category": "c", "seed": 1000, "method": method,
                         "image": f"images/{method}/{i:05d}.png", "mask": f"masks/{i:05d}.png",
                         "heatmap": f"heatmaps/{i:05d}.png",
                         "reward": -0.9 + 0.1 * i + {"base": 0.0, "fnf": 0.3, "draft": 0.4}[method],
                         "defect_artifact": DEFECT[method][i], "defect_unwanted": UNWANTED[method][i],
                         "alignment": ALIGNED[method][i], "outside_grey": out,
                         "outside_psnr": None if method == "base" else 48.0 - out,
                         "collateral_35": COLLATERAL[method][i],
                         "inside_mae": 0.0 if method == "base" else 0.1,
                         **({"outside_psnr_inf": True} if method == "base" else {})})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture()
def folder(tmp_path):
    return make_keeps_rest_eval(tmp_path / "eval")


def _section(text: str, sid: str) -> str:
    start = text.index(f"id='{sid}'")
    return text[start: text.index("</section>", start)]


def test_grid_has_an_amplified_difference_column_with_the_mask_outline(folder, tmp_path):
    text = render_report(folder).read_text(encoding="utf-8")
    grid = _section(text, "samples")
    for method in ("fnf", "draft"):
        assert f"|Î − Î0| ×{AMPLIFY}<br><small>{method}</small>" in grid
        assert f"src='{diff_name(f'images/{method}/00000.png')}'" in grid
    assert f"amplified {AMPLIFY} times" in grid and "outlined in yellow" in grid
    fnf = np.asarray(Image.open(folder / diff_name("images/fnf/00000.png")).convert("RGB")).astype(int)
    draft = np.asarray(Image.open(folder / diff_name("images/draft/00000.png")).convert("RGB")).astype(int)
    # the outline is the overlay's contour: the ring just outside M (rows / columns 3 and 10; a disk of radius 1
    # leaves the corners out)
    ring = np.zeros((SIZE, SIZE), bool)
    ring[3:11, 3:11] = True
    ring[4:10, 4:10] = False
    ring[[3, 3, 10, 10], [3, 10, 3, 10]] = False
    assert (fnf[ring] == EDGE).all() and (draft[ring] == EDGE).all()
    assert (fnf[~ring & ~np.pad(np.ones((4, 4), bool), ((5, 7), (5, 7)))] == 0).all()  # fnf: black outside
    assert (fnf[PATCH] == min(255, AMPLIFY * BASE_GREY)).all()  # the repainted defect, amplified and clipped
    assert (draft[0, 0] == AMPLIFY * DRAFT_SHIFT).all()  # 10 grey levels outside the mask show as 100
    # captions: the outside change in grey levels and the PSNR outside the mask
    assert "out 30.5 grey" in grid and "PSNR 17.5 dB" in grid
    _check_links(folder, folder / "report.html")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    _check_links(copy, copy / "report.html")


def test_at_a_glance_states_the_outside_change_ratio_and_collateral_rate(folder):
    head = _section(render_report(folder).read_text(encoding="utf-8"), "headline")
    # mean outside change 0.5 (fnf) vs 10.5 (draft) grey levels: 21 times less; collateral rate 1/6 vs 4/6
    assert "fnf (Focus-N-Fix) changed the image outside the mask 21× less than draft (DRaFT)" in head
    assert "0.5 vs 10.5 grey levels" in head and "collateral rate" in head and "16.7% vs 66.7%" in head
    assert head.index("21× less") < head.index("<table")  # above the table: read first
    cells = {(c["metric"], c["method"]): c["text"] for c in _cells(head).cells}
    assert cells["collateral_35", "fnf"].startswith("16.7%") and cells["collateral_35", "draft"].startswith("66.7%")


def test_rates_are_percentages_everywhere(folder):
    text = render_report(folder).read_text(encoding="utf-8")
    parsed = _cells(text)
    cells = [c for c in parsed.cells if c["metric"] in ("defect_artifact", "defect_unwanted", "collateral_35",
                                                        "alignment", "ocr")]
    assert len(cells) >= 2 * 4 * 3 + 3  # 4 rates in the headline and the summary, ocr in the judges; 3 methods
    for c in cells:
        assert "%" in c["text"] and ("Δ" not in c["text"] or "pts" in c["text"]), c
    summary = {(c["metric"], c["method"]): c["text"] for c in parsed.cells if "[" in c["text"]}
    assert summary["defect_artifact", "fnf"].startswith("16.7%Δ −50.0 pts [")  # 4/6 -> 1/6: 50 points fewer
    assert summary["ocr", "fnf"].startswith("66.7% [30.0, 90.3]Δ +16.7 pts [−20.0, +50.0]")
    categories = _section(text, "categories")
    assert "83.3%" in categories and "0.833" not in categories  # base alignment 5/6 per category, in %
    for fraction in ("0.667", "0.1667", "0.833"):
        assert f">{fraction}" not in text


def test_second_selection_shows_where_the_methods_differ_outside_defect_fixed_by_both(folder):
    text = render_report(folder).read_text(encoding="utf-8")
    differ, preview = _section(text, "differ"), _section(text, "preview")
    assert text.index("id='headline'") < text.index("id='differ'") < text.index("id='preview'")
    # fixed by both: #0, #1, #2 (fnf misses #3; #4, #5 have no defect); differences 2, 20, 8 grey levels
    shown = [differ.index(f"images/fnf/{i:05d}.png") for i in (1, 2, 0)]
    assert shown == sorted(shown) and "images/fnf/00003.png" not in differ
    assert "3 such samples" in differ and "defect_artifact" in differ and "<b>fnf</b> and <b>draft</b>" in differ
    worst = [preview.index(f"images/fnf/{i:05d}.png") for i in (0, 1, 2)]  # the existing selection stays
    assert worst == sorted(worst)


def test_defects_outside_the_mask_are_explained(folder):
    text = render_report(folder).read_text(encoding="utf-8")
    for sid in ("headline", "preview"):
        assert "is kept by design" in _section(text, sid) and "not a Focus-N-Fix regression" in _section(text, sid)
    assert "⚠ unwanted" in _section(text, "samples")  # the kept element is named under the image


def test_grid_uses_the_page_width_on_desktops(folder):
    from test_rating import CHROMIUM, _playwright

    sync_playwright = _playwright()
    page_path = render_report(folder)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            widths = {}
            for width in (1400, 390):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                tiles = page.eval_on_selector_all("#samples img.tile", "els => els.map(e => e.clientWidth)")
                table = page.eval_on_selector("#samples table.grid", "e => e.getBoundingClientRect().width")
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                widths[width] = (min(tiles), table, overflow)
                page.close()
        finally:
            browser.close()
    tile, table, overflow = widths[1400]
    assert tile >= 150 and table >= 0.8 * (1400 - 64) and overflow <= 0  # 7 columns fill the page
    assert widths[390][2] <= 0  # a phone: the grid scrolls in its own box, the page does not
