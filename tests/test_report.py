"""The offline HTML report: eval and run folders built in code; every link must resolve, also after a copy."""
import argparse
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from focusnfix.errors import FocusNFixError
from focusnfix.evaluation.stats import paired_stats
from focusnfix.report import folder_kind, register, render_report
from focusnfix.report.page import fmt, fmt_ci

METHODS = ["base", "fnf", "draft"]
PROMPTS = [("a cat on a sofa", "animals"), ("a dog & <b>bone</b>", "animals"), ("a portrait of a chef", "people")]
SEEDS = [0, 1]


def _png(path: Path, rgb) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path)
    return path.name


def make_eval_folder(root: Path, methods=tuple(METHODS)) -> Path:
    """3 methods x 6 samples (2 categories), tiny PNGs, curves for the two trained methods."""
    methods = list(methods)
    root.mkdir(parents=True, exist_ok=True)
    metrics = {"reward": {"label": "reward", "higher_is_better": True},
               "outside_mse": {"label": "MSE vs base outside mask", "higher_is_better": False},
               "inside_mse": {"label": "MSE vs base inside mask", "higher_is_better": False},
               "outside_psnr": {"label": "PSNR vs base outside mask (dB)", "higher_is_better": True},
               "alignment": {"label": "VQA alignment", "higher_is_better": True},
               "clip_score": None, "seconds": {"label": "inference seconds per image", "higher_is_better": False}}
    (root / "eval.json").write_text(json.dumps({
        "title": "fixture eval", "model": "tiny", "reward": "color", "methods": methods, "reference": "base",
        "prompt_set": "fixture:prompts", "seeds": SEEDS, "metrics": metrics,
        "sampler": {"steps": 4, "guidance_scale": 3.0},
        "method_specs": {"base": {"kind": "base"}, "fnf": {"kind": "lora", "path": "runs/fnf"},
                         "draft": {"kind": "lora", "path": "runs/draft"}}}))
    rows, i = [], 0
    for (prompt, cat) in PROMPTS:
        for seed in SEEDS:
            _png(root / "masks" / f"{i:05d}.png", (200, 40, 40))
            _png(root / "heatmaps" / f"{i:05d}.png", (90, 90, 90))
            for k, method in enumerate(methods):
                _png(root / "images" / method / f"{i:05d}.png", (40 * k, 100, 20 * i))
                gain = {"base": 0.0, "fnf": 0.1 + 0.01 * i, "draft": 0.3 if i % 2 else 0.0}.get(method, 0.05 * k)
                row = {"i": i, "prompt": prompt, "category": cat, "seed": seed, "method": method,
                       "image": f"images/{method}/{i:05d}.png", "mask": f"masks/{i:05d}.png",
                       "heatmap": f"heatmaps/{i:05d}.png", "reward": -0.5 + 0.02 * i + gain,
                       "outside_mse": {"base": 0.0, "fnf": 0.001 * (i + 1), "draft": 0.05}.get(method, 0.01 * k),
                       "inside_mse": 0.0 if method == "base" else 0.02,
                       "alignment": 0.6 + 0.01 * i - (0.05 * (i % 3) if method == "draft" else 0.0),
                       "clip_score": None, "seconds": 0.1 * (k + 1), "outside_psnr": None}
                if method == "base" or (method == "fnf" and i == 0):
                    row["outside_psnr_inf"] = True
                else:
                    row["outside_psnr"] = 30.0 + i
                rows.append(row)
            i += 1
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "curves").mkdir()
    for method, has_constraint in (("fnf", True), ("draft", False)):
        recs = [{"step": s, "loss": 1 / s, "reward": -0.5 + 0.01 * s, "lr": 1e-3,
                 **({"constraint": 0.1 * s ** 0.5} if has_constraint else {})} for s in range(1, 41)]
        (root / "curves" / f"{method}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def make_run_folder(root: Path) -> Path:
    """A training run: config.yaml, metrics.jsonl, summary.json, samples/*.png."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("method: fnf\nmodel:\n  path: tiny\nreward:\n  name: color\nobjective:\n"
                                      "  lam: 0.01\n")
    recs = [{"step": s, "loss": 0.07 - 0.001 * s, "reward": -0.07 + 0.001 * s, "constraint": 0.5 + 0.01 * s,
             "k": 2.0, "lr": 0.01} for s in range(1, 21)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "summary.json").write_text(json.dumps({"method": "fnf", "steps": 20, "first": recs[0], "final": recs[-1],
                                                   "samples": "samples/final.png"}))
    for name in ("step-000010.png", "final.png", "step-000020.png"):
        _png(root / "samples" / name, (10, 120, 200))
    return root


class _Links(HTMLParser):
    """Collects src/href attribute values, element ids and tag names."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.tags = [], set(), set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append(value)
            if name == "id":
                self.ids.add(value)


def _check_links(folder: Path, page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.links, "the page links nothing"
    for link in parser.links:
        if link.startswith("#"):
            assert link[1:] in parser.ids, link
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), f"non-relative link {link}"
        assert (folder / unquote(parsed.path)).is_file(), f"{link} does not resolve in {folder}"
    return parser


@pytest.fixture()
def eval_dir(tmp_path):
    return make_eval_folder(tmp_path / "eval")


@pytest.fixture()
def run_dir(tmp_path):
    return make_run_folder(tmp_path / "run")


def test_eval_report_content(eval_dir):
    page = render_report(eval_dir)
    assert page == eval_dir / "report.html" and folder_kind(eval_dir) == "eval"
    text = page.read_text(encoding="utf-8")
    for needle in ("fixture eval", "Summary", "Per-category VQA alignment", "animals", "people", "p (Holm)",
                   "<svg", "training reward", "training constraint", "vs target gain", "∞", "100.0%",
                   "guidance_scale 3.0", "path = runs/fnf"):
        assert needle in text, needle
    for method in METHODS:
        assert f">{method}<" in text
    rows = [json.loads(line) for line in (eval_dir / "samples.jsonl").read_text().splitlines()]
    fnf, base = ([r["reward"] for r in rows if r["method"] == m] for m in ("fnf", "base"))
    s = paired_stats(fnf, base)
    assert f"Δ {fmt(s['mean_diff'], 3, True)} {fmt_ci(s['ci'])}" in text  # the summary's paired change and CI
    assert "75.0%" in text  # draft: wins on 3 samples, ties on 3 (count 1/2)
    assert text.count("<table") >= 4  # summary + a category table per non-reference method + samples
    assert "clip_score" not in text  # declared null and never measured: no column
    parser = _check_links(eval_dir, page)
    assert {"table", "svg", "img"} <= parser.tags and not {"script", "link", "iframe"} & parser.tags
    assert sum(1 for link in parser.links if link.startswith("images/")) >= 2 * 6 * 3  # <a> + <img> per image


def test_eval_report_escapes_text_and_is_offline(eval_dir):
    text = render_report(eval_dir).read_text(encoding="utf-8")
    assert "<b>bone</b>" not in text and "&lt;b&gt;bone&lt;/b&gt;" in text and "dog &amp;" in text
    assert str(eval_dir) not in text  # nothing absolute
    assert "https://" not in text and text.count("http://") == text.count("http://www.w3.org/2000/svg")


def test_report_survives_copying(eval_dir, run_dir, tmp_path):
    for src in (eval_dir, run_dir):
        render_report(src)
        dst = tmp_path / "copied" / src.name
        shutil.copytree(src, dst)
        shutil.rmtree(src)
        _check_links(dst, dst / "report.html")


def test_missing_images_are_marked_not_linked(eval_dir):
    (eval_dir / "images" / "draft" / "00003.png").unlink()
    page = render_report(eval_dir)
    assert "missing: images/draft/00003.png" in page.read_text(encoding="utf-8")
    _check_links(eval_dir, page)


def test_sample_grid_is_capped(eval_dir, monkeypatch):
    import focusnfix.report.grid as grid

    monkeypatch.setattr(grid, "MAX_ROWS", 2)
    text = render_report(eval_dir, title="capped").read_text(encoding="utf-8")
    assert "the first 2 are shown" in text and "<title>capped</title>" in text
    assert "images/fnf/00002.png" not in text


def test_no_alignment_no_category_table(eval_dir):
    lines = (eval_dir / "samples.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["alignment"] = None
    (eval_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = render_report(eval_dir).read_text(encoding="utf-8")
    assert "Per-category" not in text and "p (Holm)" not in text and "<svg" in text


def test_run_report(run_dir):
    page = render_report(run_dir)
    assert folder_kind(run_dir) == "run"
    text = page.read_text(encoding="utf-8")
    for needle in ("<svg", "loss", "constraint", "last 5 logged steps", "final.png", "config.yaml", "lam: 0.01"):
        assert needle in text, needle
    assert (text.index("src='samples/step-000010.png'") < text.index("src='samples/step-000020.png'")
            < text.index("src='samples/final.png'"))
    _check_links(run_dir, page)


def test_run_folder_without_summary(run_dir):
    (run_dir / "summary.json").unlink()
    text = render_report(run_dir).read_text(encoding="utf-8")
    assert "No summary.json" in text and "<svg" in text


def test_bad_folders(tmp_path):
    with pytest.raises(FocusNFixError, match="neither"):
        render_report(tmp_path)
    with pytest.raises(FocusNFixError, match="does not exist"):
        render_report(tmp_path / "nope")
    (tmp_path / "eval.json").write_text("{}")
    with pytest.raises(FocusNFixError, match="no samples.jsonl"):
        render_report(tmp_path)
    (tmp_path / "samples.jsonl").write_text('{"i": 0}\n{broken\n')
    with pytest.raises(FocusNFixError, match="samples.jsonl:2"):
        render_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_hook(eval_dir, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(eval_dir), "--title", "from cli"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(eval_dir / "report.html")
    assert "<title>from cli</title>" in (eval_dir / "report.html").read_text(encoding="utf-8")


def test_plots_handle_degenerate_data():
    from focusnfix.report.plots import Point, Series, line_chart, nice_ticks, scatter_chart

    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert len(nice_ticks(1e6, 1e6 + 1e-10)) <= 50  # float spacing collapses: no endless loop
    assert "no data" in line_chart([Series("a", [1, 2], [None, float("nan")], "#000")], "empty")
    assert "no data" in scatter_chart([Point("a", float("inf"), 0.0, "#000")], "empty", "x", "y")
    for svg in (line_chart([Series("a", [5], [0.3], "#000")], "one point"),
                line_chart([Series("", [1, 2, 3], [2.0, 2.0, 2.0], "#000")], "flat <&>"),
                scatter_chart([Point("p", 0.0, 0.0, "#000", (0.0, 0.0), None)], "origin", "x", "y")):
        assert svg.startswith("<svg") and svg.endswith("</svg>") and "<&>" not in svg


# -- issue 19 item 5: the report reads right ---------------------------------------------------------
class _Cells(HTMLParser):
    """Per ``<td data-metric=M data-method=X>``: the classes used inside it; per ``<th data-metric=M>``: its text;
    every table's enclosing element classes; elements with a class, in document order."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.heads, self.table_parents, self.order = [], [], {}, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag == "table":
            self.table_parents.append([c for _, _, cs in self.stack for c in cs])
        if classes or a.get("id"):
            self.order.append((tag, classes, a.get("id")))
        entry = None
        if tag == "td" and "data-metric" in a:
            entry = {"metric": a["data-metric"], "method": a.get("data-method"), "classes": set(classes), "text": ""}
            self.cells.append(entry)
        if tag == "th" and "data-metric" in a:
            entry = {"metric": a["data-metric"], "text": ""}
            self.heads.setdefault(a["data-metric"], []).append(entry)
        for _, e, _ in self.stack:
            if e is not None and "classes" in e:
                e["classes"] |= classes
        if tag not in ("img", "br", "meta", "input", "hr", "col"):
            self.stack.append((tag, entry, classes))

    def handle_endtag(self, tag):
        while self.stack:
            t, _, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, e, _ in self.stack:
            if e is not None:
                e["text"] += data


def _cells(text: str) -> _Cells:
    parser = _Cells()
    parser.feed(text)
    return parser


def test_timing_is_cost_not_quality(eval_dir):
    """seconds differ by a constant per method (a CI that excludes 0) yet are not coloured better / worse."""
    parsed = _cells(render_report(eval_dir).read_text(encoding="utf-8"))
    timed = [c for c in parsed.cells if c["metric"] == "seconds" and c["method"] != "base"]
    assert timed and all("Δ" in c["text"] for c in timed)
    assert not any({"good", "bad"} & c["classes"] for c in timed)
    assert parsed.heads["seconds"] and not any("↑" in h["text"] or "↓" in h["text"] for h in parsed.heads["seconds"])


def test_change_inside_the_mask_is_neutral_outside_is_scored(eval_dir):
    """inside_mse rises by 0.02 everywhere (intended: the target reward judges it): neutral; outside_mse of draft
    (+0.05 everywhere, collateral damage) stays red."""
    parsed = _cells(render_report(eval_dir).read_text(encoding="utf-8"))
    inside = [c for c in parsed.cells if c["metric"] == "inside_mse" and c["method"] != "base"]
    assert inside and all("Δ" in c["text"] for c in inside)
    assert not any({"good", "bad"} & c["classes"] for c in inside)
    assert not any("↑" in h["text"] or "↓" in h["text"] for h in parsed.heads["inside_mse"])
    outside = [c for c in parsed.cells if c["metric"] == "outside_mse" and c["method"] == "draft"]
    assert outside and all("bad" in c["classes"] for c in outside)


def test_headline_and_first_samples_come_first(eval_dir):
    text = render_report(eval_dir).read_text(encoding="utf-8")
    head = text.index("id='headline'")
    assert head < text.index("<table") and head < text.index("id='summary'")
    headline = text[head: text.index("</section>", head)]
    for needle in ("VQA alignment", "MSE outside mask", "fnf", "draft"):
        assert needle in headline, needle
    assert "inside" not in headline and "seconds" not in headline
    first = text.index("src='images/fnf/")  # a sample row (a selection) before the full tables
    assert first < text.index("id='summary'") and text.index("id='differ'") < first
    worst = text.index("src='images/fnf/", text.index("id='preview'"))  # worst base reward: also before the tables
    assert worst < text.index("id='summary'")


def test_every_table_scrolls_in_its_own_box_and_plots_shrink(eval_dir):
    text = render_report(eval_dir).read_text(encoding="utf-8")
    parsed = _cells(text)
    assert len(parsed.table_parents) >= 5 and all("scroll" in p for p in parsed.table_parents)
    assert re.search(r"\.scroll[^{}]*\{[^}]*overflow-x:auto", text)
    assert "svg{max-width:100%;height:auto}" in text.replace(" ", "")


def test_tradeoff_legend_with_many_methods(tmp_path):
    methods = ["base", "fnf", "draft", "fnf-l0.05", "fnf-l0.2", "rg-region"]
    folder = make_eval_folder(tmp_path / "eval", methods)
    text = render_report(folder).read_text(encoding="utf-8")
    trade = text[text.index("id='tradeoff'"): text.index("</section>", text.index("id='tradeoff'"))]
    legend = trade[trade.index("class='legend'"):]
    legend = legend[: legend.index("</div>")]
    for m in methods[1:]:
        assert f">{m}<" in legend, m
        assert f"font-weight='600'>{m}</text>" not in trade  # no per-point labels to overlap
    small = render_report(make_eval_folder(tmp_path / "few")).read_text(encoding="utf-8")
    assert "font-weight='600'>fnf</text>" in small  # few points: labelled on the plot as well


def _run_with_metrics(root: Path, n: int) -> Path:
    folder = make_run_folder(root)
    recs = [{"step": s, "reward": float(s), "loss": 100.0 - s, "k": 2.0} for s in range(1, n + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "summary.json").write_text(json.dumps({"method": "fnf", "steps": n, "first": recs[0], "final": recs[-1]}))
    return folder


def _summary_row(text: str, key: str) -> list[str]:
    start = text.index(f"<td class='text'>{key}</td>")
    row = text[start: text.index("</tr>", start)]
    return [c.split(">", 1)[1] for c in row.split("</td>")[1:-1]]


def test_run_summary_compares_windowed_means(tmp_path):
    from focusnfix.report.run_folder import window_means

    text = render_report(_run_with_metrics(tmp_path / "a", 120)).read_text(encoding="utf-8")
    assert "first 12 logged steps" in text and "last 12 logged steps" in text  # N = max(5, 120 // 10)
    assert _summary_row(text, "reward") == ["6.5", "114.5", "+108"]  # mean of 1..12, of 109..120
    assert _summary_row(text, "loss") == ["93.5", "−14.5", "−108"]
    text = render_report(_run_with_metrics(tmp_path / "b", 30)).read_text(encoding="utf-8")
    assert "first 5 logged steps" in text and _summary_row(text, "reward") == ["3", "28", "+25"]
    first, last, n = window_means([{"step": s, "reward": float(s)} for s in range(1, 7)])
    assert n == 3 and first["reward"] == 2.0 and last["reward"] == 5.0  # too short for 2 x 5: halves


def test_run_sample_sheets_are_labelled(tmp_path):
    folder = make_run_folder(tmp_path / "run")
    (folder / "config.yaml").write_text("method: fnf\nmodel:\n  path: tiny\ndata:\n  sample_prompts:\n  - a red apple\n"
                                        "  - a blue <cup>\n  sample_seeds: [0, 7]\n")
    for name in ("step-000010.png", "final.png", "step-000020.png"):  # 4 rows of 3 tiles (8 px, 2 px padding)
        Image.new("RGB", (3 * 10 + 2, 4 * 10 + 2), (10, 120, 200)).save(folder / "samples" / name)
    text = render_report(folder).read_text(encoding="utf-8")
    sheet = text[text.index("id='samples'"):]
    first = sheet[: sheet.index("src='samples/step-000010.png'")]
    first = first[first.rindex("<figure"):]
    assert "step 10" in first
    block = sheet[sheet.index("<figure"): sheet.index("</figure>") + 9]
    for needle in ("step 10", "a red apple", "a blue &lt;cup&gt;", "seed 0", "seed 7", "Î0", "fine-tuned", "mask"):
        assert needle in block, needle
    assert block.count("class='rowhead'") == 4  # 2 prompts x 2 seeds, in the grid's row order
    assert block.index("a red apple") < block.index("a blue &lt;cup&gt;")
    assert "final (step 20)" in sheet


def test_run_page_names_the_weight_the_method_used():
    """fnf shows lambda; fnf-grpo its KL weight (grpo.kl_weight, else the former key objective.lam); DRaFT none."""
    from focusnfix.report.run_folder import _weight

    assert _weight({"objective": {"lam": 0.2}}, "fnf") == ("lambda", 0.2)
    assert _weight({"objective": {"lam": 1.0}, "grpo": {"kl_weight": 0.1}}, "fnf-grpo") == ("KL weight", 0.1)
    assert _weight({"objective": {"lam": 0.3}, "grpo": {"kl_weight": None}}, "fnf-grpo") == ("KL weight", 0.3)
    assert _weight({"objective": {"lam": 1.0}}, "draft")[1] is None
    assert _weight({"objective": {"lam": 1.0, "budget": 2.0}}, "fnf") == ("collateral budget (grey levels)", 2.0)
