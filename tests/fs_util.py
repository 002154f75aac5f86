"""File-system helpers for the reliability tests: small tmpfs mounts (a full disk, a read-only folder)
when the tests run as root and mounting works, else ``None`` (the caller then simulates or skips)."""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextmanager
def tmpfs(path: Path, size: str = "20m"):
    """Mount a ``size`` tmpfs at ``path`` (created) and yield it, or yield None where that is not possible
    (not root, no mount permission inside a container, no ``mount`` binary). Always unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (os.name == "posix" and os.geteuid() == 0 and shutil.which("mount") is not None
               and os.environ.get("FOCUSNFIX_TEST_NO_MOUNT") != "1"
               and _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)))
    try:
        yield path if mounted else None
    finally:
        if mounted and not _run("umount", str(path)):
            _run("umount", "-l", str(path))


def remount_readonly(path: Path) -> bool:
    return _run("mount", "-o", "remount,ro", str(path))


@contextmanager
def readonly_copy(src: Path | None, where: Path):
    """A read-only folder at ``where`` (holding a copy of ``src`` when given), or None.

    As root: a tmpfs remounted read-only (root ignores permission bits). Otherwise: mode 0o555, which a
    normal user cannot write into. None where neither works."""
    if os.name == "posix" and os.geteuid() != 0:
        where.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copytree(src, where, dirs_exist_ok=True)
        for p in [where, *where.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield where
        finally:
            for p in [where, *where.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        return
    with tmpfs(where, "4m") as mount:
        if mount is not None and src is not None:
            shutil.copytree(src, mount, dirs_exist_ok=True)
        if mount is not None and not remount_readonly(mount):
            mount = None
        yield mount


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free on ``folder``'s file system."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler.bin"
    size = max(0, free - leave)
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            n = f.write(chunk[: min(size, len(chunk))])
            size -= n
    return filler
