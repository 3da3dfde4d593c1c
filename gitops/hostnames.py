"""Host names as a Host header or a setting gives them: ``parse_host`` reads ``name``,
``name:port`` or ``[v6]:port`` into (host, port). Shared by the settings' check of
``allowed_hosts`` and the HTTP server's Host rule (``gitops.web.webguard``)."""

from __future__ import annotations

import ipaddress

__all__ = ["parse_host"]


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``1.2.3.4:port`` or ``[v6]:port`` as (host, port); the host
    lower-cased without a trailing dot and IPv6 without brackets. None when malformed."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        host, close, rest = value[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, colon, after = value.partition(":")
        if colon:
            port = after
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        return None
    if not value.startswith("[") and host.endswith("."):
        host = host[:-1]  # the absolute form of a name: the same host
    if not host or not all(c.isalnum() or c in "-._:" for c in host) or not host.isascii():
        return None
    return host, int(port) if port is not None else None
