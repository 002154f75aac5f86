"""Errors and their one-line messages (the CLI's error contract, docs/reference.md "Errors and exit statuses").

* :class:`FocusNFixError` (and :class:`ConfigError`): bad input; the CLI exits with status 2 and
  nothing was changed.
* :class:`RunFailed` (and :class:`TrainingDiverged`): the input was fine but the run could not
  finish (disk full, divergence, a dead or frozen process of a distributed job); status 1, and
  what was written before (the last good checkpoint) is intact.
"""
from __future__ import annotations

import errno
import os
import re
import reprlib

MAX_MESSAGE = 299  # characters of a one-line message, "focusnfix: error: " included (under 300)


class FocusNFixError(ValueError):
    """Bad input from the user (config, paths, prompts, models). The message says how to fix it."""


class ConfigError(FocusNFixError):
    """An invalid configuration file or override."""


class RunFailed(RuntimeError):
    """A runtime failure (disk full, a collective timeout, ...); the CLI exits with status 1."""


class TrainingDiverged(RunFailed):
    """Training stopped after too many consecutive non-finite steps, or its weights became
    non-finite; the CLI exits with status 1."""


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 4, 4, 2


def short(value) -> str:
    """A bounded ``repr`` of any value (long strings, deep or self-similar YAML structures)."""
    return _REPR.repr(value)


def short_path(path, limit: int = 80) -> str:
    """A quoted path, its middle elided past ``limit`` characters."""
    text = str(path)
    if len(text) > limit:
        text = text[: limit // 2 - 2] + "..." + text[-(limit // 2 - 1):]
    return repr(text)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- secrets (Hub tokens) never reach printed text: one-line errors, --debug tracebacks --------------------------
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # huggingface_hub's own token variables
_SECRETS: set[str] = set()  # tokens this process was given (--token-env, huggingface-cli login's file)
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_AUTHORIZATION = re.compile(r"(?i)\b(authorization\W{0,4}(?:bearer\s+|basic\s+|token\s+)?)[^\s'\",;)}\]]+")


def register_secret(value: str | None) -> None:
    """Remember ``value`` (a token) so that :func:`redact` removes it from any text printed later."""
    if value and len(value.strip()) >= 8:
        _SECRETS.add(value.strip())


def redact(text: str) -> str:
    """``text`` without secrets: registered tokens, the values of HF_TOKEN / HUGGING_FACE_HUB_TOKEN, anything that
    looks like a Hub token (``hf_...``) and the value of an ``Authorization`` header, each shown as ``***``."""
    secrets = _SECRETS | {os.environ.get(name, "").strip() for name in TOKEN_VARIABLES}
    for secret in sorted((s for s in secrets if len(s) >= 8), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _HUB_TOKEN.sub("hf_***", text)
    return _AUTHORIZATION.sub(lambda m: m.group(1) + "***", text)


# errno values that mean "this path cannot be used as given" (bad input, status 2); any other
# OSError (no space, quota, I/O error) is a runtime failure (status 1).
BAD_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR,
                   errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.EINVAL}
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}

_HINTS = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EFBIG: "the file system refuses a file this large; choose another folder",
    errno.EACCES: "choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "choose a folder you can write to (or fix its permissions)",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file; choose another folder",
    errno.EISDIR: "the path is a folder; give a file",
    errno.ELOOP: "the path has a symbolic-link loop",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "your disk quota is used up; free some space or choose another folder"


def os_error_status(e: OSError) -> int:
    """2 for an unusable path (permissions, read-only, too long, missing), 1 otherwise (disk full, I/O)."""
    return 2 if e.errno in BAD_PATH_ERRNOS else 1


def os_error_message(e: OSError, path=None) -> str:
    """``"<what> writing/reading '<path>': <fix>"`` on one line."""
    where = path if path is not None else (e.filename if e.filename is not None else None)
    what = e.strerror or type(e).__name__
    text = f"{what} ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else str(e) or type(e).__name__
    if where is not None:
        text += f" at {short_path(where, 70)}"
    hint = _HINTS.get(e.errno)
    return f"{text}: {hint}" if hint else text


def safetensors_os_error(e: Exception, path) -> OSError | None:
    """The OSError inside a safetensors error (``... (os error 28)``), with ``path``; None if it is none."""
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))
