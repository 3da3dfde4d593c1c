"""Stage 5, verify: run each service's testinfra checks on its hosts, return a VerifyReport.

Called by the reconcile after apply (and by ``gitops verify``). The checks run in a worker
process (``gitops.workers.verify_worker``), one per call, because testinfra and pytest keep
process-global state; this module only starts it, feeds it the declared state as JSON and
reads the report back. It never imports testinfra or pytest itself.

``SshConnections`` is the daemon's folder of kept SSH connections: verifies given it leave
each host's connection open (an OpenSSH control master) for the next one, as Ansible's
ControlPersist does, so a drift check costs a session per host, not an SSH handshake.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from gitops.errors import WorkerError
from gitops.model import DeclaredState
from gitops.records import VerifyReport
from gitops.worker import run_worker

__all__ = ["SshConnections", "verify"]

WORKER = "gitops.workers.verify_worker"
MAX_SOCKET_DIR = 60
"""A control socket path (folder + 40-character hash) must fit in 108 bytes."""


def verify(
    state: DeclaredState,
    *,
    timeout: float = 600,
    on_progress: Callable[[str], None] | None = None,
    connections: Path | None = None,
) -> VerifyReport:
    """Run the checks of every service on every host of ``state``, in a worker process.

    ``on_progress`` is called (in this thread) with one line per host as it finishes.
    ``connections``: a folder from ``SshConnections`` to keep (and reuse) SSH connections in.
    Raises WorkerError, with the worker's last stderr lines, if it crashes or takes longer
    than ``timeout`` seconds (it is then killed with its SSH clients).
    """
    job = json.dumps({"state": state.model_dump(mode="json"),
                      "control_dir": str(connections) if connections else None})
    out = run_worker(WORKER, job, timeout=timeout, on_progress=on_progress)
    try:
        return VerifyReport.model_validate_json(out)
    except ValidationError as exc:
        raise WorkerError(f"verify worker wrote no valid report: {exc}") from None


class SshConnections:
    """A private folder (mode 0700) of SSH control sockets; ``close()`` ends the masters."""

    def __init__(self) -> None:
        base = tempfile.gettempdir()
        self.path = Path(tempfile.mkdtemp(
            prefix="gitops-ssh-", dir=base if len(base) <= MAX_SOCKET_DIR else "/tmp"))

    def close(self) -> None:
        """Ask every master to exit, then remove the folder."""
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
