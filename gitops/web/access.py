"""Who is calling, and what they may do: the one prologue every route runs first.

``Gate`` authenticates a request (a token of the record, the settings' ``api_token`` as the
admin ``api``, a signed-in browser's session, or a trusted loopback client as ``local``) and
asks the roles (``gitops.daemon.roles``) whether the caller may do a permission on the
environment's team. ``Gate.rule(permission)`` is an ``Authorize`` for reading routes;
``Gate.permission(name)`` decorates a route that changes something: it names the permission,
refuses with 401 or 403 naming it, and writes the audit entry of what the route did.
Refusals are audited too, at most ``REFUSALS_PER_MINUTE`` per client address (a scanner
cannot flood the trail); unknown routes never reach a gate. ``guarded`` wraps a route in a
rule: a refusal is answered as it is, else the route runs, a plain one in the worker threads.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gitops.web.webguard import is_local

if TYPE_CHECKING:
    from gitops.daemon.roles import Roles
    from gitops.record.people import TokenRow
    from gitops.record.store import Database
    from gitops.settings import Settings
    from gitops.web.sessions import Sessions

__all__ = [
    "REFUSALS_PER_MINUTE",
    "Authorize",
    "Caller",
    "Endpoint",
    "Gate",
    "Handler",
    "error",
    "guarded",
    "loopback_only",
]

REFUSALS_PER_MINUTE = 20
"""Refusals (401, 403) audited per client address and minute; the others are only counted."""

Authorize = Callable[[Request], Response | None]
"""An access rule: None to let a request through, else the refusal to send."""

Endpoint = Callable[[Request], Awaitable[Response]]
"""A starlette route's endpoint."""

Handler = Endpoint | Callable[[Request], Response]
"""What ``guarded`` wraps: an endpoint, or a plain function run in the worker threads."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON refusal ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unauthorized(message: str) -> JSONResponse:
    return error(401, message, {"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Caller:
    """An authenticated identity: a token's ``name``, ``api``, ``local``, or a person signed
    in through the OpenID provider (``user:<name>``, with the provider's ``groups``);
    ``on_behalf``: a robot that may name the person it acts for (``actor`` in a body)."""

    name: str
    on_behalf: bool = False
    groups: tuple[str, ...] = ()

    @property
    def subjects(self) -> tuple[str, ...]:
        """Whose grants apply: the caller's own, and a person's groups' (``group:<g>``)."""
        return (self.name, *(f"group:{g}" for g in self.groups))

    def actor(self, person: str | None) -> str:
        """How an action is recorded: ``ci``, or ``ci (for bob)``."""
        return f"{self.name} (for {person})" if person else self.name


class _Budget:
    """Refusals audited per address and minute (the rest are skipped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._minute = 0
        self._lock = threading.Lock()

    def take(self, address: str) -> bool:
        minute = int(time.monotonic() // 60)
        with self._lock:
            if minute != self._minute:
                self._minute, self._counts = minute, {}
            if len(self._counts) > 10_000 and address not in self._counts:
                return False
            self._counts[address] = self._counts.get(address, 0) + 1
            return self._counts[address] <= self.limit


class Gate:
    """Authentication, roles and the audit trail of the daemon's HTTP server."""

    def __init__(self, settings: Settings, database: Database | None = None, *,
                 sessions: Sessions | None = None) -> None:
        from gitops.daemon.roles import Grant
        from gitops.record.store import Database
        from gitops.web.sessions import Sessions

        self.database = database or Database.of(settings)
        self.api_token = settings.api_token.reveal() if settings.api_token is not None else None
        self.trust_loopback = settings.trust_loopback
        self.grants = tuple(Grant(g.subject, g.role, g.team) for g in settings.grants)
        self.teams = {env.name: env.team for env in settings.environments}
        self.sessions = sessions or Sessions(settings.session_hours * 3600)
        self._roles: tuple[Any, Roles] | None = None
        self._lock = threading.Lock()
        self._budget = _Budget(REFUSALS_PER_MINUTE)

    # -- who is calling -------------------------------------------------------------------

    def _tokens(self) -> list[TokenRow]:
        from gitops.record.store import NoStore

        try:
            with self.database.open(readonly=True) as store:
                return store.tokens()
        except NoStore:  # nothing recorded yet: no token was ever made
            return []

    def _touch(self, name: str) -> None:
        with self.database.open() as store:
            store.touch_token(name)

    def trusts_loopback(self, tokens: list[TokenRow] | None = None) -> bool:
        """Whether a loopback client is ``local`` without a token: ``trust_loopback``, else
        only while no token was ever made and no ``api_token`` is set."""
        if self.trust_loopback is not None:
            return self.trust_loopback
        return self.api_token is None and not (self._tokens() if tokens is None else tokens)

    def _named(self, name: str, tokens: list[TokenRow]) -> Caller | JSONResponse:
        """The caller ``name`` (a session's), if it may still act."""
        if name == "api" and self.api_token is not None:
            return Caller("api")
        row = next((t for t in tokens if t.name == name), None)
        return self._live(row) if row is not None else _unauthorized(
            "the session's token is gone: sign in again")

    def _live(self, row: TokenRow) -> Caller | JSONResponse:
        from gitops.record.base import now

        state = row.state(now())
        if state == "revoked":
            return _unauthorized(f"token {row.name!r} was revoked: ask an admin for a new one")
        if state == "expired":
            assert row.expires_at is not None
            return _unauthorized(f"token {row.name!r} expired at "
                                 f"{row.expires_at.isoformat(timespec='seconds')}: ask an "
                                 "admin for a new one")
        self._touch(row.name)
        return Caller(row.name, row.on_behalf)

    def authenticate(self, request: Request) -> Caller | JSONResponse:
        """The caller, or the 401 to answer. Reads the record: call from a worker thread."""
        from gitops.daemon.tokens import match
        from gitops.web.sessions import COOKIE

        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, sent = header.partition(" ")
            sent = sent.strip()
            if scheme.lower() != "bearer" or not sent or len(sent) > 4096:
                return _unauthorized("malformed Authorization header: send Bearer <token>")
            if self.api_token is not None and hmac.compare_digest(
                    sent.encode("utf-8", "replace"), self.api_token.encode()):
                return Caller("api")
            row = match(self._tokens(), sent)
            return _unauthorized("unknown API token") if row is None else self._live(row)
        person = self.sessions.person(request.cookies.get(COOKIE))
        if person is not None and person.via == "oidc":
            return Caller(f"user:{person.name}", groups=person.groups)
        if person is not None:
            return self._named(person.name, self._tokens())
        if is_local(request) and self.trusts_loopback():
            return Caller("local")
        return _unauthorized("sign in: send an API token (Authorization: Bearer ..., "
                             "GITOPS_TOKEN for the CLI)")

    # -- what they may do -----------------------------------------------------------------

    def roles(self) -> Roles:
        """The policy: the settings' grants, each live token's own role, ``api`` and
        ``local`` as admins; made again when the tokens change."""
        from gitops.daemon.roles import ANY_TEAM, Grant, Roles
        from gitops.record.base import now

        at = now()
        tokens = tuple(Grant(t.name, t.role, t.team) for t in self._tokens()
                       if t.state(at) == "live")
        with self._lock:
            if self._roles is None or self._roles[0] != tokens:
                self._roles = (tokens, Roles((*self.grants, *tokens,
                                              Grant("api", "admin", ANY_TEAM),
                                              Grant("local", "admin", ANY_TEAM))))
            return self._roles[1]

    def allows(self, caller: Caller, permission: str, team: str | None) -> str | None:
        """The role that lets ``caller`` do ``permission`` on ``team``'s environments: its own
        grants, its groups'; a person signed in through the provider reads as a viewer."""
        roles = self.roles()
        for subject in caller.subjects:
            role = roles.allows(subject, permission, team)
            if role is not None:
                return role
        if caller.name.startswith("user:") and permission == "read":
            return "viewer"
        return None

    def team_of(self, environment: str) -> str:
        """The team owning ``environment`` ("" for none): the settings', else the record's."""
        team = self.teams.get(environment)
        if team is not None:
            return team
        from gitops.record.store import NoStore
        from gitops.report.teams import environment_teams

        try:
            with self.database.open(readonly=True) as store:
                return environment_teams(store).get(environment, "")
        except NoStore:
            return ""

    def decide(self, request: Request, permission: str,
               environment: str | None) -> Caller | JSONResponse:
        """The caller allowed ``permission`` on ``environment`` (None: on any), kept in
        ``request.state``; else the 401 or 403 to answer, audited."""
        caller = self.authenticate(request)
        if isinstance(caller, JSONResponse):
            self.refused(request, "?", permission, environment, caller)
            return caller
        team = None if environment is None else self.team_of(environment)
        role = self.allows(caller, permission, team)
        if role is None:
            where = (f" on {environment}" + (f" (team {team})" if team else "")
                     if environment else "")
            refusal = error(403, f"permission {permission!r} needed{where}: "
                                 f"{caller.name} does not have it")
            self.refused(request, caller.name, permission, environment, refusal)
            return refusal
        request.state.caller = caller
        request.state.role = role
        return caller

    def permissions_of(self, request: Request) -> dict[str, list[str]] | None:
        """Per environment (the settings' and the record's), the permissions the caller of
        ``request`` has there (``PERMISSIONS``' order); None when it cannot authenticate or
        the record cannot be read now. What a page shows, not a decision: every route still
        asks ``decide``. Reads the record: call from a worker thread."""
        from gitops.daemon.roles import PERMISSIONS
        from gitops.record.store import NoStore, StoreOutdated, StoreUnavailable
        from gitops.report.teams import environment_teams

        try:
            caller = self.authenticate(request)
            if isinstance(caller, JSONResponse):
                return None
            try:
                with self.database.open(readonly=True) as store:
                    recorded = environment_teams(store)
                    named = {row.environment for row in store.status()}
            except NoStore:
                recorded, named = {}, set()
            found: dict[str, list[str]] = {}
            for environment in sorted(set(self.teams) | named | set(recorded)):
                team = self.teams.get(environment)  # as ``team_of``: settings', record's
                team = recorded.get(environment, "") if team is None else team
                found[environment] = [p for p in PERMISSIONS
                                      if self.allows(caller, p, team) is not None]
            return found
        except (StoreOutdated, StoreUnavailable):
            return None  # the page shows no control; a write would answer why

    def rule(self, permission: str = "read") -> Authorize:
        """An ``Authorize`` asking ``permission`` on any environment (reading routes)."""

        def check(request: Request) -> Response | None:
            decided = self.decide(request, permission, None)
            return decided if isinstance(decided, Response) else None

        return check

    # -- the audit trail ------------------------------------------------------------------

    def record(self, request: Request, *, actor: str, role: str, action: str,
               environment: str | None, outcome: str, target: str = "",
               reason: str = "") -> None:
        """Append one audit entry for ``request``."""
        address = request.client.host if request.client else ""
        with self.database.open() as store:
            store.audit(actor=actor, role=role, action=action, environment=environment or "",
                        target=target, address=address, reason=reason, outcome=outcome)

    def refused(self, request: Request, actor: str, action: str, environment: str | None,
                refusal: Response) -> None:
        address = request.client.host if request.client else ""
        if self._budget.take(address):
            self.record(request, actor=actor, role="", action=action,
                        environment=environment, outcome=f"refused {refusal.status_code}")

    def permission(self, name: str, *, environment: Callable[[Request], str | None] | None
                   = None) -> Callable[[Handler], Endpoint]:
        """Decorate a route that changes something: the caller needs ``name`` on the
        environment (``environment(request)``; default the path's ``environment``); what
        the route did is audited with the caller, the role that allowed it, the
        ``request.state.audit`` the route filled (``target``, ``reason``) and the status."""
        where = environment or (lambda request: request.path_params.get("environment"))

        def wrap(handler: Handler) -> Endpoint:
            inner = guarded(lambda request: None)(handler)

            @functools.wraps(handler)
            async def endpoint(request: Request) -> Response:
                env = where(request)
                decided = await run_in_threadpool(self.decide, request, name, env)
                if isinstance(decided, Response):
                    return decided
                request.state.audit = {}
                response = await inner(request)
                done: dict[str, str] = request.state.audit
                status = response.status_code
                await run_in_threadpool(functools.partial(
                    self.record, request, actor=done.get("actor", decided.name),
                    role=request.state.role, action=name, environment=env,
                    outcome="ok" if status < 400 else f"failed {status}",
                    target=done.get("target", ""), reason=done.get("reason", "")))
                return response

            endpoint.permission = name  # type: ignore[attr-defined]
            return endpoint

        return wrap


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
    """The route's prologue as a decorator: ask ``check`` first, in a worker thread (unless
    ``exempt`` says the request needs no check) and answer its refusal (as ``refusal``
    turns it, if given); else run the route, a plain function in the worker thread pool so
    that a slow read never blocks the event loop."""

    def wrap(handler: Handler) -> Endpoint:
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            refused = (None if exempt is not None and exempt(request)
                       else await run_in_threadpool(check, request))
            if refused is not None:
                return refused if refusal is None else refusal(request, refused)
            if is_async:
                return await cast(Endpoint, handler)(request)
            return await run_in_threadpool(cast(Callable[[Request], Response], handler),
                                           request)

        return endpoint

    return wrap
