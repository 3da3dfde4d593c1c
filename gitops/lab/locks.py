"""Lock files of the lab folder that vanish with their holder.

``NAME.lock`` is held by ``gitops lab up``/``down`` of lab NAME, ``NAME.preview.lock`` by the
preview that uses lab NAME (``gitops.daemon.preview.slot_lock``). Each is an ``flock`` on a file
that its holder removes when it lets go, so a lab that is down leaves no lock file; one
left by a killed holder is held by no process and ``gitops lab prune`` removes it.

Removing a lock file races with a process waiting on it: that process then holds a lock on
a file no longer in the folder while a third one locks a new file of the same name. So a
lock counts as taken only when the path still names the locked file; else it is taken
again on the path's new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gitops.lab.common import lab_parent

__all__ = ["held", "holders", "is_held", "lab_lock", "slot_lock_path"]


def lab_lock(name: str) -> Path:
    """The lock of lab ``name``'s ``up``/``down``."""
    return lab_parent() / f"{name}.lock"


def slot_lock_path(name: str) -> Path:
    """The lock a preview holds while it uses lab ``name``."""
    return lab_parent() / f"{name}.preview.lock"


def _names_it(fh: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fh``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(path: Path, wait: float | None) -> IO[str] | None:
    """The open, locked ``path``; None when another process holds it for ``wait`` seconds
    (``None``: as long as it takes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        fh = open(path, "a")  # noqa: SIM115 - returned open, closed by ``held``
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            if deadline is None or time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
            continue
        if _names_it(fh, path):
            return fh
        fh.close()  # its holder removed it while we waited: lock the file there now


@contextlib.contextmanager
def held(path: Path, wait: float | None = 0) -> Iterator[bool]:
    """Hold the lock ``path`` (True), or learn that another process holds it (False) after
    ``wait`` seconds (``None``: wait as long as it takes). The file goes with the lock."""
    fh = _acquire(path, wait)
    if fh is None:
        yield False
        return
    try:
        yield True
    finally:
        if _names_it(fh, path):
            path.unlink(missing_ok=True)
        fh.close()


def is_held(path: Path) -> bool:
    """Whether a process holds the lock ``path`` now (the file is left as it is)."""
    try:
        fh = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def holders(path: Path) -> list[int]:
    """The pids /proc/locks names as holding a lock on ``path`` (empty if none or unknown)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[5] == where and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))
