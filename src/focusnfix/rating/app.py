"""The rating web app (Flask): start page, one page per task, a JSON endpoint for answers.

Routes (TOKEN is the rater's random URL token; TASK an opaque task id):
- ``GET /``: enter a name; ``POST /start``: create a rater, redirect to ``/r/TOKEN``;
- ``GET /r/TOKEN``: the rater's current task (the first unanswered one in their order), or the end page; a
  rater's tasks are every pair, or their share with ``--per-rater`` (:meth:`Study.order`), and any other task id
  is 404 on every route;
  ``?task=TASK`` shows an answered task again (the "back" button) to change its answer;
- ``GET /r/TOKEN/img/TASK/SLOT``: SLOT = left | right | heatmap | mask, the task's files only (resolved
  inside the eval folder when the study was loaded, and checked again at each request: still a regular image
  file inside the folder, not a link swapped in to the database or out of the folder);
- ``POST /api/r/TOKEN/answer``: JSON ``{"task", "submission", "answers": {key: value}, "revise"?}``.
  200 stored / revised / replayed; 400 malformed (not JSON, not UTF-8, nested too deep); 404 unknown rater or
  task; 409 already answered with another submission (or nothing to revise); 413 too large; 415 not JSON.
  A refused request writes nothing.

Only the Host names the command trusts are answered (:func:`host_name`; others get 400). Responses carry a
strict Content-Security-Policy (scripts only from /static: no inline script runs), no referrer (the token is in
the URL) and no framing; Jinja autoescapes every prompt and name. A server error is logged as one line without
the URL (which holds the rater's token).
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, redirect, render_template, request, send_file, url_for

from ..errors import one_line
from .questions import Question
from .storage import Rater, Store
from .tasks import Study, base_side, inside

SUBMISSION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_NAME = 80
SLOTS = ("left", "right", "heatmap", "mask")
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::[0-9]{1,5})?")


def host_name(value: str) -> str | None:
    """The host in a Host header (``name``, ``name:port``, ``[v6]:port``) or a bare name or address, normalised
    for comparison: lower case, no port, IP addresses in short form (``[0:0::1]:8765`` -> ``::1``); None if
    malformed."""
    value = value.strip().lower()
    if value.count(":") > 1 and not value.startswith("["):  # a bare IPv6 address
        value = f"[{value}]"
    m = _HOST.fullmatch(value)
    if m is None:
        return None
    name = m.group(1).strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


class _App(Flask):
    def log_exception(self, exc_info) -> None:
        """One line, without the URL (Flask's own line names it, and it holds the rater's token) or a traceback."""
        e = exc_info[1]
        token = (request.view_args or {}).get("token") or "\0"
        what = one_line(f"{type(e).__name__}: {e}".replace(token, "TOKEN"), 200)
        self.logger.error("focusnfix rate: internal error in %s %s: %s", request.method, request.endpoint, what)


def create_app(study: Study, store: Store, questions: tuple[Question, ...],
               trusted_hosts: list[str] | None = None) -> Flask:
    """The app for ``study``; ``trusted_hosts``: the only Host names answered (others get 400), which keeps
    a web page that re-points its own domain at the server's address (DNS rebinding) out of the study."""
    app = _App(__name__, root_path=str(Path(__file__).parent))
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, TEMPLATES_AUTO_RELOAD=False)
    app.jinja_env.autoescape = True  # also for any template name (Flask's default covers .html only)
    root = study.folder.resolve()
    keys = {q.key: q for q in questions}
    total = study.per_rater_total
    trusted = None if trusted_hosts is None else {host_name(h) for h in trusted_hosts} - {None}

    @app.before_request
    def _host_check():
        if trusted is not None and host_name(request.headers.get("Host", "")) not in trusted:
            return _error(400, "this server does not answer to that Host name; open the address it printed")

    @app.after_request
    def _headers(resp):
        resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src 'self'; style-src 'self'; "
                                                   "script-src 'self'; connect-src 'self'; form-action 'self'; "
                                                   "base-uri 'none'; frame-ancestors 'none'")
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        if request.path.startswith(("/r/", "/api/")) and request.endpoint != "image":
            resp.headers["Cache-Control"] = "no-store"  # pages follow the database, never a cached copy
        return resp

    def rater_or_404(token: str) -> Rater:
        rater = store.rater(token) if len(token) <= 64 else None
        if rater is None:
            abort(404)
        return rater

    def tasks_of(rater: Rater) -> list[str]:
        """The rater's task ids in their order (the rater created j-th has id j + 1)."""
        return study.order(rater.order_seed, rater.id - 1)

    @app.get("/")
    def start():
        return render_template("start.html", study=study, total=total, error=None, name="")

    @app.post("/start")
    def create():
        name = " ".join(str(request.form.get("name", "")).split())
        if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
            return render_template("start.html", study=study, total=total, name=name[:MAX_NAME],
                                   error=f"Enter a name of 1-{MAX_NAME} characters."), 400
        rater = store.add_rater(name)
        return redirect(url_for("task_page", token=rater.token), code=303)

    @app.get("/r/<token>")
    def task_page(token: str):
        rater = rater_or_404(token)
        answered = store.answers_of(rater.id)
        order = tasks_of(rater)
        current = next((t for t in order if t not in answered), None)
        wanted = request.args.get("task")
        if wanted is not None:
            if wanted not in order:
                abort(404)
            if wanted not in answered and wanted != current:  # no skipping ahead
                return redirect(url_for("task_page", token=token), code=303)
        tid = wanted or current
        done = sum(1 for t in answered if t in order)
        if tid is None:
            last = order[-1] if order else None
            return render_template("done.html", study=study, rater=rater, total=total, done=done, back=last)
        position = order.index(tid)
        back = order[position - 1] if position > 0 else None
        side = base_side(rater.order_seed, tid)
        task = study.tasks[tid]
        previous = answered.get(tid)
        maps = [slot for slot in ("heatmap", "mask") if getattr(task, slot) is not None]
        return render_template(
            "task.html", study=study, rater=rater, task=task, side=side, total=total, done=done,
            position=position, back=back, maps=maps, nonce=secrets.token_urlsafe(12),
            previous=previous["answers"] if previous else {}, revise=previous is not None,
            questions=[(q, q.render(side)) for q in questions], max_keys=max(len(q.options) for q in questions))

    @app.get("/r/<token>/img/<task>/<slot>")
    def image(token: str, task: str, slot: str):
        rater = rater_or_404(token)
        t = study.tasks.get(task)
        if t is None or slot not in SLOTS or task not in tasks_of(rater):
            abort(404)
        if slot in ("left", "right"):
            path = t.reference_image if slot == base_side(rater.order_seed, task) else t.method_image
        else:
            path = getattr(t, slot)
        path = inside(root, str(path)) if path is not None else None  # files change: check again when served
        if path is None:
            abort(404)
        resp = send_file(path, max_age=3600)
        resp.headers["Cache-Control"] = "private, max-age=3600"  # behind the rater's token
        return resp

    @app.post("/api/r/<token>/answer")
    def answer(token: str):
        rater = rater_or_404(token)
        if not request.is_json:
            return _error(415, "send JSON (Content-Type: application/json)")
        try:
            body = json.loads(request.get_data(cache=False))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser recurses
            return _error(400, "the body must be a JSON object in UTF-8")
        problem = _check(body, keys)
        if problem:
            return _error(400, problem)
        t = study.tasks.get(body["task"])
        mine = tasks_of(rater)
        if t is None or t.id not in mine:
            return _error(404, "unknown task")
        side = base_side(rater.order_seed, t.id)
        status = store.submit(rater, t.id, t.sample, t.method, side, body["answers"], body["submission"],
                              bool(body.get("revise", False)))
        if status == "conflict":
            return _error(409, "this task already has another answer from you; reload the page")
        if status == "missing":
            return _error(409, "nothing to revise: this task has no answer yet")
        done = sum(1 for tid in store.answers_of(rater.id) if tid in mine)
        return jsonify(status=status, done=done, total=total, next=url_for("task_page", token=token))

    @app.errorhandler(404)
    def _not_found(e):
        return _error(404, "not found")

    @app.errorhandler(405)
    def _not_allowed(e):
        return _error(405, "method not allowed")

    @app.errorhandler(413)
    def _too_large(e):
        return _error(413, "request too large")

    @app.errorhandler(500)
    def _internal(e):
        return _error(500, "internal error (the server's log says what failed); try again")

    return app


def _error(code: int, message: str):
    """JSON for the API, one line of text for pages."""
    if request.path.startswith("/api/"):
        return jsonify(error=message), code
    return f"{code}: {message}\n", code, {"Content-Type": "text/plain; charset=utf-8"}


def _check(body: Any, questions: dict[str, Question]) -> str | None:
    """Why an answer body is malformed, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    extra = set(body) - {"task", "submission", "answers", "revise"}
    if extra or not {"task", "submission", "answers"} <= set(body):
        return "expected exactly the keys task, submission, answers (and optionally revise)"
    if not isinstance(body["task"], str) or len(body["task"]) > 64:
        return "task must be a task id"
    if not isinstance(body["submission"], str) or not SUBMISSION.match(body["submission"]):
        return "submission must be 8-64 characters of [A-Za-z0-9_-]"
    if "revise" in body and not isinstance(body["revise"], bool):
        return "revise must be true or false"
    answers = body["answers"]
    if not isinstance(answers, dict) or set(answers) != set(questions):
        return f"answers must hold exactly the questions {', '.join(questions)}"
    for key, value in answers.items():
        if not isinstance(value, str) or value not in questions[key].values():
            return f"answer to {key!r} must be one of {', '.join(questions[key].values())}"
    return None
