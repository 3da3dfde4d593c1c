"""Receivers on 127.0.0.1 that play the notification services this machine cannot reach, each
request checked against the service's documented format (``problems`` lists what broke it),
and a real SMTP server (aiosmtpd) that receives e-mail.

Formats (what a request must look like to be accepted):

- Microsoft Teams, Workflows ("Post to a channel when a webhook request is received"):
  ``POST /workflows/<id>/triggers/manual/paths/invoke?api-version=..&sig=..`` over HTTPS, JSON
  ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", "version",
  "body": [TextBlock...]}}]}``; answers 202.
- Mattermost incoming webhooks (developers.mattermost.com/integrate/webhooks/incoming):
  ``POST /hooks/<key>``, JSON with ``text`` (required) and optional ``channel``, ``username``,
  ``icon_url``, ``icon_emoji``, ``attachments``, ``props``, ``type``; answers ``200 ok``.
- ntfy publishing (docs.ntfy.sh/publish): ``POST``/``PUT /<topic>`` with the message as the
  body and ``Title``/``X-Title``, ``Priority``/``X-Priority``, ``Tags``/``X-Tags`` headers, or
  ``POST /`` with JSON ``{"topic", "message", "title", "priority", "tags", ...}``; a topic is
  ``[-_A-Za-z0-9]{1,64}``; answers 200 with the message as JSON.
- Alertmanager API v2 (its OpenAPI spec, ``postAlerts``): ``POST /api/v2/alerts``, a JSON
  array of ``{"labels" (required, string values), "annotations", "startsAt", "endsAt",
  "generatorURL"}``, times RFC 3339; answers 200.
- Grafana HTTP API, "Create Annotation": ``POST /api/annotations``, ``Authorization: Bearer
  <token>``, JSON with ``text`` (required), ``time`` (epoch ms), ``tags`` (strings), and
  optional ``dashboardUID``, ``panelId``, ``timeEnd``; answers 200 ``{"message":
  "Annotation added", "id": n}``, 401 without a valid token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import ssl
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from builders import free_port

__all__ = ["HttpReceiver", "Request", "SmtpReceiver", "problems_of", "self_signed"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class HttpReceiver:
    """Records every request; answers ``script``'s statuses first, then each kind's own."""

    kind: str
    token: str = ""
    cert: tuple[Path, Path] | None = None
    script: deque[int] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        request = Request(h.command, parts.path, urllib.parse.parse_qs(parts.query),
                          {k.lower(): v for k, v in h.headers.items()}, raw)
        self.requests.append(request)
        if self.script:
            status, body = self.script.popleft(), b'{"error": "scripted"}'
        else:
            found = problems_of(self.kind, request, token=self.token)
            self.problems += found
            status, body = (400, json.dumps(found).encode()) if found else _ok(self.kind)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def _ok(kind: str) -> tuple[int, bytes]:
    return {"teams": (202, b""), "mattermost": (200, b"ok"),
            "ntfy": (200, b'{"id": "abc", "event": "message"}'),
            "grafana": (200, b'{"message": "Annotation added", "id": 1}')
            }.get(kind, (200, b""))


_TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")


def _time(value: Any) -> bool:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def problems_of(kind: str, r: Request, *, token: str = "", key: str = "") -> list[str]:
    """What in ``r`` breaks ``kind``'s documented request format (empty: none)."""
    out: list[str] = []
    ctype = r.headers.get("content-type", "")
    if kind == "teams":
        if not re.fullmatch(r"/workflows/[^/]+/triggers/manual/paths/invoke", r.path):
            out.append(f"teams: path {r.path}")
        if "sig" not in r.query or "api-version" not in r.query:
            out.append("teams: no sig or api-version")
        body = r.json()
        att = body.get("attachments") or [{}]
        content = att[0].get("content", {})
        if body.get("type") != "message" or att[0].get("contentType") != \
                "application/vnd.microsoft.card.adaptive" or \
                content.get("type") != "AdaptiveCard" or not content.get("version") or \
                not all(b.get("type") in ("TextBlock", "Image") for b in content.get("body", [])):
            out.append("teams: not an adaptive card message")
    elif kind == "mattermost":
        allowed = {"text", "channel", "username", "icon_url", "icon_emoji", "attachments",
                   "props", "type", "priority"}
        body = r.json() if "json" in ctype else {}
        if not re.fullmatch(r"/hooks/[A-Za-z0-9]+", r.path) or not body.get("text") or \
                set(body) - allowed:
            out.append(f"mattermost: {r.path} {sorted(body)}")
    elif kind == "ntfy":
        if r.path == "/":
            body = r.json()
            if not _TOPIC.match(str(body.get("topic", ""))) or "message" not in body:
                out.append(f"ntfy: JSON {sorted(body)}")
        elif not _TOPIC.match(r.path.lstrip("/")):
            out.append(f"ntfy: topic {r.path}")
    elif kind == "alertmanager":
        body = r.json()
        if r.path != "/api/v2/alerts" or not isinstance(body, list) or not body:
            out.append(f"alertmanager: {r.path} {type(body).__name__}")
        for a in body if isinstance(body, list) else []:
            labels = a.get("labels")
            if not isinstance(labels, dict) or not labels or \
                    not all(isinstance(v, str) for v in labels.values()):
                out.append("alertmanager: labels")
            if set(a) - {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}:
                out.append(f"alertmanager: fields {sorted(a)}")
            if any(k in a and not _time(a[k]) for k in ("startsAt", "endsAt")):
                out.append("alertmanager: a time not RFC 3339")
    elif kind == "grafana":
        body = r.json()
        if r.path != "/api/annotations" or r.headers.get("authorization") != f"Bearer {token}":
            out.append(f"grafana: {r.path} or its token")
        if not isinstance(body.get("text"), str) or not isinstance(body.get("time"), int) or \
                not all(isinstance(t, str) for t in body.get("tags", [])) or \
                set(body) - {"text", "time", "timeEnd", "tags", "dashboardUID", "panelId"}:
            out.append(f"grafana: body {sorted(body)}")
    elif kind == "webhook":
        if "json" not in ctype or "x-gitops-event" not in r.headers:
            out.append("webhook: headers")
        if key:
            want = "sha256=" + hmac.new(key.encode(), r.raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(r.headers.get("x-gitops-signature", ""), want):
                out.append("webhook: signature does not match the body")
    return out


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1; ``messages``: what it received."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        receiver = self
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                receiver.messages.append(message_from_bytes(envelope.original_content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, in ``folder`` (for the HTTPS-only services)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
