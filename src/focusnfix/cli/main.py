"""Command-line interface: thin wrappers over the library. ``main(argv) -> int``.

Every failure prints one line ``focusnfix: error: ...`` (at most 300 characters) on stderr and exits
with status 2 (bad input: nothing was changed), 1 (a runtime failure: disk full, divergence, a dead
or frozen process of a distributed job; what was saved before is intact) or 130 (Ctrl-C). docs/reference.md,
"Errors and exit statuses"; ``--debug`` adds the traceback and the libraries' log lines. A reader that
closes the output early (``focusnfix train --help-config | head``) ends the command quietly: status 1, no message.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import select
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import (MAX_MESSAGE, FocusNFixError, RunFailed, one_line, os_error_message, os_error_status, redact,
                      safetensors_os_error)
from ..rating import register as register_rate
from ..report import register as register_report
from ..world.cli import register as register_world
from . import eval as eval_command
from . import export, push, sample, train

PREFIX = "focusnfix: error: "
# The subcommands, in the order of --help: each adds its parser to the subparsers object.
COMMANDS = (train.register, sample.register, eval_command.register, register_report, register_rate, register_world,
            push.register, export.register)


class _UsageError(Exception):
    """A command line argparse cannot parse (reported as one line, status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (subcommand parsers inherit the class)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="focusnfix", description="Focus-N-Fix: region-aware reward fine-tuning of text-to-image "
                "diffusion models.")
    p.add_argument("--version", action="version", version=f"focusnfix {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be told apart, not at the interpreter's exit
        return status
    except BrokenPipeError:
        if not _closed_outputs():
            raise
        return _quiet_on_closed_pipe()


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = _parser()
    try:
        # (--help and --version exit through SystemExit)
        args = parser.parse_args(train.train_argv(sys.argv[1:] if argv is None else argv))
    except _UsageError as e:
        return _fail(2, str(e))
    if args.command is None:
        parser.print_help()
        return 2
    with _contained_output(args.debug):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("focusnfix: interrupted", file=sys.stderr)
            return 130
        except SystemExit as e:  # a subcommand that exits by itself: its status (a text is an error message)
            if e.code is None or isinstance(e.code, int):
                return int(e.code or 0)
            return _fail(2, str(e.code))
        except BaseException as e:  # noqa: BLE001  (every failure ends as one line with a status)
            if isinstance(e, BrokenPipeError) and _closed_outputs():
                raise  # our own output's reader has gone: nobody to tell (main)
            status, message = describe_error(e)
            if args.debug:  # (without tokens: a Hub error may quote the request's Authorization header)
                print(redact("".join(traceback.format_exception(e))), end="", file=sys.stderr)
            return _fail(status, message)


def _closed_outputs() -> list[int]:
    """The file descriptors of stdout / stderr whose reader has gone (a pipe closed by ``head``); without
    ``select.poll`` (Windows) a broken pipe is taken to be ours."""
    if not hasattr(select, "poll"):
        return [1]
    closed = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR / POLLHUP are reported whatever was asked
            if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
                closed.append(fd)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # no file behind it (a test's capture)
            continue
    return closed


def _quiet_on_closed_pipe() -> int:
    """Python's advice for a closed pipe: point the closed output at /dev/null, so the interpreter's last flush
    does not print "Exception ignored ... BrokenPipeError", and exit with status 1 without a message."""
    for fd in _closed_outputs():
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        except OSError:
            pass
    return 1


def _fail(status: int, message: str) -> int:
    print(PREFIX + one_line(redact(message), MAX_MESSAGE - len(PREFIX)), file=sys.stderr)
    return status


def describe_error(e: BaseException) -> tuple[int, str]:
    """``(exit status, message)`` of any exception (the error contract in docs/reference.md)."""
    if isinstance(e, FocusNFixError):
        return 2, str(e)
    if isinstance(e, RunFailed):
        return 1, str(e)
    if isinstance(e, OSError):
        return os_error_status(e), os_error_message(e)
    inner = safetensors_os_error(e, "a .safetensors file") if type(e).__name__ == "SafetensorError" else None
    if inner is not None:  # safetensors' own error type around an OSError (disk full while saving)
        return os_error_status(inner), os_error_message(inner)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return 1, ("out of memory: lower --batch-size / train.batch_size, the resolution, or enable "
                   "sampler.grad_checkpointing")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = lines[0] if lines else ""
    return 1, (f"unexpected {type(e).__name__}: {detail[:120]}; rerun with --debug for the traceback and please "
               "report it")


_LIBRARIES = ("accelerate", "torch", "diffusers", "transformers", "peft", "huggingface_hub", "PIL", "urllib3",
              "filelock", "datasets")


def _quiet_libraries() -> None:
    """Our own progress bars and errors only: silence the libraries' loading bars and warnings."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass


@contextmanager
def _contained_output(debug: bool):
    """Our own progress bars, warnings and errors only: the libraries' loading bars, log lines and
    warnings are silenced (``--debug`` keeps them); focusnfix's own warnings print as one line."""
    _quiet_libraries()
    if debug:
        yield
        return
    package = str(Path(__file__).resolve().parent.parent)
    levels = {name: logging.getLogger(name).level for name in _LIBRARIES}

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            print(f"focusnfix: warning: {one_line(str(message), MAX_MESSAGE - 19)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
