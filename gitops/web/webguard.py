"""The rules every request to the daemon's HTTP server passes first: one ASGI middleware.

``Guard`` sits in front of every route ``gitops.web.server.create_app`` serves (webhooks, the
operator API, metrics, the status page, ``/healthz``):

- **Host** (every route): the ``Host`` header must name an allowed host (``allowed_hosts``;
  default the listen address and ``localhost``, ``127.0.0.1``, ``[::1]``, each with the port
  the server listens on); 400 otherwise. A page whose name was rebound to 127.0.0.1 (DNS
  rebinding) sends its own name and is refused.
- **Cross-site requests** (every method but GET, HEAD and OPTIONS): an ``Origin`` header, when
  sent, must be the server's own origin (same host and port; ``null`` never is), and without
  one ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``: 403 otherwise. A browser sends
  one of them with every cross-origin POST (form or ``fetch``); curl and the CLI send neither.
- **Content-Type** (the same methods): ``application/json``, 415 otherwise; no HTML form can
  send it, and a ``fetch`` from another origin that sets it needs a CORS preflight, which no
  route answers.
- **Forwarded addresses**: without ``trusted_proxies`` uvicorn reads no ``X-Forwarded-*``
  header (``gitops.web.server``), and a request that carries one (a proxy in front nobody named)
  is not taken as a loopback client: ``is_local`` says no.
- **Response headers**: ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``
  on every answer that does not set them itself. No CORS header is ever sent.

Refusals are JSON ``{"error": ...}``; no header value is logged.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gitops.hostnames import parse_host

__all__ = [
    "SAFE_METHODS",
    "Guard",
    "HostRule",
    "default_hosts",
    "is_local",
    "is_loopback",
    "parse_host",
]

log = logging.getLogger("gitops.web.server")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: no Origin or Content-Type rule applies to them."""

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")
_FORWARDED = (b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host")
_UNTRUSTED_FORWARD = "gitops_untrusted_forward"
_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ``::1`` and IPv4-mapped loopback; a name or nothing is not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local(request: Request) -> bool:
    """A loopback client that no unnamed proxy forwarded: what may use the API without a
    token when none is configured."""
    if request.scope.get("state", {}).get(_UNTRUSTED_FORWARD):
        return False
    return is_loopback(request.client.host if request.client else None)


@dataclass(frozen=True)
class HostRule:
    """An allowed Host: ``port`` None is any port; ``this_port``: the port the request came
    in on (the defaults, which must also work when ``listen`` asks for port 0)."""

    host: str
    port: int | None = None
    this_port: bool = False

    def allows(self, host: str, port: int, server_port: int | None) -> bool:
        if host != self.host:
            return False
        if self.this_port:
            return server_port is None or port == server_port
        return self.port is None or port == self.port


def default_hosts(listen: str) -> list[HostRule]:
    """The listen address's host and the loopback names, each with the server's port."""
    host = listen.rpartition(":")[0].strip("[]").lower()
    names = [*([host] if host not in _WILDCARDS else []), *_LOOPBACK_NAMES]
    return [HostRule(name, this_port=True) for name in dict.fromkeys(names)]


def _rules(allowed: Iterable[str]) -> list[HostRule]:
    rules = []
    for entry in allowed:
        parsed = parse_host(entry)
        if parsed is None:
            raise ValueError(f"not a host or host:port: {entry!r}")
        rules.append(HostRule(*parsed))
    return rules


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _default_port(scheme: str) -> int:
    return 443 if scheme in ("https", "wss") else 80


class Guard:
    """The middleware: ``allowed_hosts`` None means ``default_hosts(listen)``;
    ``trusted_proxies``: whether the server reads forwarded headers (from named proxies)."""

    def __init__(self, app: ASGIApp, *, listen: str, allowed_hosts: Sequence[str] | None = None,
                 trusted_proxies: bool = False) -> None:
        self.app = app
        self.hosts = default_hosts(listen) if allowed_hosts is None else _rules(allowed_hosts)
        self.trusted_proxies = trusted_proxies
        self._warned = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            status, message = refused
            await _answer(send, status, message)
            return
        if not self.trusted_proxies and any(_header(scope, h) is not None for h in _FORWARDED):
            scope.setdefault("state", {})[_UNTRUSTED_FORWARD] = True
            if not self._warned.is_set():
                self._warned.set()
                log.warning("a request came through a proxy (X-Forwarded-For or Forwarded) "
                            "but trusted_proxies names none: its client is not taken as "
                            "loopback; name the proxy in trusted_proxies")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) for a request the rules refuse; None to let it through."""
        scheme = str(scope.get("scheme", "http"))
        raw_host = _header(scope, b"host")
        host = parse_host(raw_host) if raw_host is not None else None
        if host is None:
            return 400, "missing or malformed Host header"
        name, port = host[0], host[1] or _default_port(scheme)
        server = scope.get("server")
        server_port = server[1] if server and server[1] is not None else None
        if not any(rule.allows(name, port, server_port) for rule in self.hosts):
            return 400, "Host not allowed: add it to the settings' allowed_hosts"
        if scope["method"] in SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is not None:
            if not _same_origin(origin, name, host[1], scheme):
                return 403, "cross-origin request refused: the Origin is not this server"
        elif (_header(scope, b"sec-fetch-site") or "none").strip().lower() not in (
                "same-origin", "none"):
            return 403, "cross-site request refused (Sec-Fetch-Site)"
        media = (_header(scope, b"content-type") or "").partition(";")[0].strip().lower()
        if media != "application/json":
            return 415, "Content-Type must be application/json"
        return None


def _same_origin(origin: str, host: str, port: int | None, scheme: str) -> bool:
    """``origin`` is ``scheme://host[:port]`` of this very server: the Host's name and port,
    the request's scheme (or https: TLS ended by a proxy in front). A Host without a port
    (a proxy's ``$host``) matches an origin without one, whatever the scheme."""
    origin_scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or origin_scheme not in (scheme, "https") or "/" in rest:
        return False
    parsed = parse_host(rest)
    if parsed is None:
        return False
    if parsed[0] != host:
        return False
    if port is None:
        return parsed[1] is None or parsed[1] == _default_port(origin_scheme)
    return (parsed[1] or _default_port(origin_scheme)) == port


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
