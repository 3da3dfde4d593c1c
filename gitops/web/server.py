"""The daemon's HTTP app: webhooks, the operator API and the health endpoint.

``gitops run`` builds the app with ``create_app`` over its ``Controller`` (the reconcile loop)
and runs it with ``serve`` or ``start_in_thread`` (``gitops.web.serving``, imported here); the
monitoring issue adds routes through ``extra_routes``. Each API route asks the access rule
first (``gitops.web.access.guarded``); controller calls run in a worker thread, so a slow one
never blocks the event loop.

Nothing here logs a request body, a header or a secret: one log line per webhook decision
(logger ``gitops.web.server``) names the environment, the provider and the result.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops import freetext
from gitops.errors import GitopsError, LockHeld, PermanentError, TemporaryError, UsageError
from gitops.settings import EnvironmentConfig, Settings
from gitops.web import approvals, postmortems
from gitops.web.access import Gate, error, guarded
from gitops.web.bodies import (
    BadBody,
    BodyTooLarge,
    acting,
    api_options,
    json_body,
    read_body,
)
from gitops.web.serving import bind, bound_port, parse_listen, serve, start_in_thread, stop
from gitops.web.webguard import Guard
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
    "RollbackPlanner",
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


@runtime_checkable
class RollbackPlanner(Protocol):
    """A controller that shows what a rollback would change before it is asked: the daemon
    (``gitops.daemon.rollback_plan``)."""

    def rollback_plan(self, environment: str, *, revision: str | None = None
                      ) -> dict[str, Any]:
        """The target, and per host and service what differs; raises ``GitopsError``."""
        ...


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


def _status_for(exc: GitopsError) -> int:
    """409 for a held lock or a state conflict, 400 for a permanent error, 503 if temporary."""
    if isinstance(exc, LockHeld):
        return 409
    if isinstance(exc, PermanentError):
        return 400
    if isinstance(exc, TemporaryError):
        return 503
    return 409  # neither permanent nor temporary: the environment's state forbids it now


def create_app(
    controller: Controller,
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    previews: Previewer | None = None,
    gate: Gate | None = None,
) -> Starlette:
    """The ASGI app over ``controller``; webhook secrets and the API token are read now.
    ``gate`` (default: one over the settings) authenticates callers, decides their
    permissions and audits what they do (``gitops.web.access``).

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
    gate = gate or Gate(settings)
    deliveries = RecentDeliveries()

    health_threads = anyio.CapacityLimiter(2)  # not the shared pool page builds may fill

    async def healthz(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(controller.health,
                                                           limiter=health_threads))

    async def hook(request: Request) -> Response:
        name = request.path_params["environment"]
        env = environments.get(name)
        if env is None:
            return error(404, "unknown environment")
        secret = secrets.get(name)
        if secret is None:
            return error(404, "webhooks are not enabled for this environment")
        try:
            body = await read_body(request, max_body)
        except BodyTooLarge:
            log.warning("webhook %s: rejected (body over %d bytes)", name, max_body)
            return error(413, f"body over {max_body} bytes")
        try:
            event = parse_webhook(request.headers, body, secret)
        except InvalidSignature as exc:
            log.warning("webhook %s: rejected (%s)", name, exc)
            return error(401, "invalid signature")
        except UnsupportedEvent as exc:
            log.warning("webhook %s: rejected (%s)", name, exc)
            return error(400, str(exc))
        delivery = delivery_id(request.headers, event.provider)
        key = (name, event.provider, delivery or "")
        if delivery is not None and not deliveries.claim(key):
            log.info("webhook %s: %s delivery %s is a duplicate, ignored", name,
                     event.provider, delivery)
            return JSONResponse({"duplicate": delivery})
        try:
            answer = await act(request, name, env, event)
        except BaseException:
            deliveries.release(key)
            raise
        if answer.status_code >= 500:  # not done: the provider's redelivery may try again
            deliveries.release(key)
        return answer

    async def act(request: Request, name: str, env: EnvironmentConfig,
                  event: WebhookEvent) -> Response:
        if event.is_pull_request:
            return await preview(request, name, env, event)
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
        await run_in_threadpool(functools.partial(
            gate.record, request, actor=f"webhook:{event.provider}", role="webhook",
            action="reconcile", environment=name, outcome="ok", target=event.after or "",
            reason=reason))
        log.info(
            "webhook %s: %s accepted (%s, %s)",
            name,
            event.provider,
            reason,
            "queued" if triggered else "coalesced",
        )
        return JSONResponse({"triggered": triggered}, status_code=202)

    async def preview(request: Request, name: str, env: EnvironmentConfig,
                      event: WebhookEvent) -> Response:
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
            return error(503, str(exc))
        log.info("webhook %s: %s pull request #%d (%s) queued for a preview", name,
                 event.provider, event.number, event.branch)
        await run_in_threadpool(functools.partial(
            gate.record, request, actor=f"webhook:{event.provider}", role="webhook",
            action="preview", environment=name, outcome="ok",
            target=f"#{event.number} {event.after or ''}".strip()))
        return JSONResponse(answer, status_code=202)

    async def operate(request: Request) -> Response:
        name = request.path_params["environment"]
        action = request.url.path.rsplit("/", 1)[-1]
        if name not in environments:
            return error(404, "unknown environment")
        try:
            options = api_options(await json_body(request, max_body),
                                  force=action == "reconcile")
            actor = acting(request.state.caller, options)
        except BadBody as exc:
            return error(exc.status, str(exc))
        except UsageError as exc:
            return error(400, str(exc))
        reason = options.get("reason") or ""
        request.state.audit.update(actor=actor, reason=reason,
                                   target=options.get("revision", ""))
        try:
            if action == "reconcile":
                force = options.get("force") == "true"
                triggered = await run_in_threadpool(functools.partial(
                    controller.trigger, name, reason=reason or "operator request",
                    actor=actor, **({"force": True} if force else {})))
                return JSONResponse({"triggered": triggered, "actor": actor}, status_code=202)
            result = await run_in_threadpool(
                controller.operate,
                name,
                action,
                actor=actor,
                reason=reason,
                revision=options.get("revision"),
            )
        except GitopsError as exc:
            return error(_status_for(exc), str(exc))
        return JSONResponse({"actor": actor, **result})

    @guarded(gate.rule("read"))
    def status(request: Request) -> Response:
        return JSONResponse(controller.status())

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *postmortems.routes(settings, gate, max_body),
        Route("/hooks/{environment}", hook, methods=["POST"]),
        *(_promotion_routes(controller, environments, gate, max_body)
          if isinstance(controller, Promoter) else []),
        *(approvals.routes(controller, environments, gate, max_body)
          if isinstance(controller, approvals.Approver) else []),
        *(_rollback_plan_routes(controller, environments, gate)
          if isinstance(controller, RollbackPlanner) else []),
        *(Route(f"/api/environments/{{environment}}/{action}", gate.permission(action)(operate),
                methods=["POST"]) for action in ("reconcile", *OPERATIONS)),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/audit", guarded(gate.rule("read"))(functools.partial(audit_trail, gate)),
              methods=["GET"]),
        *extra_routes,
    ]
    guard = Middleware(Guard, listen=settings.listen, allowed_hosts=settings.allowed_hosts,
                       trusted_proxies=bool(settings.trusted_proxies))
    app = Starlette(routes=routes, middleware=[guard])
    app.state.transport = Transport.of(settings)
    return app


def _promotion_routes(controller: Promoter, environments: dict[str, EnvironmentConfig],
                      gate: Gate,
                      max_body: int) -> list[BaseRoute]:
    """``POST /api/environments/{env}/promote`` (``revision``, ``reason``, ``force``,
    ``actor``): 200 with the recorded promotion; 409 refused by the record (not verified
    upstream, quarantined here); 422 a missing revision or reason, an unknown revision or
    an environment without ``promote_from``. ``GET /api/pipeline``: the pipeline."""
    from gitops.daemon.promotion import PromotionRefused
    from gitops.errors import RevisionNotFound

    @gate.permission("promote")
    async def promote(request: Request) -> Response:
        name = request.path_params["environment"]
        if name not in environments:
            return error(404, "unknown environment")
        if environments[name].promote_from is None:
            return error(422, f"{name} does not promote from another environment "
                               "(promote_from)")
        try:
            options = api_options(await json_body(request, max_body), force=True)
        except BadBody as exc:
            return error(exc.status, str(exc))
        except freetext.BadText as exc:
            return error(400, str(exc))
        except UsageError as exc:
            return error(422, str(exc))
        try:
            actor = acting(request.state.caller, options)
        except UsageError as exc:
            return error(400, str(exc))
        revision = options.get("revision", "").strip()
        reason = options.get("reason", "").strip()
        if not revision or not reason:
            return error(422, "a promotion needs 'revision' and 'reason': who promoted "
                               "what, and why, is recorded")
        request.state.audit.update(actor=actor, reason=reason, target=revision)
        try:
            result = await run_in_threadpool(functools.partial(
                controller.promote, name, revision=revision, actor=actor, reason=reason,
                force=options.get("force") == "true"))
        except PromotionRefused as exc:
            return error(409, str(exc))
        except (RevisionNotFound, UsageError) as exc:
            return error(422, str(exc))
        except GitopsError as exc:
            return error(_status_for(exc), str(exc))
        return JSONResponse({"actor": actor, **result})

    @guarded(gate.rule("read"))
    def pipeline(request: Request) -> Response:
        return JSONResponse(controller.pipeline())

    return [Route("/api/environments/{environment}/promote", promote, methods=["POST"]),
            Route("/api/pipeline", pipeline, methods=["GET"])]




def _rollback_plan_routes(controller: RollbackPlanner,
                          environments: dict[str, EnvironmentConfig],
                          gate: Gate) -> list[BaseRoute]:
    """``GET /api/environments/{env}/rollback/plan[?revision=<sha>]``: what a rollback would
    change (the page shows it before asking for a reason); for a caller with the
    ``rollback`` permission there (403 naming it otherwise), read-only, so not audited
    unless refused. 404 an unknown environment; 400 a revision that is not a sha (7 to 40
    hex digits) or an unknown query parameter; 409 nothing to go back to or a target the
    record refuses (never verified there, off the branch)."""

    from gitops.daemon.control import sha_prefix

    def may_roll_back(request: Request) -> Response | None:
        decided = gate.decide(request, "rollback", request.path_params["environment"])
        return decided if isinstance(decided, Response) else None

    @guarded(may_roll_back)
    def rollback_plan(request: Request) -> Response:
        name = request.path_params["environment"]
        if name not in environments:
            return error(404, "unknown environment")
        unknown = sorted(set(request.query_params) - {"revision"})
        if unknown:
            return error(400, f"unknown query parameter(s): {', '.join(unknown)}")
        revision = request.query_params.get("revision") or None
        try:
            revision = sha_prefix(revision) if revision is not None else None
        except UsageError as exc:
            return error(400, str(exc))
        try:
            return JSONResponse(controller.rollback_plan(name, revision=revision))
        except UsageError as exc:  # nothing verified to go back to
            return error(409, str(exc))
        except GitopsError as exc:
            return error(_status_for(exc), str(exc))

    rollback_plan.permission = "rollback"  # type: ignore[attr-defined]
    return [Route("/api/environments/{environment}/rollback/plan", rollback_plan,
                  methods=["GET"])]


def audit_trail(gate: Gate, request: Request) -> Response:
    """``GET /api/audit``: the audit trail, newest first, filtered by ``actor``,
    ``environment``, ``action`` and ``since`` (ISO 8601), at most ``limit`` (1000)."""
    from datetime import UTC, datetime

    query = request.query_params
    unknown = sorted(set(query) - {"actor", "environment", "action", "since", "limit"})
    if unknown:
        return error(400, f"unknown query parameter(s): {', '.join(unknown)}")
    since = None
    try:
        if query.get("since"):
            since = datetime.fromisoformat(query["since"])
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
        limit = int(query.get("limit") or 1000)
    except ValueError:
        return error(400, "since must be an ISO 8601 time, limit a number")
    if not 1 <= limit <= 10_000:
        return error(400, "limit must be between 1 and 10000")
    with gate.database.open() as store:
        rows = store.audit_trail(actor=query.get("actor") or None,
                                 environment=query.get("environment") or None,
                                 action=query.get("action") or None, since=since, limit=limit)
    return JSONResponse([r.as_dict() for r in rows])
