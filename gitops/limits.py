"""What one client can make the daemon's HTTP server hold.

``ClientLimit`` wraps the app uvicorn serves (``gitops.server``): a client address with
``per_client`` requests in flight gets ``429 Too Many Requests`` with ``Retry-After`` for the
next one, while other clients are served. ``/healthz`` is not counted, so a monitor is
answered whatever a client does. The connection limits (``HttpLimits``) are uvicorn's own:
at most ``connections`` connections and requests at once (more get 503), idle kept-alive
connections closed after ``keep_alive`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["UNLIMITED_PATHS", "ClientLimit", "HttpLimits"]

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
