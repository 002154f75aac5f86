"""The ratings database: SQLite in WAL mode, one row per (rater, task) answer.

Durability: every submission is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction with
``synchronous = FULL``, and the app acknowledges it only after the commit returned, so stopping or
killing the server at any moment loses no acknowledged answer. Idempotency: ``UNIQUE (rater_id,
task)``; a submission carries a client-chosen id, so a retried request (same id) is answered "stored"
again without writing, while a second, different answer to the same task is refused (409) unless it
is an explicit revision ("back").
"""
from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import FocusNFixError

DB_NAME = "ratings.sqlite"  # in the eval folder: `focusnfix report` shows its summary
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    order_seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    task TEXT NOT NULL,
    sample TEXT NOT NULL,
    method TEXT NOT NULL,
    base_side TEXT NOT NULL CHECK (base_side IN ('left', 'right')),
    answers TEXT NOT NULL,
    submission TEXT NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (rater_id, task)
);
"""


def now() -> str:
    """UTC timestamp with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Rater:
    id: int
    token: str
    name: str
    order_seed: int


class Store:
    """Read and write the ratings database at ``path`` (created when missing).

    ``questions_json``, ``reference`` and ``design`` (``--only-problems`` / ``--per-rater``, JSON from
    :func:`.design.design_json`) are recorded on creation and never change: reopening the database with other
    questions is an error, answers or not (another server may be collecting answers to the recorded ones, and
    ``--summary`` reads every answer with them); with another design the raters' shares of the pairs would change
    under them. A database written before designs were recorded takes the first design it is opened with.
    """

    def __init__(self, path: str | Path, questions_json: str, reference: str, design: str = "{}"):
        self.path = Path(path)
        if self.path.is_dir():
            raise FocusNFixError(f"--db {str(self.path)!r} is a folder; give a file path")
        if not self.path.parent.is_dir():
            raise FocusNFixError(f"--db {str(self.path)!r}: folder {str(self.path.parent)!r} does not exist")
        try:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise FocusNFixError(f"{self.path}: SQLite refused WAL mode ({mode}); "
                                         "put the database on a local disk")
                con.executescript(_SCHEMA)
                self._meta(con, questions_json, reference, design)
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise FocusNFixError(f"{self.path} is not a usable ratings database: {e}") from None

    def _meta(self, con: sqlite3.Connection, questions_json: str, reference: str, design: str) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
            if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise FocusNFixError(f"{self.path}: ratings schema {meta['schema']}, "
                                     f"this focusnfix writes {SCHEMA_VERSION}")
            answered = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            for key, value, fix in (("questions", questions_json, "keep the study's --questions"),
                                    ("reference", reference, "rate the eval folder it was made for"),
                                    ("design", design, f"keep the study's --only-problems / --per-rater "
                                                       f"(recorded: {meta.get('design')})")):
                if key in meta and meta[key] != value:  # even without answers: a server may be running on it
                    raise FocusNFixError(f"{self.path} records other {key} than asked now ({answered} answers); "
                                         f"{fix} or start a new --db")
            con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [("schema", SCHEMA_VERSION), ("questions", questions_json), ("reference", reference),
                             ("design", design)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def connect(self) -> sqlite3.Connection:
        """A fresh connection (one per request; sqlite3 connections are not shared across threads)."""
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def add_rater(self, name: str) -> Rater:
        """A new rater with a random URL token and a random task-order seed."""
        token, seed = secrets.token_urlsafe(16), secrets.randbits(31)
        con = self.connect()
        try:
            cur = con.execute("INSERT INTO raters (token, name, order_seed, created_at) VALUES (?, ?, ?, ?)",
                              (token, name, seed, now()))
            return Rater(int(cur.lastrowid), token, name, seed)
        finally:
            con.close()

    def rater(self, token: str) -> Rater | None:
        con = self.connect()
        try:
            row = con.execute("SELECT id, token, name, order_seed FROM raters WHERE token = ?", (token,)).fetchone()
        finally:
            con.close()
        return Rater(row["id"], row["token"], row["name"], row["order_seed"]) if row else None

    def answers_of(self, rater_id: int) -> dict[str, dict[str, Any]]:
        """A rater's answers by task id (``answers`` parsed)."""
        con = self.connect()
        try:
            rows = con.execute("SELECT * FROM answers WHERE rater_id = ?", (rater_id,)).fetchall()
        finally:
            con.close()
        return {r["task"]: {**dict(r), "answers": json.loads(r["answers"])} for r in rows}

    def submit(self, rater: Rater, task: str, sample: Any, method: str, side: str, answers: dict[str, str],
               submission: str, revise: bool) -> str:
        """Store one answer; returns "stored", "revised", "replay" (this submission id is already the
        stored one: nothing written), "conflict" (answered with another submission: nothing written) or
        "missing" (a revision of a task never answered: nothing written)."""
        text, stamp = json.dumps(answers, sort_keys=True), now()
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT submission FROM answers WHERE rater_id = ? AND task = ?",
                                  (rater.id, task)).fetchone()
                if row is not None and row["submission"] == submission:
                    status = "replay"
                elif revise:
                    status = "missing" if row is None else "revised"
                    if row is not None:
                        con.execute("UPDATE answers SET answers = ?, submission = ?, revisions = revisions + 1, "
                                    "updated_at = ? "
                                    "WHERE rater_id = ? AND task = ?", (text, submission, stamp, rater.id, task))
                elif row is not None:
                    status = "conflict"
                else:
                    con.execute("INSERT INTO answers (rater_id, task, sample, method, base_side, answers, submission, "
                                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (rater.id, task, json.dumps(sample), method, side, text, submission, stamp, stamp))
                    status = "stored"
                con.execute("COMMIT")
            except sqlite3.IntegrityError:  # the UNIQUE backstop (writers are serialized by BEGIN IMMEDIATE)
                con.execute("ROLLBACK")
                status = "conflict"
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        return status


def read_ratings(path: str | Path) -> tuple[list[dict[str, Any]], str, str]:
    """(answer rows joined with rater names, questions JSON, reference) from a ratings database, read only."""
    path = Path(path)
    if not path.is_file():
        raise FocusNFixError(f"no ratings database at {path} (start one with `focusnfix rate EVAL_DIR`)")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            rows = con.execute("SELECT a.*, r.name AS rater FROM answers a JOIN raters r ON r.id = a.rater_id "
                               "ORDER BY a.rater_id, a.created_at, a.id").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise FocusNFixError(f"{path} is not a readable ratings database: {e}") from None
    if "questions" not in meta:
        raise FocusNFixError(f"{path} is not a focusnfix ratings database (no questions recorded)")
    out = [{**dict(r), "answers": json.loads(r["answers"]), "sample": json.loads(r["sample"])} for r in rows]
    return out, meta["questions"], meta.get("reference", "base")
