"""Warm workers: per worker module, a server that imported it once and forks a child per job.

``gitops.pipeline.worker.run_worker`` asks ``spawn`` for a process of a module before it starts
``python -m <module>``: the first ask starts that module's server (``gitops.workers.forkserver``,
kept for this process's life; ``prestart`` starts them ahead), and every job is a child forked
from it, which pays no interpreter start and no import of pyinfra or testinfra. Each child is a
fresh copy of a server that never ran a job: no state passes from one run to the next. The
child gets the job's environment and this process's working directory, as a fresh worker would.

``GITOPS_WARM_WORKERS=0`` turns it off (every worker starts fresh); a server that cannot start
(its module fails to import, a kernel without pidfd) is reported once in the log and its jobs
start fresh. A server ends when this process closes its end of the socket to it, at exit or
killed: it kills its children's process groups, so nothing is left applying.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

__all__ = ["ENV", "SERVER", "WarmProcess", "enabled", "prestart", "ready", "servers", "shutdown",
           "spawn"]

log = logging.getLogger(__name__)

ENV = "GITOPS_WARM_WORKERS"
"""Set to 0 (or false, no, off): every worker starts as a fresh process."""
SERVER = "gitops.workers.forkserver"
READY_TIMEOUT = 120.0
"""How long a job waits for its module's server to import the module (then: a fresh start)."""
ANSWER_TIMEOUT = 30.0


def enabled() -> bool:
    """Whether warm workers are on (``GITOPS_WARM_WORKERS``, default on)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class WarmProcess:
    """A child of a warm server, as much of ``subprocess.Popen`` as ``run_worker`` uses: its
    pid (the leader of its own process group), its pipes, ``poll``, ``wait``; and ``release``,
    which lets its server reap it (its pid stays its until then)."""

    def __init__(self, pid: int, answer: socket.socket, stdin: IO[bytes], stdout: IO[bytes],
                 stderr: IO[bytes]) -> None:
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._answer = answer
        self._server_gone = False

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_exit(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._read_exit(timeout):
            raise subprocess.TimeoutExpired(f"warm worker {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill_group(self) -> None:
        """SIGKILL its process group (not once its server is gone: the pid may be reused)."""
        if not self._server_gone:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def release(self) -> None:
        self._answer.close()

    def _read_exit(self, timeout: float | None) -> bool:
        self._answer.settimeout(timeout)
        try:
            line = _line(self._answer)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            line = ""
        if line.startswith("exit "):
            self.returncode = int(line.removeprefix("exit "))
        else:  # the server died: its child got SIGTERM (PR_SET_PDEATHSIG)
            self._server_gone = True
            self.returncode = -signal.SIGTERM
        return True


def _line(sock: socket.socket) -> str:
    """One line of a server's answer socket ("" at its end); the server writes each line in
    one write of a few bytes, read here a byte at a time so nothing after it is taken."""
    got = bytearray()
    while not got.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            return ""
        got += byte
    return got[:-1].decode()


class _Server:
    """One module's server, started at once, ready once it has imported the module."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.ready = False
        self.started = time.monotonic()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = mine
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", SERVER, module, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.proc = None
            self._fail(f"cannot start: {exc}")
        finally:
            theirs.close()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the server is ready, waiting for it at most ``timeout`` seconds; a server
        that failed, or did not get ready within ``READY_TIMEOUT`` of its start, is closed
        for good."""
        with self.lock:
            if self.ready or self.failed:
                return self.ready
            left = READY_TIMEOUT - (time.monotonic() - self.started)
            self.sock.settimeout(max(0.0, min(timeout, left)))
            try:
                answer = self.sock.recv(4096).decode(errors="replace")
            except (TimeoutError, BlockingIOError):
                if timeout < left:
                    return False  # this job's time is up first: the server may serve the next
                answer = f"error not ready after {READY_TIMEOUT:g}s"
            except OSError as exc:
                answer = f"error {exc}"
            if answer == "ready":
                self.ready = True
            else:
                self._fail(answer.removeprefix("error ") or "ended before it was ready")
            return self.ready

    def spawn(self, env: dict[str, str]) -> WarmProcess | None:
        """A child for one job, or None (then the job starts fresh: nothing was started)."""
        try:
            header = json.dumps({"env": env, "cwd": os.getcwd()}).encode()
        except (OSError, ValueError):
            return None
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs_fds = [stdin_r, stdout_w, stderr_w]
        try:
            socket.send_fds(self.sock, [header], [*theirs_fds, theirs.fileno()])
            mine.settimeout(ANSWER_TIMEOUT)
            answer = _line(mine)
        except OSError as exc:
            answer = ""
            if exc.errno != errno.EMSGSIZE:  # an environment too large: this job alone
                self._fail(f"lost: {exc}")
        finally:
            theirs.close()
            for fd in theirs_fds:
                os.close(fd)
        if not answer.startswith("pid "):
            # the job was never sent: a child forked before its server died reads an empty
            # stdin and ends (and got SIGTERM with its server)
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            mine.close()
            if not self.failed:
                self._fail("ended")
            return None
        return WarmProcess(int(answer.removeprefix("pid ")), mine, os.fdopen(stdin_w, "wb"),
                           os.fdopen(stdout_r, "rb"), os.fdopen(stderr_r, "rb"))

    def _fail(self, why: str) -> None:
        if self.failed is None:
            log.warning("warm %s unavailable (%s): its workers start fresh", self.module, why)
        self.failed = why
        self.close()

    def close(self) -> None:
        self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_servers: dict[str, _Server] = {}
_owner = os.getpid()
_lock = threading.Lock()


def _server(module: str) -> _Server:
    global _owner
    with _lock:
        if _owner != os.getpid():  # a forked copy of the owner: the servers are not its own
            _servers.clear()
            _owner = os.getpid()
        if module not in _servers:
            _servers[module] = _Server(module)
        return _servers[module]


def prestart(modules: list[str]) -> None:
    """Start the servers of ``modules`` now (they import in the background, on another core):
    a command that will run them hides their start behind its fetch and load."""
    if enabled():
        for module in modules:
            _server(module)


def spawn(module: str, env: dict[str, str], timeout: float) -> WarmProcess | None:
    """A process of ``module`` forked from its warm server, None when warm workers are off
    or its server cannot serve, or is not ready within ``timeout`` (then start one fresh)."""
    if not enabled():
        return None
    server = _server(module)
    if not server.wait_ready(timeout):
        return None
    return server.spawn(env)


def ready(module: str, timeout: float = READY_TIMEOUT) -> int | None:
    """Start ``module``'s server if need be and wait until it is ready: its pid, or None
    (warm workers off, or it cannot serve). For benchmarks and tests."""
    if not enabled():
        return None
    server = _server(module)
    if not server.wait_ready(timeout) or server.proc is None:
        return None
    return server.proc.pid


def servers() -> dict[str, int]:
    """The running servers' pids by module (for tests and benchmarks)."""
    with _lock:
        return {m: s.proc.pid for m, s in _servers.items()
                if s.proc is not None and not s.failed and s.proc.poll() is None}


def shutdown() -> None:
    """End every server (each kills its children's process groups); later jobs start new
    ones. Run at exit."""
    with _lock:
        ending = list(_servers.values()) if _owner == os.getpid() else []
        _servers.clear()
    for server in ending:
        server.close()


atexit.register(shutdown)
