"""Stage 5, verify: run each service's testinfra checks on its hosts, return a VerifyReport.

Called by the reconcile after apply (and by ``gitops verify``). The checks run in a worker
process (``gitops.workers.verify_worker``), one per call, because testinfra and pytest keep
process-global state; this module only starts it, feeds it the declared state as JSON and
reads the report back. It never imports testinfra or pytest itself.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from gitops.errors import WorkerError
from gitops.model import DeclaredState
from gitops.records import VerifyReport
from gitops.worker import run_worker

__all__ = ["verify"]

WORKER = "gitops.workers.verify_worker"


def verify(
    state: DeclaredState,
    *,
    timeout: float = 600,
    on_progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Run the checks of every service on every host of ``state``, in a worker process.

    ``on_progress`` is called (in this thread) with one line per host as it finishes.
    Raises WorkerError, with the worker's last stderr lines, if it crashes or takes longer
    than ``timeout`` seconds (it is then killed with its SSH clients).
    """
    out = run_worker(WORKER, state.model_dump_json(), timeout=timeout, on_progress=on_progress)
    try:
        return VerifyReport.model_validate_json(out)
    except ValidationError as exc:
        raise WorkerError(f"verify worker wrote no valid report: {exc}") from None
