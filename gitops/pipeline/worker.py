"""Run one worker process: send a JSON job on stdin, relay progress, return its JSON result.

Used by the stage modules (``apply``, ``verify``) so the long-lived process never imports
pyinfra or testinfra. The worker is a child of the module's warm server (``warm``: no
interpreter start, no import) unless it is confined or warm workers are off, then a fresh
``python -m <module>``; either way it runs in a session of its own; stdout (the result) and stderr
(``progress: `` lines, anything else kept as the tail of a failure) are read by separate
threads, so a large result never blocks on a full pipe. A crash or a timeout becomes a
``WorkerError`` with the last lines the worker printed, and nothing is left running.
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
from dataclasses import dataclass
from typing import IO

from gitops.errors import WorkerError
from gitops.pipeline import warm

__all__ = ["PARENT_ENV", "PROGRESS_PREFIX", "STDERR_TAIL", "STOPPED", "STOP_POLL", "Confined",
           "Progress", "die_with_parent", "run_worker"]

Progress = Callable[[str], None]

PROGRESS_PREFIX = "progress: "
"""Workers prefix the stderr lines meant for the user with this."""
STDERR_TAIL = 20


PARENT_ENV = "GITOPS_WORKER_PARENT"


@dataclass(frozen=True)
class Confined:
    """How a worker that runs untrusted code starts (``gitops.pipeline.sandbox``): as ``user`` and
    ``group`` (None: this process's), with only ``env`` (no variable of this process), in
    ``cwd``, with no supplementary group and a umask of 077."""

    env: dict[str, str]
    cwd: str
    user: int | None = None
    group: int | None = None
    python: str = sys.executable
    """The interpreter (the user must be able to run it and import gitops with it)."""


def die_with_parent() -> None:
    """Called first thing in a worker: end (SIGTERM) when the process that started it dies,
    so a killed reconciler leaves no worker applying behind the next one's back."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    expected = os.environ.get(PARENT_ENV)
    if expected and os.getppid() != int(expected):  # the parent died before prctl
        sys.exit(1)


def run_worker(
    module: str, job: str, *, timeout: float, on_progress: Progress | None = None,
    stop: threading.Event | None = None, confined: Confined | None = None,
) -> str:
    """Run ``python -m <module>`` (or its warm server's child) with ``job`` on stdin; return
    what it wrote on stdout.

    ``on_progress`` is called in this thread with each progress line. ``stop`` set: the
    worker is killed within ``STOP_POLL`` seconds (a ``WorkerError``; ``gitops.daemon.fanout``
    stops a share whose claim it can no longer renew). ``confined``: started as it says."""
    deadline = time.monotonic() + timeout
    env = {**(os.environ if confined is None else confined.env), PARENT_ENV: str(os.getpid())}
    name = module.rsplit(".", 1)[-1]
    try:
        proc = (warm.spawn(module, env, timeout) if confined is None else None) or _start(
            module, env, confined)
    except OSError as exc:  # a confined worker's user may lack the right to start it
        if confined is None:
            raise
        raise WorkerError(f"{name} could not start as the sandbox's user: {exc.strerror}: "
                          f"{exc.filename} ([preview] user, python)") from None
    assert proc.stdin and proc.stdout and proc.stderr
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[bytes] = []
    tail: deque[str] = deque(maxlen=STDERR_TAIL)
    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, job.encode()), daemon=True),
        threading.Thread(target=_read_all, args=(proc.stdout, stdout), daemon=True),
        threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        while (line := _next_line(lines, deadline, stop)) is not None:
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    on_progress(line.removeprefix(PROGRESS_PREFIX))
            elif line.strip():
                tail.append(line)
        returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (queue.Empty, subprocess.TimeoutExpired):
        _kill(proc)
        raise WorkerError(_message(f"{name} timed out after {timeout:g}s", tail)) from None
    except _Stopped:
        _kill(proc)
        raise WorkerError(_message(f"{name} {STOPPED}", tail)) from None
    finally:
        if proc.poll() is None:
            _kill(proc)
        for thread in threads:
            thread.join(timeout=5)
        if isinstance(proc, warm.WarmProcess):
            proc.release()
    out = b"".join(stdout).decode()
    if returncode != 0 or not out.strip():
        raise WorkerError(_message(f"{name} exited with status {returncode}", tail))
    return out


def _start(module: str, env: dict[str, str], confined: Confined | None
           ) -> subprocess.Popen[bytes]:
    pipe = subprocess.PIPE
    if confined is None:
        return subprocess.Popen([sys.executable, "-m", module], stdin=pipe, stdout=pipe,
                                stderr=pipe, start_new_session=True, env=env)
    return subprocess.Popen(
        [confined.python, "-m", module], stdin=pipe, stdout=pipe, stderr=pipe,
        start_new_session=True, env=env, cwd=confined.cwd, user=confined.user,
        group=confined.group, extra_groups=[] if confined.user is not None else None,
        umask=0o077)


STOP_POLL = 0.2
STOPPED = "stopped on request"


class _Stopped(Exception):
    pass


def _next_line(lines: queue.Queue[str | None], deadline: float,
               stop: threading.Event | None) -> str | None:
    """The worker's next stderr line (None at its end); ``queue.Empty`` past ``deadline``,
    ``_Stopped`` once ``stop`` is set."""
    while True:
        left = max(0.0, deadline - time.monotonic())
        if stop is None:
            return lines.get(timeout=left)
        if stop.is_set():
            raise _Stopped
        try:
            return lines.get(timeout=min(left, STOP_POLL))
        except queue.Empty:
            if left <= STOP_POLL:
                raise


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


def _kill(proc: subprocess.Popen[bytes] | warm.WarmProcess) -> None:
    """Kill the worker and everything in its session (its ssh clients)."""
    if isinstance(proc, warm.WarmProcess):
        proc.kill_group()
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _message(summary: str, tail: deque[str]) -> str:
    return "\n".join([summary, *tail]) if tail else summary
