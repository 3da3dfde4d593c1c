"""How the daemon's HTTP server meets the network: TLS and the proxies it believes.

``Transport.of(settings)`` is what ``gitops.web.server`` hands uvicorn: HTTPS with ``tls_cert`` /
``tls_key`` (checked when the daemon starts, so a wrong file fails there with its name), and
``X-Forwarded-For`` / ``X-Forwarded-Proto`` read only from the ``trusted_proxies`` the settings
name. uvicorn's own default (trust 127.0.0.1, or whatever ``FORWARDED_ALLOW_IPS`` says) is
never used: the options are always passed explicitly. ``describe`` is the line logged at start.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops.errors import UsageError
from gitops.settings import Settings

__all__ = ["Transport"]


@dataclass(frozen=True)
class Transport:
    """TLS files (both or neither) and the trusted proxies' addresses or networks."""

    trusted_proxies: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> Transport:
        return cls(tuple(settings.trusted_proxies), settings.tls_cert, settings.tls_key)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def check(self) -> None:
        """``UsageError`` naming the file when the certificate or key cannot be loaded."""
        if self.tls_cert is None or self.tls_key is None:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except OSError as exc:
            raise UsageError(f"tls_cert {self.tls_cert} / tls_key {self.tls_key}: "
                             f"{exc.strerror or exc}") from None
        except ssl.SSLError:
            raise UsageError(f"tls_cert {self.tls_cert} / tls_key {self.tls_key}: not a PEM "
                             "certificate and its private key") from None

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keywords: proxy headers only from the named proxies."""
        options: dict[str, Any] = {
            "proxy_headers": bool(self.trusted_proxies),
            "forwarded_allow_ips": list(self.trusted_proxies),
        }
        if self.tls_cert is not None and self.tls_key is not None:
            options["ssl_certfile"] = str(self.tls_cert)
            options["ssl_keyfile"] = str(self.tls_key)
        return options

    def describe(self) -> list[str]:
        """What the server does with TLS and forwarded headers, for the start log."""
        lines = [f"HTTPS with {self.tls_cert}" if self.tls_cert is not None else
                 "plain HTTP (no tls_cert): end TLS in a proxy in front beyond loopback"]
        if self.trusted_proxies:
            lines.append("X-Forwarded-For/-Proto believed from trusted_proxies: "
                         + ", ".join(self.trusted_proxies))
        else:
            lines.append("X-Forwarded-For/-Proto ignored (no trusted_proxies)")
        if os.environ.get("FORWARDED_ALLOW_IPS"):
            lines.append("FORWARDED_ALLOW_IPS is set and ignored: name proxies in "
                         "trusted_proxies")
        return lines
