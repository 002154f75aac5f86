"""Self-contained offline HTML reports: ``render_report(folder) -> folder/report.html``.

The page is rendered from the folder's files only: inline CSS, plots as inline SVG, images linked by
relative path (copy the folder and the report still works). Two kinds of folder are recognised:
an eval folder (``eval.json`` + ``samples.jsonl``, written by ``focusnfix eval``) and a training run
folder (``metrics.jsonl`` and/or ``summary.json``, written by ``focusnfix train``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FocusNFixError
from ..runs.checkpoint import atomic_write_text

__all__ = ["folder_kind", "register", "render_report"]


def folder_kind(folder: str | Path) -> str:
    """"eval" or "run" by the files present; FocusNFixError for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FocusNFixError(f"report folder {str(folder)!r} does not exist or is not a folder")
    if (folder / "eval.json").is_file():
        return "eval"
    if (folder / "metrics.jsonl").is_file() or (folder / "summary.json").is_file():
        return "run"
    raise FocusNFixError(f"{str(folder)!r} is neither an eval folder (eval.json + samples.jsonl) nor a run folder "
                         "(metrics.jsonl / summary.json)")


def render_report(folder: str | Path, title: str | None = None) -> Path:
    """Write ``folder/report.html`` for an eval or run folder and return its path."""
    folder = Path(folder)
    if folder_kind(folder) == "eval":
        from .eval_folder import render_eval

        text = render_eval(folder, title)
    else:
        from .run_folder import render_run

        text = render_run(folder, title)
    atomic_write_text(folder / "report.html", text)
    return folder / "report.html"


def _cmd_report(args: argparse.Namespace) -> int:
    print(render_report(args.folder, args.title))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``report FOLDER [--title T]`` to an argparse subparsers object."""
    p = subparsers.add_parser("report", help="render report.html for an eval or run folder", description=(
        "Write FOLDER/report.html: one self-contained offline page (tables, SVG plots, sample grids) "
        "rendered from an eval folder (eval.json, samples.jsonl) or a training run folder (metrics.jsonl, "
        "summary.json, samples/). Prints the report's path."))
    p.add_argument("folder", help="an eval folder or a run folder")
    p.add_argument("--title", help="page title (default: from eval.json, else the folder name)")
    p.set_defaults(func=_cmd_report)
    return p
