"""The daemon's read-only JSON API: environments, hosts, runs, delivery (side by side by team
or environment), incidents and teams, each answering what ``gitops status --json`` and
``history --json`` print; ``reader`` makes a route that reads the store behind a rule."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops.record.store import ENVIRONMENT, Database, NoStore, Store, StoreOutdated
from gitops.web.access import Authorize, Endpoint, guarded
from gitops.web.figures import DELIVERY_WINDOW, delivery_figures

__all__ = [
    "BadQuery",
    "StoreRead",
    "api_compare",
    "api_delivery",
    "api_environments",
    "api_hosts",
    "api_incidents",
    "api_teams",
    "as_json",
    "int_param",
    "reader",
    "routes",
]

StoreRead = Callable[[Request, Store], Response]
"""A route's answer from the store, opened read-only for the request."""


def api_environments(store: Store) -> list[dict[str, Any]]:
    """Environment status rows (as ``gitops status --json``) with controls, quarantine and
    the controller holding the environment (None: one controller, or nobody holds it now)."""
    holders = {lease.environment: lease.holder for lease in store.leases() if lease.live}
    rows = []
    for row in store.status():
        if row.host == ENVIRONMENT:
            rows.append({**row.as_dict(),
                         "controller": holders.get(row.environment),
                         "controls": store.controls(row.environment).as_dict(),
                         "quarantined": [q.as_dict()
                                         for q in store.quarantined(row.environment)]})
    return rows


def api_hosts(store: Store, environment: str | None = None) -> list[dict[str, Any]]:
    """Host status rows (as ``gitops status --json``, environment rows left out)."""
    return [row.as_dict() for row in store.status(environment) if row.host != ENVIRONMENT]


def api_delivery(store: Store, environment: str | None = None,
                 days: int = DELIVERY_WINDOW) -> dict[str, dict[str, Any]] | None:
    """Delivery metrics per environment; None until ``gitops.report.delivery`` exists."""
    return delivery_figures(store, environment, days)


def api_compare(store: Store, by: str, days: int = DELIVERY_WINDOW) -> dict[str, Any]:
    """The four keys per team (or environment) with trends and series
    (``gitops metrics --by``), and the DORA bands shown beside them."""
    from gitops.report import delivery
    from gitops.report.teams import environment_teams

    groups = delivery.compare(store, environment_teams(store), by=by, days=days)
    return {"by": by, "days": days, "groups": {n: g.as_dict() for n, g in groups.items()},
            "bands": delivery.DORA_BANDS}


def api_teams(store: Store) -> dict[str, Any]:
    """Who owns what: environment -> team, environment -> service -> team."""
    from gitops.report.teams import environment_teams, service_teams

    return {"environments": environment_teams(store), "services": service_teams(store)}


def api_incidents(store: Store, environment: str | None = None) -> list[Any] | None:
    """Incidents, newest first as ``gitops.report.incidents`` orders them; None until it exists."""
    try:
        from gitops.report import incidents  # written alongside; optional until it lands
    except ImportError:
        return None
    return [_plain(i) for i in incidents.incidents(store, environment=environment)]


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class BadQuery(ValueError):
    """A query parameter out of its range: answered 400 with its message."""


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name`` as an integer in [low, high] (``default`` when absent);
    ``BadQuery`` otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}")
    return value


def as_json(data: Any) -> JSONResponse:
    """``data`` as a JSON answer, values JSON cannot hold (datetimes) as their text."""
    return JSONResponse(json.loads(json.dumps(data, default=str)))


def reader(where: Database, check: Authorize) -> Callable[[StoreRead], Endpoint]:
    """A route that reads the store: ``check`` first, then the read in a worker thread over
    the store opened read-only for it and closed after; a ``BadQuery`` is answered 400, a
    store with nothing recorded (or not migrated yet) 503."""

    def wrap(read: StoreRead) -> Endpoint:
        @guarded(check)
        def endpoint(request: Request) -> Response:
            try:
                with where.open(readonly=True) as store:
                    return read(request, store)
            except BadQuery as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except (NoStore, StoreOutdated) as exc:  # nothing recorded (yet): nothing to read
                return JSONResponse({"error": str(exc)}, status_code=503)

        return endpoint

    return wrap


def routes(read: Callable[[StoreRead], Endpoint]) -> list[BaseRoute]:
    """The JSON API's ``GET`` routes, each made by ``read`` (``reader``)."""

    def environments(request: Request, store: Store) -> Response:
        return as_json(api_environments(store))

    def hosts(request: Request, store: Store) -> Response:
        return as_json(api_hosts(store, request.query_params.get("environment") or None))

    def runs(request: Request, store: Store) -> Response:
        limit = int_param(request, "limit", 20, 1, 1000)
        return as_json([r.as_dict() for r in store.history(
            request.query_params.get("environment") or None, limit)])

    def one_run(request: Request, store: Store) -> Response:
        try:
            run_id = int(request.path_params["id"])
        except ValueError:
            return JSONResponse({"error": "run id must be an integer"}, status_code=400)
        run = store.run(run_id) if 0 < run_id < 2**63 else None
        if run is None:
            return JSONResponse({"error": f"no run {run_id}"}, status_code=404)
        return as_json(run.as_dict())

    def delivery(request: Request, store: Store) -> Response:
        days = int_param(request, "days", DELIVERY_WINDOW, 1, 3660)
        by = request.query_params.get("by") or None
        if by is not None:
            if by not in ("team", "environment"):
                raise BadQuery("by must be team or environment")
            return as_json(api_compare(store, by, days))
        figures = api_delivery(store, request.query_params.get("environment") or None, days)
        if figures is None:
            return JSONResponse({"error": "delivery metrics are not available"},
                                status_code=501)
        return as_json(figures)

    def incidents(request: Request, store: Store) -> Response:
        found = api_incidents(store, request.query_params.get("environment") or None)
        if found is None:
            return JSONResponse({"error": "incidents are not available"}, status_code=501)
        return as_json(found)

    table: list[tuple[str, StoreRead]] = [
        ("/api/environments", environments),
        ("/api/hosts", hosts),
        ("/api/runs", runs),
        ("/api/runs/{id}", one_run),
        ("/api/delivery", delivery),
        ("/api/incidents", incidents),
        ("/api/teams", lambda request, store: as_json(api_teams(store))),
    ]
    return [Route(path, read(answer), methods=["GET"]) for path, answer in table]
