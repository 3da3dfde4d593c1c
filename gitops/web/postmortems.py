"""The API's writes into a post-mortem: its sections, its action items (done, open again,
an owning team), each checked field by field, recorded with the actor, and the incident's
report written again to say so."""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops import freetext
from gitops.errors import UsageError
from gitops.settings import Settings
from gitops.web.access import Gate, error
from gitops.web.bodies import BadBody, acting, json_body, refuse_unknown

__all__ = ["incident_environment", "routes"]

log = logging.getLogger("gitops.web.server")


def incident_environment(request: Request) -> str | None:
    """The environment of the path's incident (``inc-<environment>-<run>``), for its team."""
    from gitops.report.incidents import ID_PREFIX

    incident = str(request.path_params.get("id", ""))
    incident = incident[len(ID_PREFIX):] if incident.upper().startswith(ID_PREFIX) else incident
    environment, sep, run = incident.rpartition("-")
    return environment if sep and run.isdigit() else None


def routes(settings: Settings, gate: Gate, max_body: int) -> list[BaseRoute]:
    """``POST /api/incidents/{id}/{what}`` and ``.../{what}/{number}``: write into a
    post-mortem: ``annotate`` (sections), ``actions`` (a new item) or ``actions/{n}`` (done,
    open again, or an owning team); recorded with the actor."""

    @gate.permission("postmortem", environment=incident_environment)
    async def postmortem(request: Request) -> Response:
        try:
            body = await json_body(request, max_body)
        except BadBody as exc:
            return error(exc.status, str(exc))
        try:
            data = _postmortem_body(body, request.path_params.get("what", "annotate"),
                                    "number" in request.path_params)
            actor = acting(request.state.caller, {k: data.pop(k) for k in ("actor",)
                                                  if k in data})
            request.state.audit.update(actor=actor, target=request.path_params["id"],
                                       reason=_what(request.path_params, data))
            return JSONResponse(await run_in_threadpool(
                _write_postmortem, settings, request.path_params["id"],
                request.path_params.get("what", "annotate"), request.path_params.get("number"),
                data, actor))
        except UsageError as exc:
            return error(404 if str(exc).startswith(("no incident", "incident ")) else 400,
                         str(exc))

    return [Route("/api/incidents/{id}/{what:str}", postmortem, methods=["POST"]),
            Route("/api/incidents/{id}/{what:str}/{number:int}", postmortem, methods=["POST"])]


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
    refuse_unknown(data, _POSTMORTEM_FIELDS[kind] | {"actor"})
    for key, value in data.items():
        wanted = bool if key == "done" else str
        if value is not None and not isinstance(value, wanted):
            raise UsageError(f"{key!r} must be {'true or false' if wanted is bool else 'a string'}")
        if isinstance(value, str):
            check = freetext.line if key in ("actor", "team") else freetext.note
            check(repr(key), value)
    return {k: v for k, v in data.items() if v is not None}


def _what(path: dict[str, Any], data: dict[str, Any]) -> str:
    """What a post-mortem write does, for its audit entry: ``wrote summary, impact``, ``new
    action item (team payments)``, ``action 3: done, team search``."""
    if path.get("what", "annotate") == "annotate":
        return "wrote " + ", ".join(sorted(data))
    team = f"team {data['team']}" if data.get("team") else ""
    if "number" not in path:
        return "new action item" + (f" ({team})" if team else "")
    done = {None: "", True: "done", False: "open again"}[data.get("done")]
    return f"action {path['number']}: " + ", ".join(t for t in (done, team) if t)


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
