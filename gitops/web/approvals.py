"""The API of approvals (``require_approval``): a person approves the revision waiting in an
environment (``POST /api/environments/{env}/approve``, permission ``approve``: an operator
of the owning team, or an admin), and anyone who reads sees what waits and whether they may
approve it (``GET /api/environments/{env}/approval``, what the page's Approve button asks).
The approval is audited with the authenticated caller by the gate."""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops import freetext
from gitops.errors import GitopsError, UsageError
from gitops.settings import EnvironmentConfig
from gitops.web.access import Gate, error, guarded
from gitops.web.bodies import BadBody, acting, api_options, json_body

__all__ = ["Approver", "routes"]


@runtime_checkable
class Approver(Protocol):
    """A controller that takes approvals: the daemon."""

    def approve(self, environment: str, *, revision: str, actor: str, role: str,
                reason: str) -> dict[str, Any]:
        """Record the approval and wake the environment; raises ``GitopsError``s (another
        revision than the one waiting: ``ApprovalRefused``; a malformed one: ``UsageError``)."""
        ...

    def status(self) -> list[dict[str, Any]]: ...


def routes(controller: Approver, environments: dict[str, EnvironmentConfig], gate: Gate,
           max_body: int) -> list[BaseRoute]:
    """``POST /api/environments/{env}/approve`` (``revision``, ``reason``): 200 with the
    approval recorded, the environment woken to apply it; 404 an unknown environment; 400 a
    malformed body, sha or reason, or an environment without ``require_approval``; 409 a
    revision that is not the one waiting. ``GET /api/environments/{env}/approval``: whether
    it requires approval, the owning team, the revision waiting (full sha, or null) and
    whether the caller may approve it."""
    from gitops.record.approvals import ApprovalRefused

    by_record = {c.environment: c for c in environments.values()}

    def config_of(request: Request) -> EnvironmentConfig | None:
        """The path's environment: its name in the settings, or in the record (the page's)."""
        name = request.path_params["environment"]
        return environments.get(name) or by_record.get(name)

    @gate.permission("approve")
    async def approve(request: Request) -> Response:
        config = config_of(request)
        if config is None:
            return error(404, "unknown environment")
        name = config.name
        try:
            options = api_options(await json_body(request, max_body))
            actor = acting(request.state.caller, options)
        except BadBody as exc:
            return error(exc.status, str(exc))
        except (freetext.BadText, UsageError) as exc:
            return error(400, str(exc))
        revision = options.get("revision", "").strip().lower()
        reason = options.get("reason", "").strip()
        request.state.audit.update(actor=actor, reason=reason, target=revision[:64])
        try:
            result = await run_in_threadpool(functools.partial(
                controller.approve, name, revision=revision, actor=actor,
                role=request.state.role, reason=reason))
        except ApprovalRefused as exc:
            return error(409, str(exc))
        except UsageError as exc:
            return error(400, str(exc))
        except GitopsError as exc:
            return error(503, str(exc))
        return JSONResponse({"actor": actor, **result})

    @guarded(gate.rule("read"))
    def approval(request: Request) -> Response:
        config = config_of(request)
        if config is None:
            return error(404, "unknown environment")
        name = config.name
        row = next((r for r in controller.status()
                    if r.get("environment") == config.environment and not r.get("host")), None)
        team = gate.team_of(name)
        may = gate.allows(request.state.caller, "approve", team) is not None
        return JSONResponse({
            "environment": name, "required": config.require_approval, "team": team or None,
            "waiting": row.get("waiting_for_approval") if row is not None else None,
            "may_approve": may})

    return [Route("/api/environments/{environment}/approve", approve, methods=["POST"]),
            Route("/api/environments/{environment}/approval", approval, methods=["GET"])]
