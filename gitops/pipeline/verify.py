"""Stage 5, verify: run each service's testinfra checks on its hosts, return a VerifyReport.

Called by the reconcile for the hosts its apply did not verify itself (the apply worker
checks the hosts it applied over the same connections, ``gitops.pipeline.apply``), by
``gitops verify`` and the daemon's drift checks. The checks run in a worker process, one per
call, because testinfra and pytest keep process-global state: without kept connections the
apply worker (``checks_only``: each host over one paramiko connection), with them or for
untrusted checks ``gitops.workers.verify_worker`` (OpenSSH). This module only starts it,
feeds it the declared state as JSON and reads the report back; it never imports testinfra or
pytest itself.

``SshConnections`` is the daemon's folder of kept SSH connections: verifies given it leave
each host's connection open (an OpenSSH control master) for the next one, as Ansible's
ControlPersist does, so a drift check costs a session per host, not an SSH handshake.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from gitops.errors import WorkerError
from gitops.model import DeclaredState
from gitops.pipeline.worker import Confined, run_worker
from gitops.records import VerifyReport, WorkerResult

__all__ = ["SshConnections", "verify"]

WORKER = "gitops.workers.verify_worker"
APPLY_WORKER = "gitops.workers.apply_worker"
"""Without kept connections, the checks run in the apply worker over paramiko: a connection
costs the controller less there than an OpenSSH client process per host."""
MAX_SOCKET_DIR = 60
"""A control socket path (folder + 40-character hash) must fit in 108 bytes."""


def verify(
    state: DeclaredState,
    *,
    timeout: float = 600,
    on_progress: Callable[[str], None] | None = None,
    connections: Path | None = None,
    confined: Confined | None = None,
) -> VerifyReport:
    """Run the checks of every service on every host of ``state``, in a worker process.

    ``on_progress`` is called (in this thread) with one line per host as it finishes.
    ``connections``: a folder from ``SshConnections`` to keep (and reuse) SSH connections in.
    Raises WorkerError, with the worker's last stderr lines, if it crashes or takes longer
    than ``timeout`` seconds (it is then killed with its SSH clients). ``confined``: the
    checks are untrusted code (a preview's, ``gitops.pipeline.sandbox``).
    """
    if connections is None and confined is None:
        return _over_paramiko(state, timeout, on_progress)
    if connections is not None:
        _private_folder(connections)
    job = json.dumps({"state": state.model_dump(mode="json"),
                      "control_dir": str(connections) if connections else None})
    out = run_worker(WORKER, job, timeout=timeout, on_progress=on_progress, confined=confined)
    try:
        return VerifyReport.model_validate_json(out)
    except ValidationError as exc:
        raise WorkerError(f"verify worker wrote no valid report: {exc}") from None


def _over_paramiko(state: DeclaredState, timeout: float,
                   on_progress: Callable[[str], None] | None) -> VerifyReport:
    """The checks in the apply worker (``checks_only``): each host reached over one paramiko
    connection, its commands in one remote shell on it, no ``ssh`` process per host."""
    job = json.dumps({"state": state.model_dump(mode="json"), "checks_only": True})
    out = run_worker(APPLY_WORKER, job, timeout=timeout, on_progress=on_progress)
    try:
        report = WorkerResult.model_validate_json(out).verify
    except ValidationError as exc:
        raise WorkerError(f"verify worker wrote no valid report: {exc}") from None
    if report is None:
        raise WorkerError("verify worker wrote no report")
    return report


def _base() -> Path:
    base = tempfile.gettempdir()
    return Path(base if len(base) <= MAX_SOCKET_DIR else "/tmp")


def _private_folder(path: Path) -> None:
    """Make ``path`` (mode 0700), or check that it is already this user's private folder."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        info = path.lstat()
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                or info.st_mode & 0o077):
            raise WorkerError(f"{path} is not a private folder of this user: not used for "
                              "SSH connections") from None


class SshConnections:
    """A private folder (mode 0700) of SSH control sockets, made by the first verify that
    uses it (so a daemon that never verifies leaves nothing); ``close()`` ends the masters."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _base() / f"gitops-ssh-{os.getpid()}-{secrets.token_hex(6)}"

    @staticmethod
    def prune() -> list[Path]:
        """Close and remove the folders of processes that are gone (a daemon killed with
        ``kill -9`` could not); return them."""
        removed = []
        for folder in _base().glob("gitops-ssh-*-*"):
            pid = folder.name.split("-")[2]
            try:
                mine = folder.lstat().st_uid == os.getuid()
            except OSError:
                continue
            if mine and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                SshConnections(folder).close()
                removed.append(folder)
        return removed

    def close(self) -> None:
        """Ask every master to exit, then remove the folder."""
        if not self.path.is_dir():
            return
        for socket in self.path.iterdir():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "gitops-host"],
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> SshConnections:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
