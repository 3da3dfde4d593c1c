"""Sign-in to the status page through an OpenID Connect provider: the one module that speaks
to Authlib (an import-linter contract keeps it so).

``GET /signin/oidc`` sends the browser to the provider's authorization endpoint (the
authorization code flow with PKCE S256, a fresh ``state`` and ``nonce``). What the callback
needs to finish (state, nonce, code verifier) stays here, in memory, bound to the browser by a
random ``gitops_oidc`` cookie (HttpOnly, SameSite=Lax so the provider's redirect carries it,
ten minutes, path ``/signin/oidc``): nothing of it travels in a URL or a cookie's value.
``GET /signin/oidc/callback`` checks state and cookie, exchanges the code (client secret,
code verifier), and has Authlib check the ID token (signature against the provider's keys,
issuer, audience, expiry, nonce). The person's name and groups then open a session of the
status page (``gitops.web.sessions``), and the browser goes to ``/``. Every failure is a short
page with the HTTP status (400 a stale or forged callback, 403 refused by the provider or not
in ``allowed_groups``, 502 the provider unreachable or its answer invalid); never a
traceback, never a token in a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gitops.web.sessions import COOKIE, Person, Sessions

if TYPE_CHECKING:
    from gitops.settings import OidcSettings

__all__ = ["PENDING_COOKIE", "Pending", "routes"]

log = logging.getLogger(__name__)

PENDING_COOKIE = "gitops_oidc"
"""The cookie that binds a sign-in under way to the browser that started it."""

_PATH = "/signin/oidc"
_MAX_CLAIM = 200


@dataclass(frozen=True)
class _Started:
    browser: bytes
    nonce: str
    code_verifier: str
    expires: float


class Pending:
    """Sign-ins under way, by ``state``: at most ``limit``, each for ``lifetime`` seconds.
    Safe to share between request threads."""

    def __init__(self, lifetime: float = 600, *, limit: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._started: dict[str, _Started] = {}
        self._lock = threading.Lock()

    def start(self, state: str, nonce: str, code_verifier: str) -> str:
        """Keep a sign-in under way; the browser's binding (the cookie's value)."""
        browser = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._started = {k: v for k, v in self._started.items() if v.expires > now}
            while len(self._started) >= self.limit:
                del self._started[min(self._started,
                                      key=lambda k: self._started[k].expires)]
            self._started[state] = _Started(_digest(browser), nonce, code_verifier,
                                            now + self.lifetime)
        return browser

    def finish(self, state: str, browser: str | None) -> _Started | None:
        """The sign-in ``state`` started by this ``browser``, once; None if there is none,
        it expired, or another browser started it."""
        with self._lock:
            started = self._started.get(state)
            if started is None or browser is None:
                return None
            if not hmac.compare_digest(started.browser, _digest(browser)):
                return None
            del self._started[state]
        return started if started.expires > self.clock() else None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "replace")).digest()


def _page(status: int, message: str) -> Response:
    body = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gitops: sign '
            'in</title><link rel="stylesheet" href="/static/page.css"></head><body><main>'
            f'<h1>gitops: sign in</h1><p id="signin-problem" role="alert">'
            f'{html.escape(message)}</p><p><a href="/">Back to the status page</a></p>'
            '</main></body></html>')
    return Response(body, status_code=status, media_type="text/html",
                    headers={"Cache-Control": "no-store"})


def _claim_text(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_CLAIM and value.isprintable():
        return value
    return None


def _groups(value: Any) -> tuple[str, ...]:
    """The groups claim as names; anything that is not a short printable string is dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    names = (_claim_text(item) for item in value[:1000])
    return tuple(sorted({name for name in names if name is not None}))


def _client(config: OidcSettings) -> Any:
    """Authlib's Starlette client for the provider (its metadata is read at first use)."""
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    return oauth.register(
        name="gitops",
        client_id=config.client_id,
        client_secret=config.client_secret.reveal(),
        server_metadata_url=f"{config.issuer}/.well-known/openid-configuration",
        client_kwargs={"scope": " ".join(config.scopes), "code_challenge_method": "S256",
                       "timeout": 10},
    )


async def _with_userinfo(client: Any, token: Any, claims: Any) -> dict[str, Any] | None:
    """The ID token's claims completed by the userinfo endpoint (providers that keep the
    profile out of the ID token, as the specification's default does); None if it cannot be
    read or names another subject."""
    try:
        info = await client.userinfo(token=token)
    except Exception as exc:
        log.warning("oidc: the userinfo endpoint failed: %s", type(exc).__name__)
        return None
    if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
        log.warning("oidc: the userinfo answer names another subject than the ID token")
        return None
    return {**info, **claims}


def routes(config: OidcSettings, sessions: Sessions) -> list[BaseRoute]:
    """``GET /signin/oidc`` and its callback, opening sessions in ``sessions``. The client
    secret is read now (a missing secret fails the daemon's start)."""
    client = _client(config)
    pending = Pending()
    allowed = set(config.allowed_groups)

    async def begin(request: Request) -> Response:
        try:
            started = await client.create_authorization_url(config.redirect_url)
        except Exception as exc:  # the provider's metadata: unreachable or not JSON
            log.warning("oidc: the provider %s did not answer its configuration: %s",
                        config.issuer, type(exc).__name__)
            return _page(502, f"the sign-in provider {config.issuer} did not answer; "
                              "try again later")
        browser = pending.start(started["state"], started["nonce"], started["code_verifier"])
        response = RedirectResponse(started["url"], status_code=302)
        response.set_cookie(PENDING_COOKIE, browser, max_age=int(pending.lifetime),
                            httponly=True, samesite="lax", path=_PATH,
                            secure=config.redirect_url.startswith("https:"))
        return response

    async def callback(request: Request) -> Response:
        query = request.query_params
        state = query.get("state", "")
        started = pending.finish(state, request.cookies.get(PENDING_COOKIE)) \
            if 0 < len(state) <= 200 else None
        if started is None:
            return _page(400, "this sign-in is stale or was not started by this browser: "
                              "sign in again")
        if "error" in query:
            reason = _claim_text(query.get("error")) or "refused"
            return _page(403, f"the provider refused the sign-in ({reason})")
        code = query.get("code", "")
        if not 0 < len(code) <= 2000:
            return _page(400, "the provider's answer has no code: sign in again")
        try:
            token = await client.fetch_access_token(
                redirect_uri=config.redirect_url, code=code,
                code_verifier=started.code_verifier)
            claims = await client.parse_id_token(token, nonce=started.nonce)
        except Exception as exc:  # refused code, bad signature, wrong nonce, no answer
            log.warning("oidc: sign-in failed at the token exchange: %s", type(exc).__name__)
            return _page(502, "the provider's answer could not be verified: sign in again")
        if claims is None:
            return _page(502, "the provider sent no ID token")
        if config.name_claim not in claims or config.groups_claim not in claims:
            claims = await _with_userinfo(client, token, claims)
            if claims is None:
                return _page(502, "the provider's userinfo could not be read: sign in again")
        name = _claim_text(claims.get(config.name_claim))
        if name is None:
            return _page(403, f"the provider's ID token has no usable {config.name_claim!r}")
        groups = _groups(claims.get(config.groups_claim))
        if allowed and not allowed.intersection(groups):
            log.info("oidc: %s refused (in none of the allowed groups)", name)
            return _page(403, f"{name} is not in a group allowed to sign in")
        log.info("oidc: %s signed in (groups: %s)", name, ", ".join(groups) or "none")
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(PENDING_COOKIE, path=_PATH)
        response.set_cookie(COOKIE, sessions.open(Person(name, groups, via="oidc")),
                            max_age=int(sessions.lifetime), httponly=True, samesite="strict",
                            path="/", secure=config.redirect_url.startswith("https:"))
        return response

    return [Route(_PATH, begin, methods=["GET"]),
            Route(f"{_PATH}/callback", callback, methods=["GET"])]
