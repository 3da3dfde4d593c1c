"""The state folder is private to the daemon's user: its folders 0700, its files 0600.

The database, snapshots, mirrors, reports, locks and the fingerprint key can hold secrets
(service parameters, commit contents). Called wherever something is created in the state
folder: ``store``, ``source`` (mirrors, snapshots) and ``reconcile`` (locks). Reports are
written 0600 into a folder made 0700 (``incidents``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_dir", "private_file"]


def private_dir(path: Path) -> Path:
    """Make ``path`` (its missing parents as usual) with mode 0700, or narrow an existing
    folder of this user to 0700; return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        _narrow(path, 0o700)
    else:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; say it exactly
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist, or narrow this user's
    existing file to 0600; return it (SQLite then keeps the mode for its -wal and -shm)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _narrow(path, 0o600)
    return path


def _narrow(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
