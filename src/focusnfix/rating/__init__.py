"""Human evaluation: ``focusnfix rate EVAL_DIR`` serves a blind rating study of an eval folder.

Raters see the base image and one method's image of the same (prompt, seed), sides randomized and
method names hidden, and answer the paper's three questions (:mod:`.questions`). Answers go to a
SQLite database (:mod:`.storage`, default ``EVAL_DIR/ratings.sqlite``); :mod:`.summary` turns them
into shares with Wilson CIs, paired sign tests and inter-rater agreement (:mod:`.stats`), printed by
``--summary`` / ``--export`` and shown by ``focusnfix report`` when the database sits in the eval folder.
The web app (:mod:`.app`) needs Flask: ``pip install 'focusnfix[rate]'``; nothing else here does.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
from pathlib import Path

from ..errors import FocusNFixError
from .storage import DB_NAME

__all__ = ["DB_NAME", "register"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def trusted_hosts(host: str, allowed: list[str] | None = None) -> list[str]:
    """The Host names the app answers to (any other gets 400: DNS rebinding): the address it listens on and the
    ``--allow-host`` names; on a loopback or wildcard address also localhost, 127.0.0.1 and ::1; on any other
    address also this machine's name and the addresses it resolves to."""
    names = {host, *(allowed or [])}
    wildcard = host in ("0.0.0.0", "::")
    if _is_loopback(host) or wildcard:
        names |= {"localhost", "127.0.0.1", "::1"}
    if not _is_loopback(host):
        names.add(socket.gethostname())
        try:
            names |= {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
    return sorted(names)


def _cmd_rate(args: argparse.Namespace) -> int:
    from .design import check_per_rater, parse_filter
    from .questions import load_questions
    from .tasks import load_study

    if not 0 <= args.port <= 65535:
        raise FocusNFixError(f"--port must be 0-65535 (0: any free port), got {args.port}")
    study = load_study(args.eval_dir, args.methods, parse_filter(args.only_problems), check_per_rater(args.per_rater),
                       args.problem)
    db = Path(args.db) if args.db else Path(args.eval_dir) / DB_NAME
    if args.export or args.summary:
        from .summary import export_csv, load_summary, summary_text

        if args.export:
            from ..runs.checkpoint import atomic_write_text

            text, n = export_csv(db, study)
            out = Path(args.export)
            if out.is_dir():
                raise FocusNFixError(f"--export {args.export!r} is a folder; give a .csv file path")
            if not out.parent.is_dir():
                raise FocusNFixError(f"--export {args.export!r}: folder {str(out.parent)!r} does not exist")
            atomic_write_text(out, text)
            print(f"wrote {n} answers to {out}")
        print(summary_text(load_summary(db, study.methods)))
        return 0
    questions = load_questions(args.questions)
    try:
        import flask  # noqa: F401
    except ImportError:
        raise FocusNFixError("the rating app needs Flask: pip install 'focusnfix[rate]'") from None
    from ..runs.locking import rating_lock

    lock = rating_lock(args.eval_dir)  # `focusnfix eval --overwrite` refuses the folder while a server holds it
    try:
        lock.acquire()
    except OSError as e:  # a read-only eval folder, which `eval --overwrite` cannot delete either
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return _serve(args, study, db, questions)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, study, db: Path, questions) -> int:
    from werkzeug.serving import make_server

    from .app import create_app
    from .design import design_json
    from .questions import to_json
    from .storage import Store

    # refuses other questions or another design than the recorded ones
    store = Store(db, to_json(questions), study.reference, design_json(study.only_problems, study.per_rater))
    hosts = trusted_hosts(args.host, args.allow_host)
    app = create_app(study, store, questions, hosts)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log: URLs carry raters' tokens
    try:  # bound here, so a busy port is one line (werkzeug would print its own lines and exit)
        sock = socket.create_server((args.host, args.port),
                                    family=socket.AF_INET6 if ":" in args.host else socket.AF_INET,
                                    backlog=128)
    except OSError as e:
        raise FocusNFixError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another --port "
                             "(0: any free one)") from None
    with sock:
        server = make_server(args.host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    host = f"[{args.host}]" if ":" in args.host else args.host
    if not _is_loopback(args.host):
        print(f"focusnfix rate: warning: listening on {args.host}: anyone who can reach this machine can rate and see "
              f"the images (there are no passwords); Host names answered: {', '.join(hosts)} (add one with "
              "--allow-host)", file=sys.stderr)
    print(f"focusnfix rate: http://{host}:{server.port}/ · {_design_line(study)} · answers in {db} · Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("focusnfix rate: stopped (every acknowledged answer is in the database)", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def _design_line(study) -> str:
    """What each rater gets, for the line printed at the start."""
    from .design import raters_needed

    t = len(study.tasks)
    text = (f"{study.per_rater_total} pairs per rater ({study.samples} samples x {len(study.methods)} methods: "
            f"{', '.join(study.methods)}; {study.left_out} left out without images")
    if study.only_problems is not None:
        text += f"; {study.without_problem} samples left out as they have no problem (kept: {study.only_problems})"
    text += ")"
    if study.per_rater is not None and study.per_rater < t:
        text += (f" · {t} pairs in all: after R raters every pair is rated by at least k = floor(R x "
                 f"{study.per_rater} / {t}) of them (k = 1: {raters_needed(t, study.per_rater, 1)} raters, "
                 f"k = 3: {raters_needed(t, study.per_rater, 3)})")
    return text + (f" · problem: {study.problem}" if study.problem else "")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``rate EVAL_DIR [--host H] [--allow-host NAME ...] [--port N] [--db PATH] [--questions Q] [--methods M ...]
    [--export CSV] [--summary]`` to an argparse subparsers object."""
    p = subparsers.add_parser("rate", help="human rating study of an eval folder (local web app)", description=(
        "Serve a blind rating study of an eval folder: raters open the printed URL, enter a name and judge, for "
        "each sample and method, the base image against the method's image (sides randomized, method names "
        "hidden) with the paper's three questions. Answers are saved in SQLite as they are given; stop and "
        "restart at any time. --export/--summary print the statistics instead of serving; `focusnfix report "
        f"EVAL_DIR` includes them when the database is EVAL_DIR/{DB_NAME}."))
    p.add_argument("eval_dir", metavar="EVAL_DIR", help="an eval folder written by `focusnfix eval`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 lets others on the network rate, without passwords)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", help="also answer requests for "
                   "this Host name (a DNS name of this machine, a proxy's name); others get 400 (DNS rebinding)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0: any free port, printed)")
    p.add_argument("--db", help=f"ratings database (default: EVAL_DIR/{DB_NAME})")
    p.add_argument("--questions", default="paper", help="paper (the paper's three questions, default) or a JSON file "
                   "with a list of {key, text, options: [{value, label, score}], sided} (docs/rating.md)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="rate only these methods (default: every method "
                   "but the reference)")
    p.add_argument("--only-problems", nargs="?", const="mask", metavar="METRIC<VALUE", help="rate only the samples "
                   "whose base image has a problem: alone (or 'mask'), those whose mask M(Î0) is non-empty; with "
                   "METRIC<VALUE (also >, <=, >=), those whose base row in samples.jsonl satisfies it, e.g. "
                   "'defect_artifact>0.5' (quote it for the shell; put it after EVAL_DIR)")
    p.add_argument("--per-rater", type=int, metavar="N", help="each rater gets N pairs of a balanced incomplete "
                   "design (default: every pair); after R raters of t pairs, every pair is rated by at least "
                   "k = floor(R N / t) of them (docs/rating.md)")
    p.add_argument("--problem", metavar="TEXT", help="what the problem looks like, shown to raters above the "
                   "questions (default: eval.json's 'problem', else a description of the eval's reward, if known)")
    p.add_argument("--export", metavar="CSV", help="write one row per answer to CSV, print the summary, and exit")
    p.add_argument("--summary", action="store_true", help="print the summary statistics and exit")
    p.set_defaults(func=_cmd_rate)
    return p
