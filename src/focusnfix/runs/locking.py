"""Exclusive folder locks for run and eval folders: an OS file lock (``fcntl.flock``), so a crashed
or killed holder releases it with its last file descriptor; no stale marker files to clean up.

The lock file holds the holder's PID (for the error message only; the lock itself is the flock).
A second process gets a one-line :class:`~focusnfix.errors.FocusNFixError` naming that PID at once
instead of waiting. The holder deletes the lock file on release while still holding the lock; a
process that opened the old file meanwhile notices (the path no longer names the inode it locked)
and retries on the new file, so two holders can never coexist.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import BAD_PATH_ERRNOS, FocusNFixError, os_error_message, short_path

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are not locked there
    fcntl = None


class FolderLock:
    """``with FolderLock(lock_file, "run folder", folder, hint): ...``: hold an exclusive lock.

    ``what``/``folder``/``hint`` only shape the error: ``"<what> '<folder>' is in use by process
    <pid>; <hint>"``. Reentrant within one object only (not across objects: each opens its own file).
    """

    def __init__(self, lock_file: str | Path, what: str, folder: str | Path | None = None,
                 hint: str = "wait for it to finish"):
        self.path, self.what, self.hint = Path(lock_file), what, hint
        self.folder = Path(folder) if folder is not None else self.path.parent
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        if fcntl is None or self.fd is not None:
            return self
        for _ in range(100):  # a retry happens only when the holder released and deleted the file meanwhile
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise FocusNFixError(f"{self.what} {short_path(self.folder)} is in use by process {self._holder()}; "
                                     f"{self.hint}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder deleted on release: try the current one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return self
        raise FocusNFixError(f"could not lock {short_path(self.path)}; another process keeps replacing it")

    def _open(self) -> int:
        """The lock file, opened (created if missing); an unusable path (a folder, a file in the way, no permission)
        is bad input: a one-line :class:`FocusNFixError`, nothing changed."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno not in BAD_PATH_ERRNOS:
                raise  # a full disk, an I/O error: a runtime failure
            if e.errno == errno.EISDIR:
                raise FocusNFixError(f"{self.what} {short_path(self.folder, 70)}: its {self.path.name!r} is a folder, "
                                     "not a lock file; move it away (no focusnfix process made it)") from None
            raise FocusNFixError(f"{self.what} {short_path(self.folder, 70)} cannot be locked: "
                                 f"{os_error_message(e, self.path)}") from None

    def check(self) -> None:
        """Raise the "in use" error if another process holds the lock now; take nothing, change nothing."""
        if fcntl is None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FocusNFixError(f"{self.what} {short_path(self.folder)} is in use by process {self._holder()}; "
                                 f"{self.hint}") from None
        finally:
            os.close(fd)  # (closing also drops the lock if we got it)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
        except OSError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return pid if pid.isdigit() else "(unknown pid)"

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- `focusnfix rate` on an eval folder ---------------------------------------------------------------------------

RATING_HINT = ("a `focusnfix rate` server is serving it: stop that server (Ctrl-C) and copy its ratings.sqlite "
               "out of the folder first, or choose another --out")


def rating_lock(eval_dir: str | Path) -> FolderLock:
    """The lock a ``focusnfix rate`` server holds on its eval folder while it serves: one file per server
    (``.rating-PID.lock``), so several servers may rate one folder; :func:`check_not_rated` finds them."""
    folder = Path(eval_dir)
    return FolderLock(folder / f".rating-{os.getpid()}.lock", "eval folder", folder, RATING_HINT)


def check_not_rated(eval_dir: str | Path) -> None:
    """Raise the one-line "in use" error if a live ``focusnfix rate`` server holds a lock on ``eval_dir``
    (before it is replaced or deleted); a file a killed server left holds no lock and does not count."""
    folder = Path(eval_dir)
    if folder.is_dir():
        for path in sorted(folder.glob(".rating-*.lock")):
            FolderLock(path, "eval folder", folder, RATING_HINT).check()
