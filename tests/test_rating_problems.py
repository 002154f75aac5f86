"""Issue 27: the rating study asks the right question. ``--only-problems`` (a non-empty base mask, or a judge
metric), ``--per-rater N`` (a balanced incomplete design: every pair rated by at least k = floor(R N / t) of R
raters), the problem text shown to raters (``--problem``, eval.json, the reward) and the per-method summary of
the three questions with Wilson CIs."""
import json
import re
import secrets
from collections import Counter

import pytest
from test_rating import ANSWERS, CHROMIUM_ARGS, Server, _row, make_rating_eval

from focusnfix.errors import FocusNFixError
from focusnfix.rating.design import (ProblemFilter, assigned, coverage, cyclic_order, parse_filter, problem_text,
                                     raters_needed)
from focusnfix.rating.questions import PAPER, to_json
from focusnfix.rating.stats import wilson
from focusnfix.rating.storage import DB_NAME, Store
from focusnfix.rating.summary import summarize, summary_text
from focusnfix.rating.tasks import load_study

PROMPTS = [f"prompt {i}" for i in range(6)]
EMPTY = {1, 3, 4}  # samples whose base mask M(Î0) is empty (inside metrics null)
JUDGE = [0.2, 0.9, 0.4, 0.7, 0.6, 0.1]  # a judge score on the base image: low = problem


def _with_metrics(root):
    """make_rating_eval with 6 samples, inside_mae (null where M is empty) and a judge score per row."""
    make_rating_eval(root, PROMPTS)
    rows = [json.loads(line) for line in (root / "samples.jsonl").read_text().splitlines()]
    for r in rows:
        r["inside_mae"] = None if r["i"] in EMPTY else (0.0 if r["method"] == "base" else 0.1)
        r["judge_x"] = JUDGE[r["i"]] if r["method"] == "base" else 0.95
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture()
def eval_dir(tmp_path):
    return _with_metrics(tmp_path / "eval")


def _samples(study):
    return sorted({t.sample for t in study.tasks.values()})


def test_only_problems_keeps_the_samples_whose_base_mask_is_not_empty(eval_dir):
    assert _samples(load_study(eval_dir)) == list(range(6))
    study = load_study(eval_dir, only_problems=parse_filter("mask"))
    assert _samples(study) == [0, 2, 5] and study.without_problem == 3 and len(study.tasks) == 3 * 2
    assert parse_filter("mask") == ProblemFilter() and str(ProblemFilter()) == "base mask non-empty"


def test_only_problems_with_a_judge_metric(eval_dir):
    assert _samples(load_study(eval_dir, only_problems=parse_filter("judge_x<0.5"))) == [0, 2, 5]
    assert _samples(load_study(eval_dir, only_problems=parse_filter("judge_x >= 0.7"))) == [1, 3]
    rows = [json.loads(line) for line in (eval_dir / "samples.jsonl").read_text().splitlines()]
    for r in rows:
        if r["i"] == 0:
            r["judge_x"] = None  # not measured: not flagged
    (eval_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _samples(load_study(eval_dir, only_problems=parse_filter("judge_x<0.5"))) == [2, 5]


def test_only_problems_bad_input_is_one_line_and_exit_2(eval_dir, tmp_path, capsys):
    from focusnfix.cli import main

    bare = make_rating_eval(tmp_path / "bare")  # no inside-mask metrics
    cases = [([str(eval_dir), "--only-problems", "judge_x=0.5"], "expected nothing"),
             ([str(eval_dir), "--only-problems", "judge_y<0.5"], "no metric 'judge_y'"),
             ([str(eval_dir), "--only-problems", "judge_x>5"], "leaves none of its 6 samples"),
             ([str(bare), "--only-problems"], "no metric inside the mask"),
             ([str(eval_dir), "--per-rater", "0"], "--per-rater must be at least 1"),
             ([str(eval_dir), "--problem", "  "], "--problem needs 1-300 characters"),
             ([str(eval_dir), "--problem", "x" * 301], "--problem needs 1-300 characters")]
    for argv, needle in cases:
        assert main(["rate", *argv, "--db", str(tmp_path / "r.sqlite")]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)
    assert main(["rate", str(eval_dir), "--only-problems", "judge_y<0.5", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "metrics: inside_mae, judge_x, reward" in capsys.readouterr().err  # what samples.jsonl has


@pytest.mark.parametrize("t,n", [(12, 5), (6, 6), (7, 3), (30, 4), (10, 1)])
def test_per_rater_is_a_balanced_incomplete_design(t, n):
    cycle = [f"t{j:02d}" for j in range(t)]
    for raters in range(1, 4 * t):
        counts = Counter(tid for j in range(raters) for tid in assigned(cycle, j, n))
        per_pair = [counts[tid] for tid in cycle]
        k = coverage(t, n, raters)
        assert min(per_pair) == k == raters * n // t and max(per_pair) - min(per_pair) <= 1  # balanced
    for j in range(3 * t):
        mine = assigned(cycle, j, n)
        assert len(mine) == len(set(mine)) == n  # N distinct pairs per rater
    for k in (1, 2, 3):  # R = ceil(k t / N) raters are enough, R - 1 are not
        r = raters_needed(t, n, k)
        assert coverage(t, n, r) >= k and coverage(t, n, r - 1) < k
    assert assigned(cycle, 5, None) == cycle and assigned(cycle, 5, t + 3) == cycle


def test_per_rater_keeps_a_samples_methods_together_and_is_stable(eval_dir):
    study = load_study(eval_dir, per_rater=4)
    pairs = [(tid, json.dumps(t.sample)) for tid, t in study.tasks.items()]
    cycle = cyclic_order(pairs)
    by_sample_reversed = sorted(pairs, key=lambda p: p[1], reverse=True)  # methods keep their order in a sample
    assert sorted(cycle) == sorted(study.tasks) and cycle == cyclic_order(by_sample_reversed)  # fixed by the ids
    samples = [study.tasks[tid].sample for tid in cycle]
    assert all(samples[j] == samples[j + 1] for j in range(0, len(samples), 2))  # fnf and draft of a sample adjacent
    assert samples[::2] != sorted(samples[::2])  # the samples themselves are shuffled
    assert study.per_rater_total == 4 and sorted(study.order(7, 2)) == sorted(study.assigned(2))
    assert study.assigned(0) == cycle[:4] and study.assigned(1) == cycle[4:8] and study.assigned(3) == cycle[:4]
    again = load_study(eval_dir, per_rater=4)
    assert [again.assigned(j) for j in range(5)] == [study.assigned(j) for j in range(5)]


def _start(c, name):
    resp = c.post("/start", data={"name": name})
    assert resp.status_code == 303
    return resp.headers["Location"].rsplit("/", 1)[1]


def test_each_rater_gets_only_their_share(eval_dir, tmp_path):
    from focusnfix.rating.app import create_app

    study = load_study(eval_dir, per_rater=5)
    c = create_app(study, Store(tmp_path / DB_NAME, to_json(PAPER), "base"), PAPER).test_client()
    tokens = [_start(c, name) for name in ("Ada", "Grace", "Edsger")]
    seen = Counter()
    for j, token in enumerate(tokens):
        mine = set(study.assigned(j))
        page = c.get(f"/r/{token}").get_data(as_text=True)
        assert 'max="5"' in page and "0 / 5" in page
        other = next(tid for tid in study.tasks if tid not in mine)
        assert c.get(f"/r/{token}?task={other}").status_code == 404
        assert c.get(f"/r/{token}/img/{other}/left").status_code == 404
        resp = c.post(f"/api/r/{token}/answer", json={"task": other, "submission": secrets.token_hex(6),
                                                     "answers": ANSWERS})
        assert resp.status_code == 404
        for _ in range(5):
            html = c.get(f"/r/{token}").get_data(as_text=True)
            tid = re.search(r'data-task="([0-9a-f]{16})"', html).group(1)
            assert tid in mine and c.get(f"/r/{token}/img/{tid}/right").status_code == 200
            resp = c.post(f"/api/r/{token}/answer", json={"task": tid, "submission": secrets.token_hex(6),
                                                         "answers": ANSWERS})
            assert resp.status_code == 200 and resp.get_json()["total"] == 5
            seen[tid] += 1
        assert "You rated all 5 pairs" in c.get(f"/r/{token}").get_data(as_text=True)
    assert len(seen) == 12 and set(seen.values()) == {1, 2}  # 3 raters x 5 of 12 pairs: k = floor(15 / 12) = 1


def test_a_database_keeps_its_design(tmp_path, eval_dir, capsys):
    from focusnfix.cli import main
    from focusnfix.rating.design import design_json

    db = tmp_path / "r.sqlite"
    Store(db, to_json(PAPER), "base", design_json(None, 5))
    with pytest.raises(FocusNFixError, match="other design"):
        Store(db, to_json(PAPER), "base", design_json(None, 6))
    with pytest.raises(FocusNFixError, match="other design"):
        Store(db, to_json(PAPER), "base")
    Store(db, to_json(PAPER), "base", design_json(None, 5))  # the same design: fine
    assert main(["rate", str(eval_dir), "--db", str(db), "--per-rater", "4", "--port", "0"]) == 2
    assert "other design" in capsys.readouterr().err


def test_the_problem_is_described_to_raters(eval_dir, tmp_path):
    from focusnfix.rating.app import create_app

    meta = json.loads((eval_dir / "eval.json").read_text())
    assert problem_text(None, meta) is None  # reward "color": no description known
    assert "checkerboard" in problem_text(None, {**meta, "reward": "world-artifact"})
    assert problem_text(None, {**meta, "problem": " a  melted\nhand "}) == "a melted hand"
    assert problem_text("an extra <b>finger</b>", {**meta, "problem": "x"}) == "an extra <b>finger</b>"
    study = load_study(eval_dir, problem="an extra <b>finger</b> & a melted hand")
    c = create_app(study, Store(tmp_path / DB_NAME, to_json(PAPER), "base"), PAPER).test_client()
    start = c.get("/").get_data(as_text=True)
    token = _start(c, "Ada")
    task = c.get(f"/r/{token}").get_data(as_text=True)
    for html in (start, task):
        assert "an extra &lt;b&gt;finger&lt;/b&gt; &amp; a melted hand" in html and "<b>finger</b>" not in html
    assert task.index('id="problem"') < task.index('class="q')  # read before the questions


def test_summary_leads_with_per_method_shares_and_cis():
    # fnf: 3 answers (fixed yes, yes, no; worse no, no, yes; prefer method, method, reference)
    # draft: 2 answers (fixed partly, yes; worse yes, yes; prefer reference, equal)
    rows = [_row(1, 0, "fnf", "yes", "no", "left", "right"), _row(1, 1, "fnf", "yes", "no", "right", "left"),
            _row(2, 0, "fnf", "no", "yes", "left", "left"),
            _row(1, 0, "draft", "partly", "yes", "left", "left"), _row(2, 1, "draft", "yes", "yes", "equal", "right")]
    s = summarize(rows, PAPER, "base", ["fnf", "draft"])
    per = {e["method"]: {c["key"]: c for c in e["questions"]} for e in s["per_method"]}
    assert [c["heading"] for c in s["per_method"][0]["questions"]] == ["fixed: yes", "worse: yes, worse",
                                                                        "prefer: the method's image"]
    for method, key, k, n in (("fnf", "fixed", 2, 3), ("fnf", "worse", 1, 3), ("fnf", "prefer", 2, 3),
                              ("draft", "fixed", 1, 2), ("draft", "worse", 2, 2), ("draft", "prefer", 0, 2)):
        c = per[method][key]
        assert (c["k"], c["n"]) == (k, n) and c["share"] == pytest.approx(k / n) and c["ci"] == wilson(k, n)
    text = summary_text(s)
    head = text.index("Per method")
    assert head < text.index("[fixed]")  # leads the summary
    # fnf fixed 2/3: Wilson [20.8, 93.9]; worse 1/3: [6.1, 79.2]; draft worse 2/2: [34.2, 100.0]
    assert re.search(r"fnf\s+66\.7% \[20\.8, 93\.9\] 2/3\s+33\.3% \[6\.1, 79\.2\] 1/3", text)
    assert re.search(r"draft\s+50\.0% \[9\.5, 90\.5\] 1/2\s+100\.0% \[34\.2, 100\.0\] 2/2\s+0\.0% \[0\.0, 65\.8\] 0/2",
                     text)
    from focusnfix.report.ratings import summary_html

    html = summary_html(s)  # the report's "Human ratings" section leads with the same table
    assert html.index("<h3>Per method</h3>") < html.index("<h3>Is the problem fixed")
    assert "66.7%<br><small>[20.8, 93.9] · 2/3</small>" in html and "fixed: yes" in html


def test_browser_shows_the_problem_and_the_share(tmp_path):
    from test_rating import CHROMIUM, _playwright

    sync_playwright = _playwright()
    eval_dir = _with_metrics(tmp_path / "eval")
    server = Server(eval_dir, tmp_path / DB_NAME, tmp_path / "server.log",
                    ("--only-problems", "--per-rater", "4", "--problem", "a magenta blot over part of the picture"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844})
                page.goto(server.url)
                assert "a magenta blot" in page.inner_text("#problem") and "4 pairs" in page.inner_text("main")
                page.fill("#name", "Ada")
                page.click("button[type=submit]")
                page.wait_for_selector("#answer")
                box = page.locator("p.problem").bounding_box()
                assert page.locator("#problem").is_visible() and box["y"] + box["height"] <= 844  # first screen
                assert page.inner_text("#count").strip() == "0 / 4"
                assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
            finally:
                browser.close()
    finally:
        server.kill()
