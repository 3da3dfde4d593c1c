"""The daemon's HTTP server: webhooks, the operator API and the health endpoint.

The only starlette and uvicorn user. ``gitops run`` builds the app with ``create_app`` over its
``Controller`` (the reconcile loop) and runs it with ``serve`` or ``start_in_thread``; the
monitoring issue adds routes through ``extra_routes``. Controller calls run in a worker thread,
so a slow one never blocks the event loop.

Nothing here logs a request body, a header or a secret: one log line per webhook decision
(logger ``gitops.web.server``) names the environment, the provider and the result.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops import freetext
from gitops.errors import GitopsError, LockHeld, PermanentError, TemporaryError, UsageError
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.limits import ClientLimit, HttpLimits, protocol
from gitops.web.webguard import Guard, is_local
from gitops.web.webhooks import (
    InvalidSignature,
    RecentDeliveries,
    UnsupportedEvent,
    WebhookEvent,
    delivery_id,
    parse_webhook,
    why_ignored,
    why_no_preview,
    why_untrusted,
)
from gitops.web.weblisten import Transport

__all__ = [
    "OPERATIONS",
    "Controller",
    "Previewer",
    "Promoter",
    "bind",
    "bound_port",
    "create_app",
    "parse_listen",
    "serve",
    "start_in_thread",
    "stop",
]

log = logging.getLogger("gitops.web.server")

OPERATIONS = ("suspend", "resume", "rollback", "retry", "unquarantine")
"""Actions the API passes to ``Controller.operate``; ``reconcile`` calls ``trigger``."""


class Controller(Protocol):
    """What the server asks of the daemon. Called from worker threads."""

    def environments(self) -> list[EnvironmentConfig]: ...

    def trigger(self, environment: str, *, reason: str, actor: str,
                force: bool = False) -> bool:
        """True: a reconcile is queued now; False: coalesced into an already pending one.
        ``force`` (with a reason): run outside the maintenance window, recorded."""
        ...

    def operate(
        self,
        environment: str,
        action: str,
        *,
        actor: str,
        reason: str = "",
        revision: str | None = None,
    ) -> dict[str, Any]:
        """Suspend, resume, rollback, retry or unquarantine (``revision``: the quarantined
        sha or a unique prefix); raises ``GitopsError`` subclasses."""
        ...

    def health(self) -> dict[str, Any]: ...

    def status(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class Promoter(Protocol):
    """A controller that promotes between environments (``promote_from``): the daemon."""

    def promote(self, environment: str, *, revision: str, actor: str, reason: str,
                force: bool = False) -> dict[str, Any]:
        """Record an operator's promotion; raises ``GitopsError`` subclasses (a refusal is
        ``promotion.PromotionRefused``)."""
        ...

    def pipeline(self) -> list[dict[str, Any]]:
        """Per environment: applied, verified everywhere, promoted from, what waits."""


class Previewer(Protocol):
    """What the server asks of the daemon's previews (``gitops.daemon.preview.Previews``)."""

    def request(self, config: EnvironmentConfig, *, provider: str, number: int, branch: str,
                base: str, head_sha: str | None) -> dict[str, Any]:
        """Queue a preview of a pull request; raises ``GitopsError`` when refused."""
        ...

    def refuse(self, config: EnvironmentConfig, *, provider: str, head_sha: str | None,
               reason: str) -> None:
        """Say on the pull request's commit why it is not previewed."""
        ...


class _BodyTooLarge(Exception):
    pass


class _BadBody(Exception):
    """A request body refused: ``status`` (400 or 413) and a message to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or ``_BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes.

    An announced Content-Length over the limit is refused before reading; a chunked body is
    read until it passes the limit and no further.
    """
    announced = request.headers.get("content-length")
    if announced is not None:
        try:
            if int(announced) > limit:
                raise _BodyTooLarge
        except ValueError:
            raise _BodyTooLarge from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON value (None for an empty body); ``_BadBody`` 413 past ``limit``
    bytes, 400 when it is not JSON or nests too deep for the parser."""
    try:
        body = await _read_body(request, limit)
    except _BodyTooLarge:
        raise _BadBody(413, f"body over {limit} bytes") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _BadBody(400, "the body is not JSON") from None
    except RecursionError:
        raise _BadBody(400, "the body's JSON nests too deep") from None


def _status_for(exc: GitopsError) -> int:
    """409 for a held lock or a state conflict, 400 for a permanent error, 503 if temporary."""
    if isinstance(exc, LockHeld):
        return 409
    if isinstance(exc, PermanentError):
        return 400
    if isinstance(exc, TemporaryError):
        return 503
    return 409  # neither permanent nor temporary: the environment's state forbids it now


def make_authorize(settings: Settings) -> Callable[[Request], JSONResponse | None]:
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
            return _error(401, "missing or wrong API token", {"WWW-Authenticate": "Bearer"})
        if is_local(request):
            return None
        return _error(403, "no API token is configured: the API answers loopback clients only")

    return authorize


def create_app(
    controller: Controller,
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    previews: Previewer | None = None,
) -> Starlette:
    """The ASGI app over ``controller``; webhook secrets and the API token are read now.

    With ``previews``, a signed pull/merge request event into an environment's branch
    queues a preview of it (202 with the preview's id); one from a fork the settings do not
    trust (``why_untrusted``) is refused with 403 and ``{"refused": <reason>}``.

    A secret that cannot be read raises ``UsageError`` here, so the daemon fails at start.
    """
    environments = {env.name: env for env in controller.environments()}
    secrets = {
        name: env.webhook_secret.reveal()
        for name, env in environments.items()
        if env.webhook_secret is not None
    }
    max_body = settings.max_body
    authorize = make_authorize(settings)
    deliveries = RecentDeliveries()

    health_threads = anyio.CapacityLimiter(2)  # not the shared pool page builds may fill

    async def healthz(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(controller.health,
                                                           limiter=health_threads))

    async def hook(request: Request) -> Response:
        name = request.path_params["environment"]
        env = environments.get(name)
        if env is None:
            return _error(404, "unknown environment")
        secret = secrets.get(name)
        if secret is None:
            return _error(404, "webhooks are not enabled for this environment")
        try:
            body = await _read_body(request, max_body)
        except _BodyTooLarge:
            log.warning("webhook %s: rejected (body over %d bytes)", name, max_body)
            return _error(413, f"body over {max_body} bytes")
        try:
            event = parse_webhook(request.headers, body, secret)
        except InvalidSignature as exc:
            log.warning("webhook %s: rejected (%s)", name, exc)
            return _error(401, "invalid signature")
        except UnsupportedEvent as exc:
            log.warning("webhook %s: rejected (%s)", name, exc)
            return _error(400, str(exc))
        delivery = delivery_id(request.headers, event.provider)
        key = (name, event.provider, delivery or "")
        if delivery is not None and not deliveries.claim(key):
            log.info("webhook %s: %s delivery %s is a duplicate, ignored", name,
                     event.provider, delivery)
            return JSONResponse({"duplicate": delivery})
        try:
            answer = await act(name, env, event)
        except BaseException:
            deliveries.release(key)
            raise
        if answer.status_code >= 500:  # not done: the provider's redelivery may try again
            deliveries.release(key)
        return answer

    async def act(name: str, env: EnvironmentConfig, event: WebhookEvent) -> Response:
        if event.is_pull_request:
            return await preview(name, env, event)
        why = why_ignored(event, env.branch)
        if why is not None:
            log.info("webhook %s: %s ignored (%s)", name, event.provider, why)
            return JSONResponse({"ignored": why})
        head = (event.after or "")[:10]
        forced = " (forced)" if event.forced else ""
        reason = f"{event.provider} push {head}{forced}".strip()
        triggered = await run_in_threadpool(
            controller.trigger, name, reason=reason, actor=f"webhook:{event.provider}"
        )
        log.info(
            "webhook %s: %s accepted (%s, %s)",
            name,
            event.provider,
            reason,
            "queued" if triggered else "coalesced",
        )
        return JSONResponse({"triggered": triggered}, status_code=202)

    async def preview(name: str, env: EnvironmentConfig, event: WebhookEvent) -> Response:
        why = why_no_preview(event, env.branch)
        if why is None and previews is None:
            why = "previews are not enabled in this daemon"
        if why is not None or previews is None or event.number is None:
            log.info("webhook %s: %s ignored (%s)", name, event.provider, why)
            return JSONResponse({"ignored": why})
        untrusted = why_untrusted(event, allow_forks=settings.preview.allow_forks,
                                  authors=settings.preview.trusted_authors,
                                  labels=settings.preview.trusted_labels)
        if untrusted is not None:
            log.warning("webhook %s: %s preview refused: %s", name, event.provider, untrusted)
            await run_in_threadpool(functools.partial(
                previews.refuse, env, provider=event.provider, head_sha=event.after,
                reason=untrusted))
            return JSONResponse({"refused": untrusted}, status_code=403)
        try:
            answer = await run_in_threadpool(functools.partial(
                previews.request, env, provider=event.provider, number=event.number,
                branch=event.branch or "", base=env.branch, head_sha=event.after))
        except GitopsError as exc:
            log.warning("webhook %s: %s preview refused (%s)", name, event.provider, exc)
            return _error(503, str(exc))
        log.info("webhook %s: %s pull request #%d (%s) queued for a preview", name,
                 event.provider, event.number, event.branch)
        return JSONResponse(answer, status_code=202)

    async def operate(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        name = request.path_params["environment"]
        action = request.path_params["action"]
        if name not in environments:
            return _error(404, "unknown environment")
        if action != "reconcile" and action not in OPERATIONS:
            return _error(404, f"unknown action; one of reconcile, {', '.join(OPERATIONS)}")
        try:
            options = _api_options(await _json_body(request, max_body),
                                   force=action == "reconcile")
        except _BadBody as exc:
            return _error(exc.status, str(exc))
        except UsageError as exc:
            return _error(400, str(exc))
        client = request.client.host if request.client else "unknown"
        actor = options.get("actor") or f"api:{client}"
        reason = options.get("reason") or ""
        try:
            if action == "reconcile":
                force = options.get("force") == "true"
                triggered = await run_in_threadpool(functools.partial(
                    controller.trigger, name, reason=reason or "operator request",
                    actor=actor, **({"force": True} if force else {})))
                return JSONResponse({"triggered": triggered}, status_code=202)
            result = await run_in_threadpool(
                controller.operate,
                name,
                action,
                actor=actor,
                reason=reason,
                revision=options.get("revision"),
            )
        except GitopsError as exc:
            return _error(_status_for(exc), str(exc))
        return JSONResponse(result)

    async def status(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        return JSONResponse(await run_in_threadpool(controller.status))

    async def postmortem(request: Request) -> Response:
        """Write into a post-mortem: ``annotate`` (sections), ``actions`` (a new item) or
        ``actions/{n}`` (done, open again, or an owning team); recorded with the actor."""
        refused = authorize(request)
        if refused is not None:
            return refused
        try:
            body = await _json_body(request, max_body)
        except _BadBody as exc:
            return _error(exc.status, str(exc))
        client = request.client.host if request.client else "unknown"
        try:
            data = _postmortem_body(body, request.path_params.get("what", "annotate"),
                                    "number" in request.path_params)
            return JSONResponse(await run_in_threadpool(
                _write_postmortem, settings, request.path_params["id"],
                request.path_params.get("what", "annotate"), request.path_params.get("number"),
                data, data.pop("actor", None) or f"api:{client}"))
        except UsageError as exc:
            return _error(404 if str(exc).startswith(("no incident", "incident ")) else 400,
                          str(exc))

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/incidents/{id}/{what:str}", postmortem, methods=["POST"]),
        Route("/api/incidents/{id}/{what:str}/{number:int}", postmortem, methods=["POST"]),
        Route("/hooks/{environment}", hook, methods=["POST"]),
        *(_promotion_routes(controller, environments, authorize, max_body)
          if isinstance(controller, Promoter) else []),
        Route("/api/environments/{environment}/{action}", operate, methods=["POST"]),
        Route("/api/status", status, methods=["GET"]),
        *extra_routes,
    ]
    guard = Middleware(Guard, listen=settings.listen, allowed_hosts=settings.allowed_hosts,
                       trusted_proxies=bool(settings.trusted_proxies))
    app = Starlette(routes=routes, middleware=[guard])
    app.state.transport = Transport.of(settings)
    return app


def _promotion_routes(controller: Promoter, environments: dict[str, EnvironmentConfig],
                      authorize: Callable[[Request], JSONResponse | None],
                      max_body: int) -> list[BaseRoute]:
    """``POST /api/environments/{env}/promote`` (``revision``, ``reason``, ``force``,
    ``actor``): 200 with the recorded promotion; 409 refused by the record (not verified
    upstream, quarantined here); 422 a missing revision or reason, an unknown revision or
    an environment without ``promote_from``. ``GET /api/pipeline``: the pipeline."""
    from gitops.daemon.promotion import PromotionRefused
    from gitops.errors import RevisionNotFound

    async def promote(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        name = request.path_params["environment"]
        if name not in environments:
            return _error(404, "unknown environment")
        if environments[name].promote_from is None:
            return _error(422, f"{name} does not promote from another environment "
                               "(promote_from)")
        try:
            options = _api_options(await _json_body(request, max_body), force=True)
        except _BadBody as exc:
            return _error(exc.status, str(exc))
        except freetext.BadText as exc:
            return _error(400, str(exc))
        except UsageError as exc:
            return _error(422, str(exc))
        revision = options.get("revision", "").strip()
        reason = options.get("reason", "").strip()
        if not revision or not reason:
            return _error(422, "a promotion needs 'revision' and 'reason': who promoted "
                               "what, and why, is recorded")
        client = request.client.host if request.client else "unknown"
        try:
            result = await run_in_threadpool(functools.partial(
                controller.promote, name, revision=revision,
                actor=options.get("actor") or f"api:{client}", reason=reason,
                force=options.get("force") == "true"))
        except PromotionRefused as exc:
            return _error(409, str(exc))
        except (RevisionNotFound, UsageError) as exc:
            return _error(422, str(exc))
        except GitopsError as exc:
            return _error(_status_for(exc), str(exc))
        return JSONResponse(result)

    async def pipeline(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        return JSONResponse(await run_in_threadpool(controller.pipeline))

    return [Route("/api/environments/{environment}/promote", promote, methods=["POST"]),
            Route("/api/pipeline", pipeline, methods=["GET"])]


_POSTMORTEM_FIELDS = {
    "annotate": {"summary", "impact", "causes", "went_well"},
    "actions": {"text", "team"},
    "action": {"done", "team"},
}


def _postmortem_body(body: Any, what: str, numbered: bool) -> dict[str, Any]:
    """The JSON object of a post-mortem write (``body`` parsed, None when empty): its
    fields strings (``done`` a boolean)."""
    kind = "action" if numbered else what
    if kind not in _POSTMORTEM_FIELDS or (numbered and what != "actions"):
        raise UsageError("no incident route: POST .../annotate, .../actions or .../actions/N")
    data = {} if body is None else body
    if not isinstance(data, dict):
        raise UsageError("the body must be a JSON object")
    unknown = sorted(set(data) - _POSTMORTEM_FIELDS[kind] - {"actor"})
    if unknown:
        raise UsageError(f"unknown field(s): {', '.join(map(str, unknown))}")
    for key, value in data.items():
        wanted = bool if key == "done" else str
        if value is not None and not isinstance(value, wanted):
            raise UsageError(f"{key!r} must be {'true or false' if wanted is bool else 'a string'}")
        if isinstance(value, str):
            check = freetext.line if key in ("actor", "team") else freetext.note
            check(repr(key), value)
    return {k: v for k, v in data.items() if v is not None}


def _write_postmortem(settings: Settings, incident_id: str, what: str, number: int | None,
                      data: dict[str, Any], actor: str) -> dict[str, Any]:
    from gitops.record.store import open_store
    from gitops.report import incidents

    with open_store(settings) as store:
        teams = incidents.known_teams(store, settings.teams)
        if what == "annotate":
            found = incidents.annotate(store, incident_id, data, actor=actor)
            _rewrite_report(settings, store, found.id)
            return found.as_dict()
        if number is None:
            if "text" not in data:
                raise UsageError("'text' is required: what is to be done")
            item = incidents.add_action(store, incident_id, data["text"], data.get("team"),
                                        actor=actor, teams=teams)
        else:
            item = incidents.update_action(store, incident_id, number, actor=actor,
                                           done=data.get("done"), team=data.get("team"),
                                           teams=teams)
        _rewrite_report(settings, store, incident_id)
        return {"action": item.as_dict(),
                "incident": incidents.find(store, incident_id).as_dict()}


def _rewrite_report(settings: Settings, store: Any, incident_id: str) -> None:
    """The incident's report says what was just written (``gitops.report.reports``); a folder that
    cannot be written is logged: the entry is recorded all the same."""
    from gitops.report import reports

    try:
        reports.after_postmortem(settings, store, incident_id)
    except OSError as exc:
        log.warning("cannot write the report of incident %s: %s", incident_id, exc)


def _api_options(data: Any, *, force: bool = False) -> dict[str, str]:
    """The optional JSON object of an API call (parsed; None when the body is empty):
    ``reason``, ``revision``, ``actor`` strings (a reason and an actor one clean line each,
    ``freetext.line``: else ``BadText``) and, when ``force`` (a reconcile), ``force``: a
    boolean, run outside the maintenance window (kept as "true")."""
    allowed = {"reason", "revision", "actor", *(("force",) if force else ())}
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError("the body must be a JSON object")
    options: dict[str, str] = {}
    forced = data.get("force") if force else None
    if forced is not None and not isinstance(forced, bool):
        raise UsageError("'force' must be true or false")
    if forced:
        if not str(data.get("reason") or "").strip():
            raise UsageError("'force' needs a 'reason': who overrode what, and why, is recorded")
        options["force"] = "true"
    for key in ("reason", "revision", "actor"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UsageError(f"{key!r} must be a string")
        options[key] = freetext.line(repr(key), value) if key != "revision" else value
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"unknown field(s): {', '.join(map(str, unknown))}")
    return options


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9469`` for IPv6) as a pair; ``UsageError`` if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"listen address {listen!r}: expected host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on ``listen`` (port 0: any free port); ``UsageError`` if it fails."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0, as socket.create_server leaves it): asyncio sets TCP_NODELAY
    # only on such sockets, and without it a kept-alive client waits ~40 ms per answer for
    # the delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def _server(app: Starlette, sock: socket.socket, limits: HttpLimits) -> uvicorn.Server:
    """uvicorn over ``sock`` within ``limits``; TLS and trusted proxies from the
    ``Transport`` that ``create_app`` kept in the app's state (none for another app: plain
    HTTP, no proxy)."""
    host, port = sock.getsockname()[:2]
    transport = getattr(app.state, "transport", None) or Transport()
    transport.check()
    for line in transport.describe():
        log.info("http %s: %s", f"{host}:{port}", line)
    config = uvicorn.Config(
        ClientLimit(app, limits),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # leave the daemon's logging setup alone
        access_log=False,
        lifespan="off",
        server_header=False,
        **transport.uvicorn_options(),
        limit_concurrency=limits.connections,
        timeout_keep_alive=limits.keep_alive,
        http=protocol(limits),
    )
    return uvicorn.Server(config)


def _run(server: uvicorn.Server, sock: socket.socket, stop_event: threading.Event | None) -> None:
    if stop_event is not None:

        def watch() -> None:
            stop_event.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="gitops-http-stop", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def serve(app: Starlette, listen: str, stop_event: threading.Event | None = None,
          limits: HttpLimits = HttpLimits()) -> None:
    """Serve ``app`` on ``listen`` until ``stop_event`` is set (or, in the main thread, a signal),
    within ``limits`` (``gitops.web.limits``).

    In the main thread uvicorn handles SIGINT/SIGTERM itself; the daemon, which has its own
    SIGTERM handling, should rather use ``start_in_thread``.
    """
    sock = bind(listen)
    try:
        server = _server(app, sock, limits)
    except BaseException:
        sock.close()
        raise
    _run(server, sock, stop_event)


def start_in_thread(
    app: Starlette, listen: str, *, timeout: float = 10.0, limits: HttpLimits = HttpLimits()
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``app`` from a daemon thread, within ``limits`` (``gitops.web.limits``); returns
    once it accepts connections.

    The address is bound here, so a port in use raises ``UsageError`` in the caller. Stop it
    with ``stop(server, thread)``; ``bound_port(server)`` tells the port when ``listen`` ends
    in ``:0``.
    """
    sock = bind(listen)
    try:
        server = _server(app, sock, limits)
    except BaseException:
        sock.close()
        raise
    thread = threading.Thread(
        target=_run, args=(server, sock, None), name="gitops-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if not server.started:
        server.should_exit = True
        thread.join(timeout=5)
        raise UsageError(f"the HTTP server on {listen} did not start")
    return server, thread


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port a started server listens on."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


def stop(server: uvicorn.Server, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Ask the server to finish its open requests and exit; wait for its thread."""
    server.should_exit = True
    thread.join(timeout=timeout)
