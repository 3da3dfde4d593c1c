"""Browser sign-in to the status page beyond loopback: a random session id in a cookie.

``POST /api/session`` with the API token (JSON ``{"token": "..."}``, as the sign-in form of
``gitops/web/static/signin.js`` sends it, or an ``Authorization: Bearer`` header) answers 204 and
sets the cookie ``gitops_session``: a random id (never the token), ``HttpOnly``,
``SameSite=Strict``, ``Path=/``, ``Max-Age`` of ``session_hours``, and ``Secure`` when the
request came over HTTPS. ``DELETE /api/session`` signs out; ``GET /api/session`` says who
the caller is (``{"name", "groups", "via", "session", "permissions"}``; ``session`` false for
a caller with no session, a script's token or a trusted loopback client; ``permissions``:
environment -> the permissions the caller has there, when the app has a gate).
``gitops.web.oidc`` opens sessions for people. The ids live in this process only
(``Sessions``): a restart of the daemon signs every browser out. No token is ever put in
a URL, a cookie, a log line or an answer.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

Authorize = Callable[[Request], "Response | None"]
"""The gate's rule (``gitops.web.access.Authorize``), named here without importing it."""

__all__ = ["COOKIE", "TOKEN_HOLDER", "Person", "Sessions", "routes"]

COOKIE = "gitops_session"
"""The cookie that carries a signed-in browser's session id."""


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()


@dataclass(frozen=True)
class Person:
    """Who a browser session belongs to: a person ``name`` and ``groups`` as the OpenID
    provider said (``via="oidc"``), or a token's name (``via="token"``: ``api`` for the
    settings' token), which the gate checks again on every request."""

    name: str
    groups: tuple[str, ...] = ()
    via: str = "token"


TOKEN_HOLDER = Person("api")


class Sessions:
    """Signed-in browsers: the hash of each random id with its expiry and person, at most
    ``limit`` (the soonest to expire go first). Safe to share between request threads."""

    def __init__(self, lifetime: float, *, limit: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._open: dict[bytes, tuple[float, Person]] = {}
        self._lock = threading.Lock()

    def open(self, person: Person = TOKEN_HOLDER) -> str:
        """A new session id of ``person``, valid for ``lifetime`` seconds."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._open = {k: v for k, v in self._open.items() if v[0] > now}
            while len(self._open) >= self.limit:
                del self._open[min(self._open, key=lambda k: self._open[k][0])]
            self._open[_digest(session_id)] = (now + self.lifetime, person)
        return session_id

    def person(self, session_id: str | None) -> Person | None:
        """Whose session ``session_id`` is; None unless it was opened here and is valid."""
        if not session_id or len(session_id) > 100:
            return None
        key = _digest(session_id)
        with self._lock:
            found = self._open.get(key)
            if found is not None and found[0] <= self.clock():
                del self._open[key]
                found = None
        return None if found is None else found[1]

    def who(self, session_id: str | None) -> str | None:
        """The name of ``session_id``'s person; None unless it is open here and valid."""
        person = self.person(session_id)
        return None if person is None else person.name

    def valid(self, session_id: str | None) -> bool:
        """Whether ``session_id`` is a session opened here that has not expired."""
        return self.person(session_id) is not None

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._open.pop(_digest(session_id), None)


def _usable(token: str) -> bool:
    return 0 < len(token) <= 4096 and token.isprintable() and token.isascii() \
        and " " not in token


def _with_bearer(request: Request, token: str) -> Request:
    """``request`` as if it had sent ``Authorization: Bearer <token>``."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    headers.append((b"authorization", b"Bearer " + token.encode("latin-1")))
    return Request({**request.scope, "headers": headers,
                    "state": dict(request.scope.get("state", {}))})


def routes(sessions: Sessions, authorize: Authorize | None,
           permissions: Callable[[Request], dict[str, list[str]] | None] | None = None
           ) -> list[BaseRoute]:
    """``POST`` and ``DELETE /api/session`` over ``sessions``; ``authorize`` checks the token
    (None: no token is configured, so nobody can sign in: loopback needs none);
    ``permissions``: what the caller may do per environment (``Gate.permissions_of``), added
    to ``GET /api/session``'s answer as ``permissions`` when given."""

    async def sign_in(request: Request) -> Response:
        if authorize is None:
            return JSONResponse({"error": "no API token is configured: the status page "
                                          "answers loopback clients only"}, status_code=403)
        checked = request
        if "authorization" not in request.headers:
            token = await _token(request)
            if token is None:
                return JSONResponse({"error": "send the API token as {\"token\": ...} or "
                                              "an Authorization: Bearer header"},
                                    status_code=400)
            checked = _with_bearer(request, token)
        refused = await run_in_threadpool(authorize, checked)
        if refused is not None:
            return JSONResponse({"error": "wrong API token"}, status_code=refused.status_code)
        caller = getattr(checked.state, "caller", None)
        response = Response(status_code=204)
        session_id = sessions.open(Person(getattr(caller, "name", "api")))
        response.set_cookie(COOKIE, session_id, max_age=int(sessions.lifetime),
                            httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    async def sign_out(request: Request) -> Response:
        sessions.close(request.cookies.get(COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    async def who(request: Request) -> Response:
        """Who the caller is: a browser's session, else whoever ``authorize`` lets read."""
        person = sessions.person(request.cookies.get(COOKIE))
        session = person is not None
        if person is None and authorize is not None:
            refused = await run_in_threadpool(authorize, request)
            if refused is not None:
                return refused
            caller = getattr(request.state, "caller", None)
            if caller is not None:
                person = Person(caller.name, tuple(getattr(caller, "groups", ())))
        if person is None:
            return JSONResponse({"error": "not signed in"}, status_code=401,
                                headers={"Cache-Control": "no-store"})
        answer: dict[str, Any] = {"name": person.name, "groups": list(person.groups),
                                  "via": person.via, "session": session}
        if permissions is not None:
            answer["permissions"] = await run_in_threadpool(permissions, request) or {}
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    return [Route("/api/session", sign_in, methods=["POST"]),
            Route("/api/session", sign_out, methods=["DELETE"]),
            Route("/api/session", who, methods=["GET"])]


async def _token(request: Request) -> str | None:
    """The ``token`` of a small JSON object body; None when absent or unusable."""
    import json

    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > 8192:
            return None
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and _usable(token) else None
