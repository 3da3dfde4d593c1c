"""Serving an app: the listening socket, uvicorn over it within the HTTP limits and the
transport (TLS, trusted proxies), in the main thread (``serve``) or a thread of its own
(``start_in_thread``, ``stop``). Logs as ``gitops.web.server``, the server it runs."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

from gitops.errors import UsageError
from gitops.web.limits import ClientLimit, HttpLimits, protocol
from gitops.web.weblisten import Transport

__all__ = ["bind", "bound_port", "parse_listen", "serve", "start_in_thread", "stop"]

log = logging.getLogger("gitops.web.server")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9469`` for IPv6) as a pair; ``UsageError`` if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"listen address {listen!r}: expected host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on ``listen`` (port 0: any free port); ``UsageError`` if it fails."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0, as socket.create_server leaves it): asyncio sets TCP_NODELAY
    # only on such sockets, and without it a kept-alive client waits ~40 ms per answer for
    # the delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def _server(app: Starlette, sock: socket.socket, limits: HttpLimits) -> uvicorn.Server:
    """uvicorn over ``sock`` within ``limits``; TLS and trusted proxies from the
    ``Transport`` that ``create_app`` kept in the app's state (none for another app: plain
    HTTP, no proxy)."""
    host, port = sock.getsockname()[:2]
    transport = getattr(app.state, "transport", None) or Transport()
    transport.check()
    for line in transport.describe():
        log.info("http %s: %s", f"{host}:{port}", line)
    config = uvicorn.Config(
        ClientLimit(app, limits),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # leave the daemon's logging setup alone
        access_log=False,
        lifespan="off",
        server_header=False,
        **transport.uvicorn_options(),
        limit_concurrency=limits.connections,
        timeout_keep_alive=limits.keep_alive,
        http=protocol(limits),
    )
    return uvicorn.Server(config)


def _run(server: uvicorn.Server, sock: socket.socket, stop_event: threading.Event | None) -> None:
    if stop_event is not None:

        def watch() -> None:
            stop_event.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="gitops-http-stop", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve(app: Starlette, listen: str, stop_event: threading.Event | None = None,
          limits: HttpLimits = HttpLimits()) -> None:
    """Serve ``app`` on ``listen`` until ``stop_event`` is set (or, in the main thread, a signal),
    within ``limits`` (``gitops.web.limits``).

    In the main thread uvicorn handles SIGINT/SIGTERM itself; the daemon, which has its own
    SIGTERM handling, should rather use ``start_in_thread``.
    """
    sock = bind(listen)
    try:
        server = _server(app, sock, limits)
    except BaseException:
        sock.close()
        raise
    _run(server, sock, stop_event)


def start_in_thread(
    app: Starlette, listen: str, *, timeout: float = 10.0, limits: HttpLimits = HttpLimits()
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``app`` from a daemon thread, within ``limits`` (``gitops.web.limits``); returns
    once it accepts connections.

    The address is bound here, so a port in use raises ``UsageError`` in the caller. Stop it
    with ``stop(server, thread)``; ``bound_port(server)`` tells the port when ``listen`` ends
    in ``:0``.
    """
    sock = bind(listen)
    try:
        server = _server(app, sock, limits)
    except BaseException:
        sock.close()
        raise
    thread = threading.Thread(
        target=_run, args=(server, sock, None), name="gitops-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if not server.started:
        server.should_exit = True
        thread.join(timeout=5)
        raise UsageError(f"the HTTP server on {listen} did not start")
    return server, thread


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port a started server listens on."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


def stop(server: uvicorn.Server, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Ask the server to finish its open requests and exit; wait for its thread."""
    server.should_exit = True
    thread.join(timeout=timeout)
