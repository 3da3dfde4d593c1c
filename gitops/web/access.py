"""Who may call a route, and the one prologue every protected route runs first.

``make_authorize`` is the API's access rule (the bearer token when one is configured, else
loopback clients only); ``guarded`` wraps a route in a rule: a refusal is answered as it is,
else the route runs, a plain (non-async) one in the worker thread pool.
"""

from __future__ import annotations

import functools
import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gitops.web.webguard import is_local

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = [
    "Authorize",
    "Endpoint",
    "Handler",
    "error",
    "guarded",
    "loopback_only",
    "make_authorize",
]

Authorize = Callable[[Request], Response | None]
"""An access rule: None to let a request through, else the refusal to send."""

Endpoint = Callable[[Request], Awaitable[Response]]
"""A starlette route's endpoint."""

Handler = Endpoint | Callable[[Request], Response]
"""What ``guarded`` wraps: an endpoint, or a plain function run in the worker threads."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON refusal ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def make_authorize(settings: Settings) -> Authorize:
    """The API's access rule: the bearer token when one is configured, else loopback only.

    Returns None for an allowed request, else the refusal to send. Shared by every route
    the daemon serves (API, metrics, status page); the token is read once, here.
    """
    api_token = settings.api_token.reveal() if settings.api_token is not None else None

    def authorize(request: Request) -> JSONResponse | None:
        if api_token is not None:
            scheme, _, sent = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                sent.strip().encode(), api_token.encode()
            ):
                return None
            return error(401, "missing or wrong API token", {"WWW-Authenticate": "Bearer"})
        if is_local(request):
            return None
        return error(403, "no API token is configured: the API answers loopback clients only")

    return authorize


def loopback_only(message: str) -> Authorize:
    """The rule where no token can be checked: loopback clients only, else 403 ``message``."""

    def check(request: Request) -> Response | None:
        return None if is_local(request) else error(403, message)

    return check


def guarded(
    check: Authorize,
    *,
    exempt: Callable[[Request], bool] | None = None,
    refusal: Callable[[Request, Response], Response] | None = None,
) -> Callable[[Handler], Endpoint]:
    """The route's prologue as a decorator: ask ``check`` first (unless ``exempt`` says the
    request needs no check) and answer its refusal (as ``refusal`` turns it, if given);
    else run the route, a plain function in the worker thread pool so that a slow read
    never blocks the event loop."""

    def wrap(handler: Handler) -> Endpoint:
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            refused = None if exempt is not None and exempt(request) else check(request)
            if refused is not None:
                return refused if refusal is None else refusal(request, refused)
            if is_async:
                return await cast(Endpoint, handler)(request)
            return await run_in_threadpool(cast(Callable[[Request], Response], handler),
                                           request)

        return endpoint

    return wrap
