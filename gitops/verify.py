"""Stage 5, verify: run each service's testinfra checks on its hosts, return a VerifyReport.

Called by the reconcile after apply (and by ``gitops verify``). The checks run in a worker
process (``gitops.workers.verify_worker``), one per call, because testinfra and pytest keep
process-global state; this module only starts it, feeds it the declared state as JSON and
reads the report back. It never imports testinfra or pytest itself.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

from pydantic import ValidationError

from gitops.errors import WorkerError
from gitops.model import DeclaredState
from gitops.records import VerifyReport

__all__ = ["verify"]

WORKER = "gitops.workers.verify_worker"
PROGRESS_PREFIX = "progress: "
STDERR_TAIL = 20
"""How many of the worker's last stderr lines a WorkerError carries."""


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
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(
        [sys.executable, "-m", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[bytes] = []
    tail: deque[str] = deque(maxlen=STDERR_TAIL)
    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, state.model_dump_json().encode())),
        threading.Thread(target=_read_all, args=(proc.stdout, stdout)),
        threading.Thread(target=_read_lines, args=(proc.stderr, lines)),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    on_progress(line.removeprefix(PROGRESS_PREFIX))
            elif line.strip():
                tail.append(line)
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (queue.Empty, subprocess.TimeoutExpired):
        _kill(proc)
        raise WorkerError(_message(f"verify worker timed out after {timeout:g}s", tail)) from None
    finally:
        if proc.poll() is None:
            _kill(proc)
        for thread in threads:
            thread.join(timeout=5)
    if returncode != 0:
        raise WorkerError(_message(f"verify worker exited with status {returncode}", tail))
    try:
        return VerifyReport.model_validate_json(b"".join(stdout))
    except ValidationError as exc:
        raise WorkerError(_message(f"verify worker wrote no valid report: {exc}", tail)) from None


def _feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(OSError):  # the worker died before reading: reported by its exit
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _read_all(pipe: IO[bytes], into: list[bytes]) -> None:
    into.append(pipe.read())


def _read_lines(pipe: IO[bytes], into: queue.Queue[str | None]) -> None:
    for raw in pipe:
        into.put(raw.decode(errors="replace").rstrip("\n"))
    into.put(None)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the worker and everything in its session (its ssh clients)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _message(summary: str, tail: deque[str]) -> str:
    return "\n".join([summary, *tail]) if tail else summary
