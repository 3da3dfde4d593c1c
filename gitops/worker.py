"""Run one worker process: send a JSON job on stdin, relay progress, return its JSON result.

Used by the stage modules (``apply``, ``verify``) so the long-lived process never imports
pyinfra or testinfra. A crash or a timeout becomes a ``WorkerError`` with the last lines the
worker printed; nothing is left running.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable

from gitops.errors import WorkerError

Progress = Callable[[str], None]


def run_worker(
    module: str, job: str, *, timeout: float, on_progress: Progress | None = None
) -> str:
    """Run ``python -m <module>`` with ``job`` on stdin; return what it wrote on stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: deque[str] = deque(maxlen=20)

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            if on_progress is not None:
                on_progress(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(job, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise WorkerError(f"{module} timed out after {timeout:.0f} s") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(timeout=5)
    if proc.returncode != 0 or not out.strip():
        detail = " | ".join(list(tail)[-5:]) or f"exit {proc.returncode}"
        raise WorkerError(f"{module} failed (exit {proc.returncode}): {detail}")
    return out
