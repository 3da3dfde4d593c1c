"""What one client can make the daemon's HTTP server hold.

``ClientLimit`` wraps the app uvicorn serves (``gitops.web.server``): a client address with
``per_client`` requests in flight gets ``429 Too Many Requests`` with ``Retry-After`` for the
next one, while other clients are served. ``/healthz`` is not counted, so a monitor is
answered whatever a client does. The connection limits (``HttpLimits``) are uvicorn's own:
at most ``connections`` connections and requests at once (more get 503), idle kept-alive
connections closed after ``keep_alive`` seconds; ``protocol`` adds what uvicorn lacks: a
connection whose request line and headers have not all arrived ``request_head`` seconds after
it opened (or after its previous answer) is closed, so clients that connect and send nothing,
or send their headers a byte at a time, cannot hold the connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["UNLIMITED_PATHS", "ClientLimit", "HttpLimits", "protocol"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

UNLIMITED_PATHS = frozenset({"/healthz"})
"""Paths no client limit applies to: cheap answers a monitor must always get."""


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP server's limits (``gitops run`` takes ``per_client`` from the settings'
    ``max_client_requests``)."""

    per_client: int = 16
    """Requests one client address may have in flight; more get 429."""
    connections: int = 256
    """Connections and requests the server holds at once; more get 503 (uvicorn's
    ``limit_concurrency``)."""
    keep_alive: int = 5
    """Seconds an idle kept-alive connection stays open (uvicorn's ``timeout_keep_alive``)."""
    retry_after: int = 1
    """Seconds a refused client is told to wait (``Retry-After``)."""
    request_head: float = 10.0
    """Seconds a connection has to send a whole request line and headers, from its opening
    or its previous answer; past it, it is closed."""


class ClientLimit:
    """ASGI middleware: at most ``limits.per_client`` requests in flight per client address
    (the address uvicorn gives, after any trusted proxy's header)."""

    def __init__(self, app: App, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits
        self._inflight: dict[str, int] = {}  # touched only from the event loop's thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = str(client[0]) if client else ""
        count = self._inflight.get(key, 0)
        if count >= self.limits.per_client:
            await self._refuse(send)
            return
        self._inflight[key] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self._inflight[key] - 1
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": f"more than {self.limits.per_client} requests at once "
                                    "from this address: retry later"}).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.limits.retry_after).encode()),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body", "body": body})


def protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the ``request_head`` deadline (for ``uvicorn.Config``'s
    ``http``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    deadline_s = limits.request_head

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_for: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._waiting_for:
                self._disarm()  # a request's head arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_for = self.cycle
            self._deadline = self.loop.call_later(deadline_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            answering = self.cycle is not None and not self.cycle.response_complete
            if self.cycle is self._waiting_for and not answering \
                    and not self.transport.is_closing():
                self.transport.close()

    return Protocol
