"""The checks' connection to a host inside the apply worker: the apply's own SSH connection.

``ChannelBackend`` is ``gitops.workers.verify_shell.ShellBackend`` with its remote shell in a
session (a channel) of the SSH connection pyinfra's connector already holds to the host
(``gitops.workers.connector.ShellConnector``), not in an ``ssh`` client of its own: a
reconcile's verify costs the host no second SSH handshake, no second login and the
controller no ``ssh`` process. The shell, the commands and their results are the same as
with ``ShellBackend`` (bash if present, each command ``( eval 'cmd' ) </dev/null``, a
command repeated within the pass answered from its first result). Runs only in the apply
worker (gevent: a read waits cooperatively, other hosts' checks go on meanwhile).
"""

from __future__ import annotations

import contextlib
from typing import Any

import gevent
import testinfra.host

from gitops.workers.verify_shell import LOGIN_SHELL, ShellBackend, marker_at

__all__ = ["ChannelBackend", "connect_over"]


class ChannelBackend(ShellBackend):
    """``ShellBackend`` over a channel of an open paramiko ``Transport``."""

    def __init__(self, name: str, transport: Any) -> None:
        super().__init__(name)
        self._transport = transport
        self._channel: Any = None

    def _exchange(self, script: bytes, out: bytearray, err: bytearray) -> None:
        channel = self._channel
        if channel is None or channel.closed or channel.exit_status_ready():
            if not self._transport.is_active():
                raise EOFError
            channel = self._channel = self._transport.open_session()
            channel.exec_command(LOGIN_SHELL)
        channel.sendall(script)
        readers = [gevent.spawn(_read_until, channel.recv, out, self._token + b" "),
                   gevent.spawn(_read_until, channel.recv_stderr, err, self._token)]
        gevent.joinall(readers)
        for reader in readers:
            if not reader.successful():
                for other in readers:
                    other.kill()
                raise EOFError

    def _lost(self, cmd: str, stderr: bytes) -> Any:
        self._close_channel()
        raise RuntimeError(self.result(255, self.encode(cmd), b"", stderr))

    def close(self) -> None:
        """End this shell's session; the connection stays (pyinfra's connector ends it)."""
        self._close_channel()

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()


def _read_until(recv: Any, into: bytearray, token: bytes) -> None:
    """Read from ``recv`` into ``into`` until it holds the marker line; EOFError when the
    session ends first."""
    while marker_at(into, token) < 0:
        chunk = recv(65536)
        if not chunk:
            raise EOFError
        into.extend(chunk)


def connect_over(name: str, transport: Any) -> Any:
    """A testinfra Host named ``name`` whose commands run in a session of ``transport``."""
    backend = ChannelBackend(name, transport)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host
