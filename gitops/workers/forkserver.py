"""A warm worker: a process that has imported one worker module and forks a fresh child per job.

Runs as ``python -m gitops.workers.forkserver <module> <fd>``, started by
``gitops.pipeline.warm`` for one worker module (``gitops.workers.apply_worker``: gevent's
patching and pyinfra; ``gitops.workers.verify_worker``: testinfra). It imports the module once,
then, for each request on the socket ``fd`` (a ``SOCK_SEQPACKET`` socket pair whose other end
only its owner holds), forks a child that runs the module's ``main()`` with the request's
pipes as its standard streams, its environment and its working directory, in a session of its
own. The server itself never runs a job: each child is a fresh copy-on-write copy of a process
that ran none, so nothing of one run's pyinfra or testinfra state (caches of compiled deploy
files, facts, connections) reaches the next.

A request is one message: JSON ``{"env", "cwd"}`` and four descriptors (the child's stdin,
stdout, stderr and a stream socket for the answer). The server answers ``pid <pid>`` on that
socket once forked and ``exit <status>`` when the child ends (``-N``: killed by signal N), as
``subprocess.Popen`` numbers it; the child stays a zombie (its pid and process group cannot be
reused) until the requester closes the answer socket, which it does once done with it (a socket
closed before the child ends: its process group is killed). When the owner's end closes (the
owner ended, even by ``kill -9``), the server kills every child's process group and exits; a
child whose server dies gets SIGTERM (``PR_SET_PDEATHSIG``), as a fresh worker whose owner dies.

The server uses only the standard library's blocking calls, taken before the module is imported
(gevent's ``patch_all`` replaces them in the apply worker's module), so gevent's hub never runs
here; a child calls ``gevent.reinit()`` as ``gevent.os.fork`` would, in case importing made one.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import io
import json
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = ["PARENT_ENV", "Child", "serve"]

PARENT_ENV = "GITOPS_WORKER_PARENT"
"""As ``gitops.pipeline.worker.PARENT_ENV``: the child's parent pid, the server's, for
``die_with_parent``."""
REQUEST_MAX = 1 << 20
_PR_SET_PDEATHSIG = 1

# Taken before the worker module is imported: gevent's patch_all replaces these in their modules.
_close = os.close
_fork = os.fork
_poll = select.poll
_socket = socket.socket
_waitid = os.waitid


@dataclass
class Child:
    """What a forked child runs, returned out of ``serve`` in the child only."""

    module: ModuleType


@dataclass(eq=False)
class _Job:
    pid: int
    pidfd: int
    reply: int
    status: int | None = None


@dataclass
class _Server:
    ctrl: socket.socket
    poller: Any
    jobs: dict[int, _Job] = field(default_factory=dict)
    """By pidfd and by answer socket, each job twice."""

    def close_in_child(self) -> None:
        """Close what is the server's in a forked child (the socket to the owner, the jobs')."""
        self.ctrl.close()
        for fd in self.jobs:
            _close(fd)


def _send(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):  # the requester is gone: its socket closes below
        os.write(fd, line.encode() + b"\n")


def _exit_status(fd: int) -> int | None:
    """The child's status (as ``Popen.returncode``) once it ended, None while it runs; the
    child stays unreaped (its pid and process group are not reused while its job is open)."""
    try:
        info = _waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # not ours to wait for any more: report it gone
        return -signal.SIGKILL
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _finish(server: _Server, job: _Job) -> None:
    """The requester closed its answer socket: kill what is left of the job, reap it."""
    for fd in (job.pidfd, job.reply):
        server.jobs.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            server.poller.unregister(fd)
    if job.status is None:
        _killpg(job.pid)
    with contextlib.suppress(ChildProcessError):  # blocking: a killed child ends at once
        _waitid(os.P_PIDFD, job.pidfd, os.WEXITED)
    _close(job.pidfd)
    _close(job.reply)


def _request(server: _Server) -> tuple[dict[str, Any], list[int]] | None:
    """The next request (None: the owner closed its end); a malformed one is answered by
    closing its descriptors (the requester sees its answer socket end)."""
    fds_size = socket.CMSG_SPACE(4 * 4)
    try:
        data, ancdata, flags, _ = server.ctrl.recvmsg(REQUEST_MAX, fds_size)
    except OSError:  # the owner's end is broken: as closed
        return None
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder)
                       for i in range(0, usable, 4))
    if not data and not fds:
        return None
    try:
        request = json.loads(data)
        if (flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 4
                or not isinstance(request.get("env"), dict)
                or not isinstance(request.get("cwd"), str)):
            raise ValueError("malformed request")
    except ValueError:
        for fd in fds:
            _close(fd)
        return {}, []
    return request, fds


def _start_child(server: _Server, module: ModuleType, request: dict[str, Any],
                 fds: list[int]) -> Child | None:
    """Fork a child for ``request``; in the child, return what it runs, in the server None."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # the child's collections leave the server's objects (and their pages) alone
    server_pid = os.getpid()
    pid = _fork()
    if pid == 0:
        _become_child(server, server_pid, request, fds)
        return Child(module)
    for fd in fds[:3]:
        _close(fd)
    reply = fds[3]
    pidfd = os.pidfd_open(pid)
    job = _Job(pid, pidfd, reply)
    server.jobs[pidfd] = server.jobs[reply] = job
    server.poller.register(pidfd, select.POLLIN)
    server.poller.register(reply, select.POLLIN)
    _send(reply, f"pid {pid}")
    return None


def _become_child(server: _Server, server_pid: int, request: dict[str, Any],
                  fds: list[int]) -> None:
    """Make this forked process what ``python -m <module>`` would be for the request."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != server_pid:
        os._exit(1)
    os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            _close(fd)
    server.close_in_child()
    gc.enable()
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[PARENT_ENV] = str(server_pid)
    os.chdir(request["cwd"])
    if sys.path and sys.path[0] != request["cwd"]:
        sys.path[0] = request["cwd"]  # ``-m`` puts the working directory first
    importlib.invalidate_caches()  # files made since the server started
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        gevent.reinit()  # as gevent.os.fork does in its child
    _fresh_streams()


def _fresh_streams() -> None:
    """New ``sys.stdin``/``stdout``/``stderr`` on descriptors 0-2, as a new interpreter makes
    them for pipes (stderr line-buffered, backslashreplace)."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding=encoding, errors=errors)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding=encoding, errors=errors)
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding=encoding, errors="backslashreplace",
                                  line_buffering=True)


def serve(module_name: str, ctrl_fd: int) -> Child | None:
    """Import ``module_name`` and serve requests on ``ctrl_fd`` until its other end closes
    (then None, in the server); in a forked child, what the child runs."""
    ctrl = _socket(fileno=ctrl_fd)
    gc.disable()  # no freed holes in the pages the children share
    try:
        module = importlib.import_module(module_name)
        if not callable(getattr(module, "main", None)):
            raise ImportError(f"{module_name} has no main()")
    except BaseException as exc:  # reported to the owner, whose jobs then start fresh
        with contextlib.suppress(OSError):
            ctrl.send(f"error {type(exc).__name__}: {exc}".encode()[:4000])
        return None
    server = _Server(ctrl, _poll())
    server.poller.register(ctrl.fileno(), select.POLLIN)
    ctrl.send(b"ready")
    while True:
        for fd, _ in server.poller.poll():
            if fd == ctrl.fileno():
                got = _request(server)
                if got is None:
                    _stop(server)
                    return None
                request, fds = got
                if fds and (child := _start_child(server, module, request, fds)) is not None:
                    return child
            elif (job := server.jobs.get(fd)) is None:
                continue
            elif fd == job.pidfd:
                job.status = _exit_status(fd)
                if job.status is not None:
                    server.poller.unregister(fd)
                    _send(job.reply, f"exit {job.status}")
            elif not _readable_end(fd):
                _finish(server, job)


def _readable_end(fd: int) -> bool:
    """Whether the answer socket ``fd`` is still open at the requester's end."""
    try:
        return bool(os.read(fd, 64))
    except OSError:
        return False


def _stop(server: _Server) -> None:
    """The owner is gone: nothing of its jobs may go on applying; each is killed and reaped."""
    for job in set(server.jobs.values()):
        if job.status is None:
            _killpg(job.pid)
        with contextlib.suppress(ChildProcessError):
            _waitid(os.P_PIDFD, job.pidfd, os.WEXITED)


def run(child: Child) -> int | None:
    """The child's job, as ``python -m`` runs it: ``sys.exit(main())``."""
    sys.argv = [getattr(child.module, "__file__", None) or child.module.__name__]
    result: int | None = child.module.main()
    return result


if __name__ == "__main__":
    forked = serve(sys.argv[1], int(sys.argv[2]))
    sys.exit(run(forked) if forked is not None else 0)
