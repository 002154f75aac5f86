"""Human evaluation (``focusnfix rate``): statistics against hand computations, the SQLite store, the web
app's refusals (malformed / foreign / duplicate posts, path traversal), a rater session in a real
headless Chromium, 20 concurrent raters, and a SIGKILL during a burst of submissions.

Browser tests need Debian's ``chromium`` (``make install`` installs it as root) and Playwright (pinned in
requirements/lock.txt); they fail, not skip, when these are missing on a machine that could install them.
"""
import http.client
import json
import os
import queue
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from focusnfix.errors import FocusNFixError
from focusnfix.rating.questions import PAPER, from_data, load_questions, to_json
from focusnfix.rating.stats import fleiss_kappa, krippendorff_alpha, sign_test, wilson
from focusnfix.rating.storage import DB_NAME, Store, read_ratings
from focusnfix.rating.summary import summarize, summary_text
from focusnfix.rating.tasks import base_side, load_study, task_id

CHROMIUM = os.environ.get("FOCUSNFIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server"]
WAIT_S = 180  # bound on a server start (imports torch; the CI machine may be busy)
PROMPTS = ['a cat <script>document.title="pwned"</script>', '<img src=x onerror="document.title=\'pwned\'"> a dog',
           'a red & "blue" square', "a portrait of a chef"]
METHODS = ["base", "fnf", "draft"]
ANSWERS = {"fixed": "yes", "worse": "no", "prefer": "equal"}


# -- an eval folder as `focusnfix eval` writes it (eval.json, samples.jsonl, images/, masks/, heatmaps/) ----------

def _draw(path: Path, bg, fg, box, blot=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (48, 48), bg)
    d = ImageDraw.Draw(im)
    d.ellipse(box, fill=fg)
    if blot:
        d.rectangle(blot, fill=(250, 0, 200))
    im.save(path)


def make_rating_eval(root: Path, prompts=PROMPTS) -> Path:
    """len(prompts) samples x base, fnf, draft: base images carry a magenta blot (the "problem")."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "eval.json").write_text(json.dumps({
        "title": 'fixture <b>study</b> & "co"', "model": "tiny", "reward": "color", "methods": METHODS,
        "reference": "base", "prompt_set": "fixture", "seeds": [0],
        "metrics": {"reward": {"label": "reward", "higher_is_better": True}}}))
    rows = []
    for i, prompt in enumerate(prompts):
        blot = (30, 8, 40, 18)
        _draw(root / "heatmaps" / f"{i:05d}.png", (0, 0, 0), (0, 0, 0), (0, 0, 1, 1), blot)
        _draw(root / "masks" / f"{i:05d}.png", (230, 230, 230), (200, 40, 40), (8, 8, 40, 40), blot)
        for k, method in enumerate(METHODS):
            _draw(root / "images" / method / f"{i:05d}.png", (230, 230 - 30 * k, 230), (40 * i, 80, 200 - 40 * k),
                  (8 + k, 8, 40 - k, 40), blot if method == "base" else None)
            rows.append({"i": i, "prompt": prompt, "category": "c", "seed": 0, "method": method,
                         "image": f"images/{method}/{i:05d}.png", "mask": f"masks/{i:05d}.png",
                         "heatmap": f"heatmaps/{i:05d}.png", "reward": -0.5 + 0.1 * k})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture()
def eval_dir(tmp_path):
    return make_rating_eval(tmp_path / "eval")


# -- statistics against hand computations -------------------------------------------------------------------------

def test_wilson_interval_hand_computed():
    # k = 8, n = 10, z = 1.959964 (z² = 3.841459): p = 0.8; denominator 1 + z²/n = 1.3841459;
    # center = (0.8 + z²/20) / 1.3841459 = (0.8 + 0.1920729) / 1.3841459 = 0.7167403;
    # half = z √(0.8·0.2/10 + z²/400) / 1.3841459 = 1.959964 √(0.016 + 0.0096036) / 1.3841459
    #      = 1.959964 · 0.1600113 / 1.3841459 = 0.2265779  ->  [0.4901624, 0.9433182]
    assert wilson(8, 10) == pytest.approx((0.4901624, 0.9433182), abs=1e-6)
    # k = 1, n = 6: p = 1/6; denominator 1 + 3.841459/6 = 1.6402432; center = (0.1666667 + 0.3201216) / 1.6402432
    # = 0.2967781; half = 1.959964 √(0.0231481 + 0.0266774) / 1.6402432 = 1.959964 · 0.2232158 / 1.6402432 = 0.2667248
    assert wilson(1, 6) == pytest.approx((0.0300533, 0.5635029), abs=1e-6)
    # k = 0: center = half = (z²/2n) / (1 + z²/n), so the lower end is exactly 0;
    # n = 5: upper = 0.7683 / 1.7683 = 0.4345
    low, high = wilson(0, 5)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.4344825, abs=1e-6)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_sign_test_is_the_exact_mcnemar_test_hand_computed():
    # 1 vs 7 discordant pairs: P(X <= 1 | n=8, 1/2) = (C(8,0) + C(8,1)) / 256 = 9/256; two-sided 18/256 = 0.0703125
    assert sign_test(1, 7) == pytest.approx(18 / 256) and sign_test(7, 1) == pytest.approx(18 / 256)
    # 4 vs 1: 2 (1 + 5) / 32 = 0.375;  5 vs 1: 2 (1 + 6) / 64 = 0.21875;  4 vs 0: 2 / 16 = 0.125
    assert sign_test(4, 1) == pytest.approx(0.375) and sign_test(5, 1) == pytest.approx(0.21875)
    assert sign_test(4, 0) == pytest.approx(0.125)
    assert sign_test(2, 2) == 1.0 and sign_test(3, 3) == 1.0  # 2 P(X <= n/2) > 1 is capped at 1
    assert sign_test(0, 0) is None  # only ties: no test


def test_fleiss_kappa_hand_computed():
    # 6 items, 2 raters, categories (yes, no): counts [0,2] [0,2] [1,1] [2,0] [2,0] [1,1].
    # P_i = (Σ n_ij² − 2) / 2 = 1, 1, 0, 1, 1, 0 -> mean 4/6; p_yes = p_no = 6/12 -> P_e = 0.5;
    # κ = (2/3 − 1/2) / (1 − 1/2) = 1/3
    assert fleiss_kappa([[0, 2], [0, 2], [1, 1], [2, 0], [2, 0], [1, 1]]) == pytest.approx(1 / 3)
    # 3 raters, 3 items, 3 categories: [3,0,0] [0,3,0] [1,1,1]: P_i = 1, 1, 0 (= (3 − 3) / 6) -> 2/3;
    # p_j = 4/9, 4/9, 1/9 -> P_e = 33/81; κ = (2/3 − 33/81) / (1 − 33/81) = (21/81) / (48/81) = 7/16
    assert fleiss_kappa([[3, 0, 0], [0, 3, 0], [1, 1, 1]]) == pytest.approx(7 / 16)
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # one category only: chance agreement is 1, kappa undefined
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])


def test_krippendorff_alpha_hand_computed():
    # 6 units, 2 values each (y/n): (n,n) (n,n) (y,n) (y,y) (y,y) (n,y). Each unit adds (m² − Σ m_c²)/(m − 1)
    # disagreeing pairs: 0, 0, 2, 0, 0, 2 -> Σ_{c≠k} o_ck = 4; n_y = n_n = 6, n = 12, Σ_{c≠k} n_c n_k = 144 − 72 = 72;
    # α = 1 − (n − 1) · 4 / 72 = 1 − 44/72 = 7/18 (Fleiss' κ on the same table is 1/3)
    units = [["n", "n"], ["n", "n"], ["y", "n"], ["y", "y"], ["y", "y"], ["n", "y"]]
    assert krippendorff_alpha(units) == pytest.approx(7 / 18)
    # missing data: 3 values in a unit -> disagreement (9 − 5)/2 = 2 for (a, a, b); a single value is not pairable.
    # units (a,a,b), (b,b), (c): o-disagreement 2; n_a = 2, n_b = 3, n = 5; Σ n_c n_k = 25 − 13 = 12;
    # α = 1 − 4 · 2 / 12 = 1/3
    assert krippendorff_alpha([["a", "a", "b"], ["b", "b"], ["c"]]) == pytest.approx(1 / 3)
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", nominal example: 4 observers,
    # 12 units with missing values, n = 40 pairable values: α = 0.743
    obs = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    cols = zip(*(o.split() for o in obs))
    assert krippendorff_alpha([[v for v in col if v != "."] for col in cols]) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # no variation: undefined


def _row(rater, sample, method, fixed, worse, prefer, side):
    task = task_id(sample, method)
    return {"rater_id": rater, "rater": f"R{rater}", "task": task, "sample": sample, "method": method,
            "base_side": side, "answers": {"fixed": fixed, "worse": worse, "prefer": prefer}}


def fixed_table():
    """2 raters x 3 samples x (fnf, draft). Preference is stored as clicked (left/right/equal) with the side the
    base image was on; analysed: fnf R1 method, method, equal; R2 method, reference, method;
    draft R1 reference, equal, reference; R2 method, reference, reference."""
    return [
        _row(1, 0, "fnf", "yes", "no", "right", "left"), _row(1, 1, "fnf", "partly", "no", "left", "right"),
        _row(1, 2, "fnf", "yes", "yes", "equal", "left"),
        _row(2, 0, "fnf", "yes", "no", "left", "right"), _row(2, 1, "fnf", "yes", "no", "left", "left"),
        _row(2, 2, "fnf", "no", "no", "right", "left"),
        _row(1, 0, "draft", "yes", "yes", "left", "left"), _row(1, 1, "draft", "yes", "yes", "equal", "right"),
        _row(1, 2, "draft", "partly", "no", "right", "right"),
        _row(2, 0, "draft", "yes", "yes", "right", "left"), _row(2, 1, "draft", "no", "yes", "right", "right"),
        _row(2, 2, "draft", "yes", "yes", "left", "left"),
    ]


def test_summary_matches_hand_computation_on_a_fixed_table():
    s = summarize(fixed_table(), PAPER, "base", ["fnf", "draft"])
    q = {e["key"]: e for e in s["questions"]}
    assert s["answers"] == 12 and [r["answers"] for r in s["raters"]] == [6, 6]
    # "other aspects worse": fnf yes 1/6 -> Wilson [0.0301, 0.5635]; draft yes 5/6 -> [0.4365, 0.9699] (mirror image)
    fnf, draft = q["worse"]["shares"]["fnf"], q["worse"]["shares"]["draft"]
    assert (fnf["n"], fnf["options"]["yes"]["k"], draft["options"]["yes"]["k"]) == (6, 1, 5)
    assert fnf["options"]["yes"]["share"] == pytest.approx(1 / 6)
    assert fnf["options"]["yes"]["ci"] == pytest.approx((0.0300533, 0.5635029), abs=1e-6)
    assert draft["options"]["yes"]["ci"] == pytest.approx((1 - 0.5635029, 1 - 0.0300533), abs=1e-6)
    # preference vs base (analysed from side + click): fnf 4 method / 1 base / 1 equal -> sign test
    # 2 (1 + 5)/32 = 0.375;
    # draft 1 / 4 / 1 -> 0.375; Holm over the two methods: sorted (0.375, 0.375) -> 2 · 0.375 = 0.75 for both
    pref = {e["method"]: e for e in q["prefer"]["vs_reference"]}
    assert (pref["fnf"]["method_preferred"], pref["fnf"]["reference_preferred"], pref["fnf"]["other"]) == (4, 1, 1)
    assert (pref["draft"]["method_preferred"], pref["draft"]["reference_preferred"]) == (1, 4)
    assert pref["fnf"]["p"] == pytest.approx(0.375) and pref["fnf"]["p_holm"] == pytest.approx(0.75)
    assert q["prefer"]["shares"]["fnf"]["options"]["method"]["share"] == pytest.approx(4 / 6)
    assert not q["worse"]["vs_reference"]  # not a sided question
    # paired fnf vs draft on (rater, sample), scores (higher = better for the method):
    # worse (no 1, yes 0): fnf better on R1s0 R1s1 R2s0 R2s1 R2s2, draft on R1s2 -> 5 vs 1, p = 2 (1 + 6)/64 = 0.21875
    # fixed (yes 2, partly 1, no 0): ties R1s0 R2s0; fnf R1s2 R2s1; draft R1s1 R2s2 -> 2 vs 2, p = min(1, 22/16) = 1
    # prefer (method 1, equal .5, base 0): fnf R1s0 R1s1 R1s2 R2s2, ties R2s0 R2s1 -> 4 vs 0, p = 2/16 = 0.125
    pairs = {k: q[k]["pairs"][0] for k in ("worse", "fixed", "prefer")}
    assert ([(pairs[k]["a_better"], pairs[k]["b_better"], pairs[k]["ties"]) for k in pairs]
            == [(5, 1, 0), (2, 2, 2), (4, 0, 2)])
    assert [pairs[k]["p"] for k in pairs] == pytest.approx([0.21875, 1.0, 0.125])
    assert pairs["worse"]["p_holm"] == pytest.approx(0.21875)  # one pair per question: Holm changes nothing
    # agreement over the 6 tasks (2 raters each):
    # worse: see test_krippendorff_alpha_hand_computed -> α = 7/18, κ = 1/3
    # fixed: (y,y) (p,y) (y,n) (y,y) (y,n) (p,y): disagreeing pairs 8, n_y 8, n_p 2, n_n 2, Σ n_c n_k = 144 − 72 = 72
    #   -> α = 1 − 11 · 8/72 = −2/9; κ: P̄ = 2/6, P_e = (8/12)² + 2 (2/12)² = 1/2 -> (1/3 − 1/2)/(1/2) = −1/3
    # prefer: (m,m) (m,r) (e,m) (r,m) (e,r) (r,r): disagreeing 8, n_m 5, n_r 5, n_e 2, Σ = 144 − 54 = 90
    #   -> α = 1 − 88/90 = 1/45; κ: P̄ = 2/6, P_e = 54/144 = 3/8 -> (1/3 − 3/8)/(5/8) = −1/15
    agree = {k: (q[k]["agreement"]["alpha"], q[k]["agreement"]["kappa"]) for k in q}
    assert agree["worse"] == pytest.approx((7 / 18, 1 / 3))
    assert agree["fixed"] == pytest.approx((-2 / 9, -1 / 3))
    assert agree["prefer"] == pytest.approx((1 / 45, -1 / 15))
    assert q["worse"]["agreement"]["units"] == 6 and q["worse"]["agreement"]["raters"] == 2
    text = summary_text(s)
    assert "fnf (n=6): yes, worse 16.7% [3.0, 56.4]" in text and "Krippendorff alpha 0.389" in text


def test_agreement_with_unequal_raters_per_task_has_alpha_but_no_kappa():
    rows = fixed_table() + [_row(3, 0, "fnf", "yes", "no", "left", "right")]  # a third rater on one task only
    worse = next(e for e in summarize(rows, PAPER)["questions"] if e["key"] == "worse")["agreement"]
    # the extra "no" joins (n, n) -> (n, n, n): no new disagreement; n_n 7, n_y 6, n = 13; Σ n_c n_k = 169 − 85 = 84
    # α = 1 − 12 · 4 / 84 = 3/7
    assert worse["alpha"] == pytest.approx(3 / 7) and worse["kappa"] is None and worse["kappa_note"]


# -- questions, storage, tasks ------------------------------------------------------------------------------------

def test_questions_are_one_data_structure_and_bad_files_are_one_line_errors(tmp_path):
    assert [q.key for q in load_questions("paper")] == ["fixed", "worse", "prefer"]
    assert PAPER[0].render("left") == "Is the problem fixed in the right image?"
    assert (PAPER[1].render("right").startswith("Compared with the right image")
            and PAPER[1].render("right").endswith("in the left image?"))
    assert from_data(json.loads(to_json(PAPER))) == PAPER  # the form stored in the database round-trips
    custom = tmp_path / "q.json"
    custom.write_text(json.dumps([{"key": "sharp", "text": "Is the {new} image sharper?", "options": [
        {"value": "yes", "label": "yes", "score": 1}, {"value": "no", "label": "no", "score": 0}]}]))
    (q,) = load_questions(str(custom))
    assert q.key == "sharp" and q.render("left") == "Is the right image sharper?"
    bad = {"not a list": {"key": "x"},
           "one option": [{"key": "x", "text": "t", "options": [{"value": "a", "label": "a"}]}],
           "duplicate key": [{"key": "x", "text": "t",
                              "options": [{"value": "a", "label": "a"}, {"value": "b", "label": "b"}]}] * 2,
           "sided without sides": [{"key": "x", "text": "t", "sided": True,
                                    "options": [{"value": "a", "label": "a"}, {"value": "b", "label": "b"}]}],
           "bad value": [{"key": "x", "text": "t",
                          "options": [{"value": "A B", "label": "a"}, {"value": "b", "label": "b"}]}]}
    for why, data in bad.items():
        custom.write_text(json.dumps(data))
        with pytest.raises(FocusNFixError) as e:
            load_questions(str(custom))
        assert "\n" not in str(e.value), why
    with pytest.raises(FocusNFixError, match="not a question set"):
        load_questions("nope")


def test_store_is_wal_unique_and_idempotent(tmp_path):
    db = tmp_path / "r.sqlite"
    store = Store(db, to_json(PAPER), "base")
    con = sqlite3.connect(db, isolation_level=None)  # autocommit: a failed statement holds no lock
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ada = store.add_rater("Ada")
    assert store.submit(ada, "t1", 0, "fnf", "left", ANSWERS, "sub-0001", False) == "stored"
    assert store.submit(ada, "t1", 0, "fnf", "left", ANSWERS, "sub-0001", False) == "replay"  # a retry
    assert store.submit(ada, "t1", 0, "fnf", "left", {**ANSWERS, "fixed": "no"}, "sub-0002", False) == "conflict"
    assert store.submit(ada, "t2", 0, "draft", "left", ANSWERS, "sub-0003", True) == "missing"  # nothing to revise
    assert (con.execute("SELECT task, answers, revisions FROM answers").fetchall()
            == [("t1", json.dumps(ANSWERS, sort_keys=True), 0)])
    assert store.submit(ada, "t1", 0, "fnf", "left", {**ANSWERS, "fixed": "no"}, "sub-0004", True) == "revised"
    assert store.submit(ada, "t1", 0, "fnf", "left", {**ANSWERS, "fixed": "no"}, "sub-0004", True) == "replay"
    ((answers, revisions, created, updated),) = con.execute("SELECT answers, revisions, created_at, updated_at "
                                                            "FROM answers")
    assert json.loads(answers)["fixed"] == "no" and revisions == 1 and updated >= created
    with pytest.raises(sqlite3.IntegrityError):  # the constraint itself, not only the code path, forbids a duplicate
        con.execute("INSERT INTO answers (rater_id, task, sample, method, base_side, answers, submission, created_at, "
                    "updated_at) VALUES (?, 't1', '0', 'fnf', 'left', '{}', 'x', 'now', 'now')", (ada.id,))
    grace = store.add_rater("Ada")  # same name, another rater
    assert grace.token != ada.token and grace.id != ada.id
    rows, questions, reference = read_ratings(db)
    assert len(rows) == 1 and rows[0]["rater"] == "Ada" and json.loads(questions)[0]["key"] == "fixed"
    other = json.dumps([{"key": "x", "text": "t",
                         "options": [{"value": "a", "label": "a"}, {"value": "b", "label": "b"}]}])
    with pytest.raises(FocusNFixError, match="other questions"):
        Store(db, other, "base")
    Store(db, to_json(PAPER), "base")  # reopening with the same questions is fine
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(FocusNFixError, match="not a usable ratings database"):
        Store(tmp_path / "junk.sqlite", to_json(PAPER), "base")


def test_tasks_are_blind_and_stay_inside_the_eval_folder(eval_dir, tmp_path):
    study = load_study(eval_dir)
    assert study.reference == "base" and study.methods == ["fnf", "draft"] and len(study.tasks) == 8
    for t in study.tasks.values():
        assert t.method not in t.id and re.fullmatch(r"[0-9a-f]{16}", t.id)
        assert t.reference_image == (eval_dir / "images" / "base" / f"{t.sample:05d}.png").resolve()
    assert sorted(study.order(1)) == sorted(study.tasks) and study.order(1) == study.order(1) != study.order(2)
    sides = [base_side(7, t) for t in study.tasks]
    assert set(sides) == {"left", "right"} and sides == [base_side(7, t) for t in study.tasks]
    assert len(load_study(eval_dir, ["draft"]).tasks) == 4
    with pytest.raises(FocusNFixError, match="methods to rate: fnf, draft"):
        load_study(eval_dir, ["nope"])
    # samples.jsonl pointing outside the folder (../, absolute, a symlink out) is left out
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(secret)
    (eval_dir / "images" / "link").mkdir()
    (eval_dir / "images" / "link" / "00000.png").symlink_to(secret)
    extra = [{"i": 0, "prompt": PROMPTS[0], "seed": 0, "method": m, "image": img} for m, img in
             (("dotdot", "../secret.png"), ("absolute", str(secret)), ("link", "images/link/00000.png"))]
    with open(eval_dir / "samples.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    study = load_study(eval_dir)
    assert (len(study.tasks) == 8 and study.left_out == 3 * 4
            and {t.method for t in study.tasks.values()} == {"fnf", "draft"})


# -- the app in-process (Flask test client): refusals write nothing, no path traversal, escaping ------------------

@pytest.fixture()
def client(eval_dir, tmp_path):
    from focusnfix.rating.app import create_app

    store = Store(tmp_path / DB_NAME, to_json(PAPER), "base")
    study = load_study(eval_dir)
    app = create_app(study, store, PAPER)
    c = app.test_client()
    resp = c.post("/start", data={"name": "Ada"})
    assert resp.status_code == 303
    token = resp.headers["Location"].rsplit("/", 1)[1]
    return c, token, study, tmp_path / DB_NAME


def _db_rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT rater_id, task, answers, submission, revisions, updated_at FROM answers "
                           "ORDER BY id").fetchall()
    finally:
        con.close()


def test_api_refuses_malformed_foreign_and_duplicate_posts_and_writes_nothing(client):
    c, token, study, db = client
    api = f"/api/r/{token}/answer"
    task = next(iter(study.tasks))
    good = {"task": task, "submission": "abcdefgh1", "answers": ANSWERS}
    refused = [
        (415, dict(data="task=x", content_type="application/x-www-form-urlencoded")),
        (400, dict(data="{not json", content_type="application/json")),
        (400, dict(json=[good])),
        (400, dict(json={k: v for k, v in good.items() if k != "answers"})),
        (400, dict(json={**good, "method": "fnf"})),
        (400, dict(json={**good, "answers": {"fixed": "yes", "worse": "no"}})),
        (400, dict(json={**good, "answers": {**ANSWERS, "fixed": "maybe"}})),
        (400, dict(json={**good, "answers": {**ANSWERS, "prefer": 1}})),
        (400, dict(json={**good, "answers": {**ANSWERS, "extra": "yes"}})),
        (400, dict(json={**good, "submission": "short"})),
        (400, dict(json={**good, "submission": "bad chars!"})),
        (400, dict(json={**good, "revise": "yes"})),
        (400, dict(json={**good, "task": 123})),
        (413, dict(data=json.dumps({**good, "pad": "x" * 20000}), content_type="application/json")),
        (404, dict(json={**good, "task": "0123456789abcdef"})),  # foreign task id
        (404, dict(json={**good, "task": task_id(0, "not-rated-here")})),
    ]
    for code, kwargs in refused:
        resp = c.post(api, **kwargs)
        assert resp.status_code == code, (kwargs, resp.get_data(as_text=True))
        assert "error" in resp.get_json()
    assert c.post("/api/r/unknown-token/answer", json=good).status_code == 404
    assert c.get(api).status_code == 405
    assert _db_rows(db) == []  # nothing written by any refused request
    assert c.post(api, json=good).get_json()["status"] == "stored"
    before = _db_rows(db)
    assert c.post(api, json=good).get_json()["status"] == "replay"  # a retry of the same submission
    dup = c.post(api, json={**good, "submission": "abcdefgh2", "answers": {**ANSWERS, "fixed": "no"}})
    assert dup.status_code == 409
    other = next(t for t in study.tasks if t != task)
    assert c.post(api, json={**good, "task": other, "submission": "abcdefgh3", "revise": True}).status_code == 409
    assert _db_rows(db) == before  # neither the duplicate nor the revision of an unanswered task wrote anything
    revised = c.post(api, json={**good, "submission": "abcdefgh4", "answers": {**ANSWERS, "fixed": "no"},
                                "revise": True})
    assert revised.get_json()["status"] == "revised"
    (row,) = _db_rows(db)
    assert json.loads(row[2])["fixed"] == "no" and row[4] == 1


def test_only_task_files_under_the_eval_folder_are_served(client, eval_dir, tmp_path):
    c, token, study, _ = client
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(secret)
    seen = set()
    for tid, t in study.tasks.items():
        side = c.get(f"/r/{token}?task={tid}")  # not answered and not current: sent back to the current task
        assert side.status_code in (200, 303)
        for slot in ("left", "right", "heatmap", "mask"):
            resp = c.get(f"/r/{token}/img/{tid}/{slot}")
            assert resp.status_code == 200 and resp.data != secret.read_bytes()
            seen.add(resp.data)
        left, right = (c.get(f"/r/{token}/img/{tid}/{s}").data for s in ("left", "right"))
        assert {left, right} == {t.reference_image.read_bytes(), t.method_image.read_bytes()}
    for url in [f"/r/{token}/img/../../../../etc/passwd", f"/r/{token}/img/{tid}/..%2F..%2Feval.json",
                f"/r/{token}/img/{tid}/../../samples.jsonl", f"/r/{token}/img/{tid}/%2e%2e", f"/r/{token}/img/x/left",
                "/static/../storage.py", "/static/..%2fstorage.py", "/static/%2e%2e/storage.py", "/eval.json",
                "/images/base/00000.png", f"/r/{token}/img/{tid}/left/../../../secret.png", "/r/nope/img/x/left"]:
        resp = c.get(url)
        assert resp.status_code == 404, url
    # a file swapped for a symlink out of the folder after the study was loaded: refused when served
    t = next(iter(study.tasks.values()))
    t.method_image.unlink()
    t.method_image.symlink_to(secret)
    assert sorted(c.get(f"/r/{token}/img/{t.id}/{side}").status_code for side in ("left", "right")) == [200, 404]


def test_pages_escape_prompts_titles_and_names(client, eval_dir):
    c, token, study, _ = client
    start = c.get("/").get_data(as_text=True)
    assert "fixture &lt;b&gt;study&lt;/b&gt; &amp; &#34;co&#34;" in start and "<b>study</b>" not in start
    evil = c.post("/start", data={"name": "<script>alert(1)</script>"})
    page = c.get(evil.headers["Location"]).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    shown = set()
    for _ in study.tasks:
        html = c.get(f"/r/{token}").get_data(as_text=True)
        tid = re.search(r'data-task="([0-9a-f]{16})"', html).group(1)
        shown.add(study.tasks[tid].prompt)
        assert "<script>document" not in html and "<img src=x" not in html and study.tasks[tid].method not in html
        assert c.post(f"/api/r/{token}/answer",
                      json={"task": tid, "submission": secrets.token_hex(6), "answers": ANSWERS}).status_code == 200
    assert shown == set(PROMPTS)
    assert "You rated all 8 pairs" in c.get(f"/r/{token}").get_data(as_text=True)
    headers = c.get(f"/r/{token}").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["Referrer-Policy"] == "no-referrer"


def test_loopback_app_refuses_foreign_host_names(eval_dir, tmp_path):
    """A page on another domain re-pointed at 127.0.0.1 (DNS rebinding) gets 400, not the study."""
    from focusnfix.rating.app import create_app

    study = load_study(eval_dir)
    app = create_app(study, Store(tmp_path / DB_NAME, to_json(PAPER), "base"), PAPER, ["127.0.0.1", "localhost"])
    c = app.test_client()
    assert c.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert c.get("/", headers={"Host": "evil.example:8765"}).status_code == 400
    assert c.post("/start", data={"name": "x"}, headers={"Host": "evil.example"}).status_code == 400
    assert sqlite3.connect(tmp_path / DB_NAME).execute("SELECT COUNT(*) FROM raters").fetchone()[0] == 0


# -- the command line, export and the report ----------------------------------------------------------------------

def test_cli_bad_input_is_one_line_and_exit_2(eval_dir, tmp_path, capsys):
    from focusnfix.cli import main

    import socket

    busy = socket.create_server(("127.0.0.1", 0))
    cases = [(["rate", str(tmp_path / "nope")], "does not exist"), (["rate", str(tmp_path)], "not an eval folder"),
             (["rate", str(eval_dir), "--methods", "zzz"], "not in the eval folder"),
             (["rate", str(eval_dir), "--questions", "nope"], "not a question set"),
             (["rate", str(eval_dir), "--port", "70000"], "--port"),
             (["rate", str(eval_dir), "--summary"], "no ratings database"),
             (["rate", str(eval_dir), "--db", str(tmp_path / "no" / "r.sqlite")], "does not exist"),
             (["rate", str(eval_dir), "--db", str(tmp_path / "d.sqlite"), "--port", str(busy.getsockname()[1])],
              "cannot listen")]
    with busy:
        for argv, needle in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert needle in err and err.count("\n") == 1, (argv, err)
    from focusnfix.cli import _parser

    args = _parser().parse_args(["rate", str(eval_dir)])
    assert args.host == "127.0.0.1" and args.questions == "paper"


def _answer_all(c, token, study, pick):
    for _ in study.tasks:
        html = c.get(f"/r/{token}").get_data(as_text=True)
        tid = re.search(r'data-task="([0-9a-f]{16})"', html).group(1)
        resp = c.post(f"/api/r/{token}/answer",
                      json={"task": tid, "submission": secrets.token_hex(6), "answers": pick(tid)})
        assert resp.status_code == 200


def test_export_summary_and_report_section(client, eval_dir, capsys):
    from focusnfix.cli import main
    from focusnfix.report import render_report

    c, token, study, db = client
    assert main(["rate", str(eval_dir), "--summary", "--db", str(db)]) == 0
    assert "0 answers from 0 raters" in capsys.readouterr().out
    _answer_all(c, token, study,
                lambda tid: {**ANSWERS, "worse": "yes" if study.tasks[tid].method == "draft" else "no"})
    grace = c.post("/start", data={"name": "Grace & <i>co</i>"}).headers["Location"].rsplit("/", 1)[1]
    _answer_all(c, grace, study, lambda tid: {**ANSWERS, "worse": "yes"})
    out = eval_dir / "results.csv"
    assert main(["rate", str(eval_dir), "--export", str(out), "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 16 answers to {out}" in printed and "16 answers from 2 raters" in printed
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and {r["prompt"] for r in rows} == set(PROMPTS)
    assert {r["prefer"] for r in rows} == {"equal"} and {r["rater"] for r in rows} == {"Ada", "Grace & <i>co</i>"}
    draft_worse = [r["worse"] for r in rows if r["method"] == "draft"]
    assert draft_worse.count("yes") == 8  # both raters said "worse" for every draft image
    # fnf: Ada no x4, Grace yes x4 -> 4/8; Wilson: z²/n = 0.480183, center 0.5, half = 1.959964 √(1/32 + 0.015006)
    # / 1.480183 = 0.284785 -> [21.5, 78.5]
    assert "fnf (n=8): yes, worse 50.0% [21.5, 78.5]" in printed
    # the report shows the summary only when the database sits in the eval folder
    text = render_report(eval_dir).read_text(encoding="utf-8")
    assert "Human ratings" not in text  # the client's database lives next to the eval folder, not in it
    shutil.copy(db, eval_dir / DB_NAME)
    text = render_report(eval_dir).read_text(encoding="utf-8")
    assert "id='ratings'" in text and "Human ratings" in text and "Krippendorff" in text
    assert "Grace &amp; &lt;i&gt;co&lt;/i&gt;" in text and "<i>co</i>" not in text
    assert "50.0%<br><small>[21.5, 78.5] · 4/8</small>" in text  # fnf "worse: yes"
    assert f"href='{DB_NAME}'" in text
    (eval_dir / DB_NAME).write_text("not a database")  # a broken database: the report still renders, with a note
    text = render_report(eval_dir).read_text(encoding="utf-8")
    assert "Human ratings" in text and "not a readable ratings database" in text and "Samples" in text


def test_rating_a_real_eval_folder_from_focusnfix_eval(tiny_dir, tmp_path, capsys):
    """eval -> rate -> report on a folder written by `focusnfix eval` (tiny model, base vs Reward Guidance)."""
    from focusnfix.cli import main
    from focusnfix.rating.app import create_app
    from focusnfix.report import render_report

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  path: {tiny_dir}\ndata:\n  prompts: ['a red circle', 'a blue <b>square</b>']\n"
                   "sampler:\n  steps: 2\n  guidance_scale: 1.0\nmask:\n  threshold: 0.3\n")
    out = tmp_path / "eval"
    assert main(["eval", "--config", str(cfg), "--methods", "base", "rg:scale=50", "--seeds", "0", "--out", str(out),
                 "--no-progress", "--device", "cpu", "--batch-size", "2"]) == 0
    study = load_study(out)
    assert len(study.tasks) == 2 and study.methods == ["rg"] and study.left_out == 0
    store = Store(out / DB_NAME, to_json(PAPER), study.reference)
    c = create_app(study, store, PAPER).test_client()
    token = c.post("/start", data={"name": "Ada"}).headers["Location"].rsplit("/", 1)[1]
    for tid, t in study.tasks.items():
        maps = [c.get(f"/r/{token}/img/{tid}/{slot}") for slot in ("heatmap", "mask")]
        assert [m.status_code for m in maps] == [200, 200] and maps[0].data == t.heatmap.read_bytes()
    _answer_all(c, token, study, lambda tid: ANSWERS)
    text = render_report(out).read_text(encoding="utf-8")
    assert "Human ratings" in text and "2 answers from 1 raters" in text


# -- a real browser -------------------------------------------------------------------------------------------------

def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `make install` installs it (pinned in requirements/lock.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium "
                        "(apt-get install -y chromium)")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (not root: `sudo apt-get install chromium`)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Server:
    """``focusnfix rate`` in a subprocess on 127.0.0.1 and a free port (so SIGKILL is real)."""

    def __init__(self, eval_dir: Path, db: Path, log: Path, extra: tuple[str, ...] = ()):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.log = log
        with open(log, "a") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "focusnfix", "rate", str(eval_dir), "--db", str(db),
                                          "--port", "0", *extra],
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=WAIT_S)
        except queue.Empty:
            self.kill()
            pytest.fail(f"focusnfix rate printed no URL within {WAIT_S} s")
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            self.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {log.read_text()[-2000:]}")
        self.url = m.group(0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def _new_rater(url: str, name: str) -> str:
    with _opener.open(url + "start", data=urllib.parse.urlencode({"name": name}).encode(), timeout=60) as r:
        return r.geturl().rsplit("/", 1)[1]


def _post(url: str, token: str, body) -> tuple[int, dict]:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    con = http.client.HTTPConnection(host, port, timeout=60)
    try:
        con.request("POST", f"/api/r/{token}/answer", json.dumps(body), {"Content-Type": "application/json"})
        resp = con.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        con.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    eval_dir = make_rating_eval(root / "eval")
    server = Server(eval_dir, root / DB_NAME, root / "server.log")
    yield server, eval_dir, root / DB_NAME
    server.kill()


def _rows_of(db: Path, token: str) -> dict:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT a.task, a.answers, a.base_side, a.revisions FROM answers a "
                           "JOIN raters r ON r.id = a.rater_id WHERE r.token = ?", (token,)).fetchall()
    finally:
        con.close()
    return {task: (json.loads(answers), side, rev) for task, answers, side, rev in rows}


def _choose(page, key: str, value: str) -> None:
    page.click(f"fieldset[data-key={key}] label.opt:has(input[value={value}])")


def test_browser_rater_session_mouse_keyboard_back_reload(browser, served):
    from playwright.sync_api import expect

    server, eval_dir, db = served
    study = load_study(eval_dir)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server.url)
    page.fill("#name", "Ada <b>&amp;</b>")
    page.click("#start button[type=submit]")
    page.wait_for_selector("#answer")
    token = page.url.rsplit("/", 1)[1]
    seed = sqlite3.connect(db).execute("SELECT order_seed FROM raters WHERE token = ?", (token,)).fetchone()[0]
    order = study.order(seed)
    expect(page.locator(".who")).to_have_text("Ada <b>&amp;</b>")  # a name shows as text
    count = page.locator("#count")
    given = {}

    def on_task(k: int) -> str:
        page.wait_for_selector("#answer[data-ready=true]")  # the page's script is listening
        tid = page.get_attribute("#answer", "data-task")
        assert tid == order[k]  # the rater's own seeded order
        assert page.inner_text("#prompt") == study.tasks[tid].prompt  # markup in prompts shows as text
        return tid

    # task 1 with the mouse
    expect(count).to_have_text("0 / 8")
    t1 = on_task(0)
    for key, value in (("fixed", "partly"), ("worse", "no"), ("prefer", "left")):
        _choose(page, key, value)
    given[t1] = {"fixed": "partly", "worse": "no", "prefer": "left"}
    page.click("#submit")
    expect(count).to_have_text("1 / 8")
    # task 2 with the keyboard: the digit answers the highlighted question, which then moves on
    t2 = on_task(1)
    page.keyboard.press("3")
    page.keyboard.press("1")
    page.keyboard.press("2")
    given[t2] = {"fixed": "no", "worse": "yes", "prefer": "right"}
    page.keyboard.press("Enter")
    expect(count).to_have_text("2 / 8")
    t3 = on_task(2)
    # an incomplete answer is not sent
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_have_text("Please answer question 2.")
    # back (Backspace) to task 2: its answers are shown; change the preference to "equal" and resubmit
    page.keyboard.press("Backspace")
    page.wait_for_url(re.compile(r"\?task=" + t2))
    expect(page.locator(".revising")).to_be_visible()
    for key, value in given[t2].items():
        expect(page.locator(f"input[name={key}][value={value}]")).to_be_checked()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("3")
    given[t2]["prefer"] = "equal"
    page.keyboard.press("Enter")
    page.wait_for_url(server.url + f"r/{token}")
    expect(count).to_have_text("2 / 8")
    # the problem map: H cycles the original image through heatmap and mask overlay
    assert on_task(2) == t3
    original = page.locator("img[data-maps]")
    src = original.get_attribute("src")
    page.keyboard.press("h")
    expect(original).to_have_attribute("src", re.compile(r"/heatmap$"))
    page.keyboard.press("h")
    expect(original).to_have_attribute("src", re.compile(r"/mask$"))
    page.keyboard.press("h")
    expect(original).to_have_attribute("src", src)
    page.wait_for_function("document.querySelector('img[data-maps]').naturalWidth === 48")  # the served image loads
    # reload: the same task, the same progress
    page.reload()
    expect(count).to_have_text("2 / 8")
    assert on_task(2) == t3
    _choose(page, "fixed", "yes")
    page.keyboard.press("2")  # worse: no (the highlight moved on after the click)
    _choose(page, "prefer", "right")
    given[t3] = {"fixed": "yes", "worse": "no", "prefer": "right"}
    page.click("#submit")
    expect(count).to_have_text("3 / 8")
    t4 = on_task(3)
    for key in ("2", "2", "1"):
        page.keyboard.press(key)
    given[t4] = {"fixed": "partly", "worse": "no", "prefer": "left"}
    page.keyboard.press("Enter")
    expect(count).to_have_text("4 / 8")
    assert page.evaluate("document.title").endswith("· rating") and "pwned" not in page.evaluate("document.title")
    assert dialogs == []  # no script from a prompt ran
    # the database holds exactly the answers given, with the side each task showed the base image on
    rows = _rows_of(db, token)
    assert {t: r[0] for t, r in rows.items()} == given
    assert {t: r[1] for t, r in rows.items()} == {t: base_side(seed, t) for t in given}
    assert {t: r[2] for t, r in rows.items()} == {t1: 0, t2: 1, t3: 0, t4: 0}
    # the start page offers to continue (the name as text); another rater in another browser gets other tokens
    page.goto(server.url)
    expect(page.locator("#resume-link")).to_have_text("Ada <b>&amp;</b>")
    assert page.get_attribute("#resume-link", "href") == f"/r/{token}"
    other = browser.new_context().new_page()
    other.goto(server.url)
    expect(other.locator("#resume")).to_be_hidden()
    other.fill("#name", "Ada <b>&amp;</b>")
    other.click("#start button[type=submit]")
    other.wait_for_selector("#answer")
    assert other.url.rsplit("/", 1)[1] != token and other.inner_text("#count") == "0 / 8"
    other.context.close()
    context.close()


def test_browser_layout_at_phone_and_desktop_width(browser, served):
    server, eval_dir, _ = served
    out = Path(os.environ["FOCUSNFIX_RATING_SCREENSHOTS"]) if os.environ.get("FOCUSNFIX_RATING_SCREENSHOTS") else None
    for name, width, height in (("phone", 390, 844), ("desktop", 1280, 800)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url)
        page.fill("#name", "Grace")
        page.click("#start button[type=submit]")
        page.wait_for_selector("#answer[data-ready=true]")
        page.keyboard.press("1")
        page.wait_for_function("[...document.querySelectorAll('.pair img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
        left, right = page.locator("#img-left").bounding_box(), page.locator("#img-right").bounding_box()
        assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 1  # side by side
        assert left["width"] >= 0.35 * min(width, 900)  # images use the width
        for box in [page.locator(sel).nth(k).bounding_box() for sel in ("label.opt", "#submit", "#back")
                    for k in range(page.locator(sel).count())]:
            assert 0 <= box["x"] and box["x"] + box["width"] <= width and box["height"] >= 40  # touch-sized
        form = page.locator("#answer").bounding_box()
        if name == "desktop":  # questions beside the images, Submit visible without scrolling
            assert form["x"] >= right["x"] + right["width"]
            submit = page.locator("#submit").bounding_box()
            assert submit["y"] + submit["height"] <= height
        else:  # questions below the images
            assert form["y"] >= left["y"] + left["height"]
        if out is not None:
            page.screenshot(path=str(out / f"rating-{name}.png"), full_page=name == "phone")
        context.close()


def test_twenty_concurrent_raters_lose_no_answer(served):
    server, eval_dir, db = served
    study = load_study(eval_dir)
    tasks = list(study.tasks)
    options = {q.key: q.values() for q in PAPER}

    def rater(n: int):
        token = _new_rater(server.url, f"client {n}")
        given, statuses = {}, []
        for k, tid in enumerate(tasks):
            answers = {key: vals[(n + k) % len(vals)] for key, vals in options.items()}
            status, data = _post(server.url, token, {"task": tid,
                                                     "submission": f"c{n:02d}-{k:02d}-{secrets.token_hex(4)}",
                                                     "answers": answers})
            statuses.append((status, data.get("status")))
            given[tid] = answers
        return token, given, statuses

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(rater, n) for n in range(20)]]
    assert len({token for token, _, _ in results}) == 20
    for token, given, statuses in results:
        assert statuses == [(200, "stored")] * len(tasks)
        assert {t: r[0] for t, r in _rows_of(db, token).items()} == given  # every answer, exactly once


def test_sigkill_during_a_burst_loses_no_acknowledged_answer(tmp_path):
    eval_dir = make_rating_eval(tmp_path / "eval")
    tasks = list(load_study(eval_dir).tasks)
    db = tmp_path / DB_NAME
    server = Server(eval_dir, db, tmp_path / "server.log")
    try:
        tokens = [_new_rater(server.url, f"burst {n}") for n in range(12)]
        acked, attempted = {}, {}
        lock, killed, unexpected = threading.Lock(), threading.Event(), []

        def burst(n: int, token: str):
            for k, tid in enumerate(tasks):
                body = {"task": tid, "submission": f"b{n:02d}{k:02d}{secrets.token_hex(4)}",
                        "answers": {"fixed": ("yes", "partly", "no")[(n + k) % 3], "worse": "no", "prefer": "left"}}
                with lock:
                    attempted[(token, tid)] = body
                try:
                    status, data = _post(server.url, token, body)
                except (OSError, http.client.HTTPException, ValueError):  # the server is gone: never acknowledged
                    return
                with lock:
                    if (status, data.get("status")) != (200, "stored"):
                        unexpected.append((status, data))
                        return
                    acked[(token, tid)] = body
                    if len(acked) == 24:  # kill mid-burst: the other clients' requests are in flight
                        server.proc.send_signal(signal.SIGKILL)
                        killed.set()

        threads = [threading.Thread(target=burst, args=(n, t)) for n, t in enumerate(tokens)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=WAIT_S)
        assert killed.is_set() and not unexpected and not any(t.is_alive() for t in threads)
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL and len(acked) < len(tokens) * len(tasks)
    finally:
        server.kill()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {(tok, task): (json.loads(a), sub) for tok, task, a, sub in con.execute(
        "SELECT r.token, a.task, a.answers, a.submission FROM answers a JOIN raters r ON r.id = a.rater_id")}
    dupes = con.execute("SELECT COUNT(*) FROM (SELECT rater_id, task FROM answers GROUP BY rater_id, task "
                        "HAVING COUNT(*) > 1)")
    assert dupes.fetchone()[0] == 0
    con.close()
    for key, body in acked.items():  # no acknowledged answer lost
        assert stored[key] == (body["answers"], body["submission"])
    assert set(stored) <= set(attempted)  # nothing that was not sent
    # restart on the same database: retrying every attempted submission (same ids) never duplicates
    server = Server(eval_dir, db, tmp_path / "server.log")
    try:
        for (token, tid), body in attempted.items():
            status, data = _post(server.url, token, body)
            assert status == 200 and data["status"] == ("replay" if (token, tid) in stored else "stored")
        # a rater with the fewest attempts (one who had answered every task would get the "done" page)
        token = min({tok for tok, _ in acked}, key=lambda tok: sum(1 for t, _ in attempted if t == tok))
        tid = next(t for tok, t in acked if tok == token)
        status, _ = _post(server.url, token, {**acked[(token, tid)], "submission": "another-one"})
        assert status == 409  # a second, different answer to an acknowledged task is refused
        with _opener.open(server.url + f"r/{token}", timeout=60) as page:  # the rater resumes after the restart
            done = sum(1 for tok, _ in attempted if tok == token)
            assert done < len(tasks)  # the kill came after 24 of 96 answers: some rater is mid-way
            assert f'<div id="count" class="count">{done} / {len(tasks)}</div>' in page.read().decode()
    finally:
        server.kill()
    con = sqlite3.connect(db)
    assert (con.execute("SELECT COUNT(*), COUNT(DISTINCT rater_id || ':' || task) FROM answers").fetchone()
            == (len(attempted),) * 2)
    con.close()
