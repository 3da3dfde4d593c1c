"""The running daemon's HTTP API as the commands use it: ask it to act on an environment and
read its runs (``DaemonClient``), at the settings' ``listen`` address, with their token and
TLS certificate. No daemon answering is a value (None), not an error."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitops.errors import TemporaryError, UsageError

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["DaemonClient", "person_token", "token_file"]


def token_file() -> Path:
    """Where the person's own token is kept: ``$XDG_CONFIG_HOME/gitops/token``
    (``~/.config/gitops/token``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gitops" / "token"


def person_token() -> str | None:
    """The token the CLI sends: ``GITOPS_TOKEN``, else the token file (refused unless only
    its owner may read it: chmod 600), else None (the settings' ``api_token``, if any)."""
    from gitops.freetext import problem

    sent = os.environ.get("GITOPS_TOKEN", "").strip()
    path = token_file()
    if not sent:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            return None
        if mode & 0o077:
            raise UsageError(f"token file {path} has mode {mode:04o}: others can read it "
                             f"(chmod 600 {path})")
        try:
            sent = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"token file {path}: {exc}") from None
        where = f"token file {path}"
    else:
        where = "GITOPS_TOKEN"
    if not sent or problem(sent) is not None or " " in sent or not sent.isascii():
        raise UsageError(f"{where}: not a token (one line, no spaces)")
    return sent


class DaemonClient:
    """The running daemon's HTTP API at the settings' ``listen`` address (its token if set)."""

    def __init__(self, s: Settings) -> None:
        from gitops.web.server import parse_listen

        host, self.port = parse_listen(s.listen)
        self.host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.listen = s.listen
        """The address as the settings name it (in messages)."""
        self.tls_cert = s.tls_cert
        """With TLS: the daemon's own certificate, the one trusted (hostnames unchecked)."""
        self.headers = {"Content-Type": "application/json"}
        self.date: str | None = None
        """The Date header of the last answer: the daemon's clock."""
        token = person_token()
        if token is None and s.api_token is not None:
            token = s.api_token.reveal()
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10) -> tuple[int, Any]:
        """(status, JSON answer); ``OSError`` or ``ValueError`` when no daemon answers."""
        import http.client

        conn: http.client.HTTPConnection
        if self.tls_cert is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls_cert))
            context.check_hostname = False  # the listen address, not the certificate's name
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=self.headers)
            response = conn.getresponse()
            self.date = response.getheader("date")
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def answered_at(self) -> datetime | None:
        """The daemon's clock at its last answer (its Date header); None when unknown."""
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(self.date) if self.date else None
        except (TypeError, ValueError):
            return None

    def ask(self, environment: str, action: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST ``action`` for ``environment`` to the daemon's API, as the caller its token
        names (the answer's ``actor``); None when no daemon answers on ``listen``, or when
        it does not watch the environment (act here). A refusal is a ``UsageError`` (exit
        2; 401 and 403 say so), the daemon's own failure a ``TemporaryError``."""
        try:
            status, data = self.call("POST", f"/api/environments/{environment}/{action}",
                                     body)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            data = {}
        if status == 404 and "unknown environment" in str(data.get("error", "")):
            return None  # the daemon does not watch this environment: act here
        if status >= 500:
            raise TemporaryError(f"daemon at {self.listen}: {data.get('error', status)}")
        if status in (401, 403):  # who is calling, or what they may do: exit 2
            raise UsageError(f"daemon at {self.listen} refused ({status}): "
                             f"{data.get('error', status)}")
        if status >= 400:  # refused: a bad request, the environment's state
            raise UsageError(f"daemon at {self.listen}: {data.get('error', status)}")
        return data

    def recent(self, environment: str, limit: int) -> list[dict[str, Any]]:
        """The environment's newest runs (``GET /api/runs``); ``ValueError`` on a bad answer."""
        from urllib.parse import quote

        status, runs = self.call("GET", f"/api/runs?environment={quote(environment)}"
                                        f"&limit={limit}")
        if status in (401, 403):
            raise UsageError(f"daemon at {self.listen} refused ({status}): "
                             f"{runs.get('error') if isinstance(runs, dict) else status}")
        if status != 200 or not isinstance(runs, list):
            raise ValueError(f"GET /api/runs: HTTP {status}")
        return [r for r in runs if isinstance(r, dict) and "id" in r]
