"""``focusnfix rate``'s security promises (docs/rating.md "Security"), one test each: random tokens, the Host
check against DNS rebinding on every bind address, CSV export neutralised against formulas, only the eval's
image files served (checked again at request time), no URL or token in the error log and no 500 for a bad body,
the lock that keeps ``eval --overwrite`` off a folder being rated, one question set per database, finite scores.

The server runs in-process (:func:`_serve`): the CLI wiring is real, the network is not (the app is driven with
Flask's test client while the command "serves").
"""
import csv
import json
import logging
import os
import socket
import sqlite3

import pytest
from test_rating import ANSWERS, make_rating_eval

from focusnfix.errors import FocusNFixError
from focusnfix.rating.questions import PAPER, load_questions, to_json
from focusnfix.rating.storage import DB_NAME, Store
from focusnfix.rating.tasks import load_study

CUSTOM = [{"key": "sharp", "text": "Is the {new} image sharper?",
           "options": [{"value": "yes", "label": "yes", "score": 1}, {"value": "no", "label": "no", "score": 0}]}]


@pytest.fixture()
def eval_dir(tmp_path):
    return make_rating_eval(tmp_path / "eval")


def _serve(monkeypatch, argv, during=lambda app: None):
    """``focusnfix rate ARGV`` in-process: ``during(app)`` runs while the command serves (werkzeug's server and
    the listening socket are replaced: no network). Returns the exit status."""
    import werkzeug.serving

    from focusnfix.cli import main

    real = socket.create_server
    monkeypatch.setattr(socket, "create_server", lambda *a, **k: real(("127.0.0.1", 0)))
    seen = {}

    class Server:
        port = 8765

        def serve_forever(self):
            try:
                during(seen["app"])
            except BaseException as e:  # noqa: BLE001  (re-raised below, outside the CLI's error handling)
                seen["error"] = e

        def server_close(self):
            pass

    def make_server(host, port, app, **kwargs):
        seen["app"] = app
        return Server()

    monkeypatch.setattr(werkzeug.serving, "make_server", make_server)
    status = main(argv)
    if "error" in seen:
        raise seen["error"]
    return status


def _raters(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
    finally:
        con.close()


def _app(eval_dir, db, trusted=None):
    from focusnfix.rating.app import create_app

    store = Store(db, to_json(PAPER), "base")
    return create_app(load_study(eval_dir), store, PAPER, trusted), store


def _start(c, name="Ada"):
    resp = c.post("/start", data={"name": name})
    assert resp.status_code == 303
    return resp.headers["Location"].rsplit("/", 1)[1]


# -- tokens ------------------------------------------------------------------------------------------------------

def test_tokens_are_random_and_every_rater_url_needs_one(eval_dir, tmp_path):
    app, _ = _app(eval_dir, tmp_path / DB_NAME)
    c = app.test_client()
    a, b = _start(c), _start(c)  # the same name twice: two raters
    assert a != b and len(a) >= 22 and len(b) >= 22  # 16 random bytes each
    tid = next(iter(load_study(eval_dir).tasks))
    for url in ["/r/x", f"/r/{a[:-1]}", f"/r/{a[:-1]}/img/{tid}/left", "/r/" + "a" * 65]:
        assert c.get(url).status_code == 404, url
    assert c.post(f"/api/r/{a[:-1]}/answer", json={"task": tid, "submission": "abcdefgh",
                                                     "answers": ANSWERS}).status_code == 404


# -- 1. CSV export -----------------------------------------------------------------------------------------------

def test_csv_export_neutralises_formula_cells(tmp_path, capsys):
    from focusnfix.cli import main

    prompts = ["=1+2", "\tstarts with a tab", "\rstarts with CR", "a - b = c"]
    eval_dir = make_rating_eval(tmp_path / "eval", prompts)
    db = tmp_path / DB_NAME
    app, store = _app(eval_dir, db)
    study = load_study(eval_dir)
    names = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-1+1", "@SUM(A1)", "Ada = Grace"]
    for n, name in enumerate(names):
        rater = store.add_rater(name)
        for t in study.tasks.values():
            assert store.submit(rater, t.id, t.sample, t.method, "left", ANSWERS, f"sub-{n}-{t.id}", False) == "stored"
    out = tmp_path / "results.csv"
    assert main(["rate", str(eval_dir), "--db", str(db), "--export", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == len(names) * len(study.tasks)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert {r["rater"] for r in rows} == {"'" + n for n in names[:4]} | {"Ada = Grace"}
    assert {r["prompt"] for r in rows} == {"'" + p for p in prompts[:3]} | {"a - b = c"}


# -- 2. Host check -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, good, bad", [
    ("127.0.0.1", ["127.0.0.1:8765", "localhost:8765", "localhost"], ["evil.example:8765", "[::1]:8765x"]),
    ("::1", ["[::1]:8765", "localhost:8765", "[0:0::1]:8765"], ["evil.example:8765", "[::2]:8765", "127.0.0.2"]),
    ("localhost", ["localhost:8765", "127.0.0.1:8765"], ["evil.example"]),
    ("0.0.0.0", ["127.0.0.1:8765", f"{socket.gethostname()}:8765", "study.lab.example:8765"], ["evil.example:8765"]),
    ("::", ["[::1]:8765", "study.lab.example"], ["evil.example:8765"]),
])
def test_host_check_holds_for_ipv6_loopback_and_every_bound_host(monkeypatch, eval_dir, tmp_path, capsys,
                                                                 host, good, bad):
    """A page on another domain re-pointed at the server's address (DNS rebinding) gets 400, whatever --host is."""
    db = tmp_path / DB_NAME

    def during(app):
        c = app.test_client()
        for name in good:
            assert c.get("/", headers={"Host": name}).status_code == 200, name
        for name in bad:
            assert c.get("/", headers={"Host": name}).status_code == 400, name
            assert c.post("/start", data={"name": "x"}, headers={"Host": name}).status_code == 400, name
        assert _raters(db) == 0
        assert c.post("/start", data={"name": "x"}, headers={"Host": good[0]}).status_code == 303

    extra = ["--allow-host", "study.lab.example"] if host in ("0.0.0.0", "::") else []
    assert _serve(monkeypatch, ["rate", str(eval_dir), "--db", str(db), "--host", host, "--port", "0", *extra],
                  during) == 0
    assert _raters(db) == 1
    assert logging.getLogger("werkzeug").level >= logging.WARNING  # no request log (URLs carry tokens)
    err = capsys.readouterr().err
    if host in ("0.0.0.0", "::"):  # off loopback: a warning naming the Host names answered
        assert "warning" in err and "no passwords" in err and "study.lab.example" in err, err
    else:
        assert "warning" not in err, err


# -- 3. files served ---------------------------------------------------------------------------------------------

def test_an_image_swapped_for_a_link_to_the_database_is_not_served(eval_dir):
    app, _ = _app(eval_dir, eval_dir / DB_NAME)  # the default place: inside the eval folder
    c = app.test_client()
    token = _start(c)
    study = load_study(eval_dir)
    tasks = list(study.tasks.values())

    def codes(t):
        return sorted(c.get(f"/r/{token}/img/{t.id}/{side}").status_code for side in ("left", "right"))

    for t, target in zip(tasks, [eval_dir / DB_NAME, eval_dir / "samples.jsonl", eval_dir / "eval.json"]):
        t.method_image.unlink()
        t.method_image.symlink_to(target)  # inside the folder, but not an image
        assert codes(t) == [200, 404], target
    t = tasks[3]
    t.method_image.unlink()
    os.symlink(os.path.relpath(tasks[4].method_image, t.method_image.parent), t.method_image)
    assert codes(t) == [200, 200]  # a link to another image of the folder is still an image of the folder
    t.method_image.unlink()
    t.method_image.mkdir()
    assert codes(t) == [200, 404]  # not a regular file


# -- 4. errors: no URL in the log, no 500 for a bad body ---------------------------------------------------------

def test_server_errors_log_one_line_without_url_or_token(eval_dir, tmp_path, caplog, capsys):
    app, store = _app(eval_dir, tmp_path / DB_NAME)
    c = app.test_client()
    token = _start(c)

    def broken(rater_id):
        raise sqlite3.OperationalError(f"disk I/O error near {token}")

    store.answers_of = broken
    with caplog.at_level(logging.INFO):
        resp = c.get(f"/r/{token}")
    assert resp.status_code == 500 and token not in resp.get_data(as_text=True)
    logged = caplog.text + "".join(capsys.readouterr())
    assert token not in logged and "/r/" not in logged
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "OperationalError" in errors[0].getMessage() and errors[0].exc_info is None


@pytest.mark.parametrize("body, code", [
    ("[" * 7000 + "]" * 7000, 400),  # 14 kB, nested deeper than the parser's recursion limit
    ('{"task":' * 1600 + "1" + "}" * 1600, 400),
    ('{"task": "x", "submission": NaN}', 400),
    (b'{"task": "\xff\xfe"}', 400),  # not UTF-8
    ("\"" + "x" * 17000 + "\"", 413),
])
def test_malformed_deep_or_large_json_is_a_4xx(eval_dir, tmp_path, body, code):
    app, _ = _app(eval_dir, tmp_path / DB_NAME)
    c = app.test_client()
    token = _start(c)
    resp = c.post(f"/api/r/{token}/answer", data=body, content_type="application/json")
    assert resp.status_code == code and "error" in resp.get_json()
    assert sqlite3.connect(tmp_path / DB_NAME).execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0


# -- 5. the eval folder's lock and the database's questions ------------------------------------------------------

def test_eval_overwrite_refuses_while_a_rating_server_runs(monkeypatch, eval_dir, tiny_dir, tmp_path, capsys):
    from focusnfix.cli import main
    from focusnfix.runs.locking import check_not_rated

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  path: {tiny_dir}\ndata:\n  prompts: ['a red circle']\nsampler:\n  steps: 2\n")
    db = eval_dir / DB_NAME
    before = {p: p.read_bytes() for p in eval_dir.rglob("*") if p.is_file()}

    def during(app):
        c = app.test_client()
        token = _start(c)
        tid = next(iter(load_study(eval_dir).tasks))
        assert c.post(f"/api/r/{token}/answer", json={"task": tid, "submission": "abcdefgh",
                                                        "answers": ANSWERS}).status_code == 200
        capsys.readouterr()
        assert main(["eval", "--config", str(cfg), "--methods", "base", "--seeds", "0", "--out", str(eval_dir),
                     "--overwrite", "--no-progress", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"process {os.getpid()}" in err and "focusnfix rate" in err, err
        assert c.get(f"/r/{token}").status_code == 200  # the server goes on
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1

    assert _serve(monkeypatch, ["rate", str(eval_dir), "--port", "0"], during) == 0
    for p, data in before.items():
        if p.name != DB_NAME and not p.name.startswith(DB_NAME):
            assert p.read_bytes() == data, p  # the eval folder is untouched
    assert not list(eval_dir.glob(".rating*"))  # the server removed its lock file on exit
    (eval_dir / ".rating-999999.lock").write_text("999999\n")  # a killed server's file: no live holder
    check_not_rated(eval_dir)


def test_a_database_keeps_the_questions_it_was_started_with(monkeypatch, eval_dir, tmp_path, capsys):
    """A second server with other questions on the same database is refused, answers or not, and --summary
    reads the answers with the recorded questions."""
    db = tmp_path / DB_NAME
    app, store = _app(eval_dir, db)  # server A: the paper's questions, no answer yet
    custom = tmp_path / "q.json"
    custom.write_text(json.dumps(CUSTOM))
    capsys.readouterr()
    assert _serve(monkeypatch, ["rate", str(eval_dir), "--db", str(db), "--questions", str(custom),
                                "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other questions" in err and "--db" in err, err
    c = app.test_client()
    token = _start(c)
    for tid in load_study(eval_dir).tasks:
        assert c.post(f"/api/r/{token}/answer", json={"task": tid, "submission": f"s-{tid}",
                                                        "answers": ANSWERS}).status_code == 200
    from focusnfix.cli import main

    assert main(["rate", str(eval_dir), "--db", str(db), "--summary"]) == 0
    out = capsys.readouterr().out
    assert "8 answers" in out and "[fixed]" in out and "[prefer]" in out and "[sharp]" not in out
    with pytest.raises(FocusNFixError, match="other questions"):
        Store(db, json.dumps(CUSTOM), "base")
    Store(db, to_json(PAPER), "base")  # the same questions: fine


# -- 6. finite scores --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_question_scores_are_refused(monkeypatch, eval_dir, tmp_path, capsys, score):
    custom = tmp_path / "q.json"
    bad = [{**CUSTOM[0], "options": [{"value": "yes", "label": "yes", "score": score},
                                     {"value": "no", "label": "no", "score": 0}]}]
    custom.write_text(json.dumps(bad))  # NaN / Infinity / -Infinity: Python's json reads them
    with pytest.raises(FocusNFixError, match="finite") as e:
        load_questions(str(custom))
    assert str(custom) in str(e.value) and "'sharp'" in str(e.value)
    assert _serve(monkeypatch, ["rate", str(eval_dir), "--db", str(tmp_path / DB_NAME), "--questions", str(custom),
                                "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finite" in err and "sharp" in err
