"""The status page: a view of the store, served by the daemon at ``GET /``; its actions
(``static/actions.js``) and what people write in it (``static/postmortem.js``) go through
the API's own routes, as the caller's roles allow (``GET /api/session``'s ``may``).

``routes(state_dir, authorize)`` gives the daemon (through ``create_app(extra_routes=...)``):

- ``GET /``: the page (static HTML, no data in it), ``GET /static/dom.js`` (the one DOM
  builder), ``page.js``, ``actions.js``, ``postmortem.js`` and ``/static/page.css``: plain
  files from ``gitops/static``, no build step, nothing external;
- ``GET /api/page``: one JSON document with everything the page shows, fetched every few
  seconds: environments with their conditions and controls, the hosts x services grid of
  the latest check results (and, per host, the services it keeps that its revision no longer
  declares: left in place or not pruned, ``gitops.pipeline.prune``), desired vs applied revision per
  host, a running rollout's
  progress, the last 50 runs (each with its actor), activity per day, delivery metrics and
  incidents (each with who did what about it: ``gitops.report.whodid``) when
  ``gitops.report.delivery`` and ``gitops.report.incidents`` exist;
  the team comparison (``delivery.compare``), each environment's delivery metrics and its
  incidents are kept between polls in a ``RecordCache`` until the record changes (a run
  starts or finishes, a revision is quarantined or verified everywhere, someone writes into
  a post-mortem, a team owns other environments) or the hour turns, so a poll with no new
  run recomputes none of them; the whole answer, its long texts cut (``page_answer``), is
  kept as bytes until anything it shows changes (``Store.page_mark``), so N viewers cost
  one build;
- ``GET /api/page/runs/{id}``: one run with its per-host, per-operation and per-check detail;
- ``GET /previews/{id}``: one preview's full report (what a pull request comment points to
  when the host's size limit cut it), and the page lists the latest previews.

Access: ``authorize`` is the daemon's gate (``gitops.web.access.Gate.rule``): the ``read``
permission, from a token in the header, the session cookie of a browser signed in with a token
through the page's sign-in form (``gitops.web.sessions``: a random id with an expiry, never the
token; no token in any URL; ``sessions`` must be the gate's), or a trusted loopback client.
Without ``authorize`` the page answers loopback clients only. The page never renders
settings; the store holds no secret, and operation diffs (file contents) are left out of the
run detail all the same.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape as html_escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gitops.daemon.approval import WAITING as APPROVAL_WAITING
from gitops.daemon.promotion import Link, pipeline
from gitops.record.store import ENVIRONMENT, Database, NoStore, Store, StoreOutdated
from gitops.records import APPLY_KINDS, CheckRow, Ref, RunRow, StatusRow
from gitops.web.access import Authorize, guarded
from gitops.web.oidc import routes as oidc_routes
from gitops.web.page_answer import PageAnswers, bounded, serialize
from gitops.web.sessions import COOKIE, Sessions
from gitops.web.sessions import routes as session_routes
from gitops.web.webguard import is_local

if TYPE_CHECKING:
    from gitops.settings import OidcSettings

__all__ = ["COOKIE", "HISTORY", "RecordCache", "page_data", "routes", "run_detail"]

_T = TypeVar("_T")


HISTORY = 50
"""Runs listed per environment."""

_SCAN = 200
"""Runs looked through for each host's latest check results."""

_ACTIVITY_DAYS = 14
_DELIVERY_DAYS = 30
_CLOSED_INCIDENTS = 10
_AUDIT_SCAN = 2000
"""Newest audit entries of an environment looked through for its incidents' ``audit``."""
_CHECK_KINDS = (*APPLY_KINDS, "verify")

_STATIC = {
    "dom.js": "text/javascript; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "actions.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "signin.js": "text/javascript; charset=utf-8",
    "postmortem.js": "text/javascript; charset=utf-8",
}
_PUBLIC = frozenset({"page.css", "signin.js"})
"""Files the sign-in page needs before the browser is signed in (nothing of the record)."""
_MAX_ID = 2**63

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- the data -------------------------------------------------------------------------------


class RecordCache:
    """What the page computes from the record, kept while the record does not change: each
    value under its name (the comparison, an environment's delivery or incidents), with a
    key of the store's ``change_mark`` (the newest run id and finish, the quarantine and
    verified revision counts), the post-mortems' ``postmortem_mark`` (what people wrote) and
    what the caller adds (the owners, the hour: the 30-day windows move on). ``computed``
    counts the computations. Safe to share between the page's request threads. ``bind``
    reads the record's marks once for all the values of one page."""

    def __init__(self) -> None:
        self.computed = 0
        self._values: dict[Hashable, tuple[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def bind(self, store: Store | None) -> Cached:
        """``get`` for one page's values, at the record's marks read now (no store: nothing
        to keep, each value computed)."""
        if store is None:
            return lambda name, compute, extra: compute()
        mark = (tuple(store.change_mark()), store.postmortem_mark())

        def cached(name: Hashable, compute: Callable[[], Any], extra: Hashable) -> Any:
            return self.get(mark, name, compute, extra)

        return cached

    def get(self, mark: Hashable, name: Hashable, compute: Callable[[], _T],
            extra: Hashable = ()) -> _T:
        key = (mark, extra)
        with self._lock:
            found = self._values.get(name)
            if found is not None and found[0] == key:
                return cast(_T, found[1])
            value = compute()
            self._values[name] = (key, value)
            self.computed += 1
            return value


Cached = Callable[[Hashable, Callable[[], Any], Hashable], Any]
"""``RecordCache.bind``: (name, compute, extra) -> the value, kept or computed."""


def _hour(today: datetime | None) -> str:
    """The cache's clock: the hour now, or the fixed ``today`` a caller gave."""
    return today.isoformat() if today is not None else datetime.now(UTC).strftime("%Y-%m-%dT%H")


def page_data(store: Store | None, *, today: datetime | None = None,
              chain: Sequence[Link] = (), cache: RecordCache | None = None,
              teams: Sequence[str] = ()) -> dict[str, Any]:
    """The document behind ``GET /api/page`` (shape in the module's README section);
    ``store`` None: nothing recorded yet. ``chain``: the daemon's environments, for the
    promotion pipeline (``pipeline``: empty when none promotes from another). ``cache``:
    what an earlier call computed while the record is unchanged (``routes`` keeps one);
    ``teams``: the settings' teams, which with the record's owners are the teams an action
    item of a post-mortem may name (``teams`` in the answer)."""
    cached = (cache or RecordCache()).bind(store)
    rows = store.status() if store is not None else []
    names = sorted({r.environment for r in rows} | {
        q.environment for q in (store.quarantined() if store is not None else [])})
    holders = ({lease.environment: lease.holder for lease in store.leases() if lease.live}
               if store is not None else {})
    environments = [{**_environment(store, name, rows, today, cached),
                     "controller": holders.get(name)} for name in names if store is not None]
    owners = _owners(store)
    for env in environments:
        env["team"] = owners.get(env["name"])
    return {
        "generated_at": (today or datetime.now(UTC)).isoformat(timespec="seconds"),
        "environments": environments,
        "pipeline": pipeline(store, chain) if any(link.upstream for link in chain) else [],
        "previews": [p.as_dict() for p in store.previews(limit=20)] if store is not None
        else [],
        "comparison": cached("comparison", lambda: _comparison(store, owners, today),
                             (tuple(sorted(owners.items())), _hour(today))),
        "teams": sorted({*teams, *(o.team for o in store.owners() if o.team)}
                        if store is not None else set(teams)),
    }


def run_detail(store: Store, run_id: int) -> dict[str, Any] | None:
    """One run for the page: ``Store.run`` without the plan's diffs (file contents)."""
    detail = store.run(run_id)
    if detail is None:
        return None
    run = detail.as_dict()
    if detail.plan is not None:
        run["plan"] = {"hosts": [
            {"host": h.host, "error": h.error,
             "ops": [op.model_dump(mode="json", exclude={"diff"}) for op in h.ops]}
            for h in detail.plan.hosts
        ]}
    return cast(dict[str, Any], bounded(run))


def _ready(row: StatusRow | None) -> str:
    found = row.condition("Ready") if row is not None else None
    return found.status if found is not None else "Unknown"


def _ref(ref: Ref | None) -> str | None:
    return ref.ref if ref is not None else None


def _environment(store: Store, name: str, rows: list[StatusRow],
                 today: datetime | None, cached: Cached) -> dict[str, Any]:
    env_row = next((r for r in rows if r.environment == name and r.host == ENVIRONMENT),
                   None)
    host_rows = [r for r in rows if r.environment == name and r.host != ENVIRONMENT]
    controls = store.controls(name)
    attempted = env_row.last_attempted if env_row else None
    held = controls.held_sha
    suspended = controls.suspended
    desired_sha = held or (attempted.sha if attempted else None)
    runs = store.history(name, limit=max(_SCAN, 1000))
    latest = _latest_checks(store, [r.host for r in host_rows], runs)
    services = sorted({s for entry in latest.values() for s in entry["services"]})
    kept: dict[str, list[dict[str, str]]] = {}
    for _, k in store.not_removed(name):
        kept.setdefault(k.host, []).append({"service": k.service, "state": k.state,
                                            "revision": k.revision})
    hosts = []
    for r in host_rows:
        entry = latest.get(r.host, {"run": None, "at": None, "error": None, "services": {}})
        hosts.append({
            "name": r.host,
            "ready": _ready(r),
            "conditions": [c.as_dict() for c in r.conditions],
            "applied": _ref(r.last_applied),
            "attempted": _ref(r.last_attempted),
            "verified": _ref(r.last_verified),
            "updated_at": _iso(r.updated_at),
            "in_sync": desired_sha is not None and r.last_applied is not None
            and r.last_applied.sha == desired_sha,
            "checks_run": entry["run"],
            "checks_at": entry["at"],
            "check_error": entry["error"],
            "services": entry["services"],
            "not_removed": kept.get(r.host, []),
        })
    since = _iso(controls.since)
    return {
        "name": name,
        "ready": _ready(env_row),
        "conditions": [c.as_dict() for c in env_row.conditions] if env_row else [],
        "applied": _ref(env_row.last_applied) if env_row else None,
        "attempted": _ref(attempted),
        "verified": _ref(env_row.last_verified) if env_row else None,
        "updated_at": _iso(env_row.updated_at) if env_row else None,
        "desired": desired_sha,
        "desired_from": "held" if held else "attempted",
        "suspended": suspended,
        "suspended_reason": controls.reason if suspended else "",
        "suspended_by": controls.actor if suspended else "",
        "suspended_since": since if suspended else None,
        "held": {"sha": held, "head": controls.held_head, "since": since,
                 "by": controls.actor} if held else None,
        "quarantined": [{"sha": q.sha, "reason": q.reason, "since": q.since.isoformat()}
                        for q in store.quarantined(name)],
        "awaiting_approval": _awaiting(store, name, env_row),
        "services": services,
        "hosts": hosts,
        "rollout": _rollout(runs, host_rows),
        "history": [r.as_dict() for r in runs[:HISTORY]],
        "activity": _activity(runs, today or datetime.now(UTC)),
        "delivery": cached(("delivery", name), lambda: _delivery(store, name), _hour(today)),
        "incidents": _who_did(store, name, cached(("incidents", name),
                                                  lambda: _incidents(store, name), ()), today),
    }


def _awaiting(store: Store, name: str, row: StatusRow | None) -> str | None:
    """The revision waiting for approval while the status shows it (``require_approval``)."""
    shown = row.condition("Reconciling") if row is not None else None
    if shown is None or shown.reason != APPROVAL_WAITING:
        return None
    pending = store.pending_approval(name)
    return pending.sha if pending is not None else None


def _iso(stamp: datetime | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


def _latest_checks(store: Store, hosts: list[str],
                   runs: list[RunRow]) -> dict[str, dict[str, Any]]:
    """Per host, the check results of the newest finished run that checked it."""
    wanted = set(hosts)
    found: dict[str, dict[str, Any]] = {}
    for run in runs[:_SCAN]:
        if not wanted:
            break
        if run.kind not in _CHECK_KINDS or run.finished_at is None:
            continue
        detail = store.run(run.id)
        if detail is None:
            continue
        by_host: dict[str, list[CheckRow]] = {}
        for check in detail.checks:
            by_host.setdefault(check.host, []).append(check)
        errors = {h.host: h.error for h in detail.hosts
                  if h.verify_status == "fail" and h.error and h.host not in by_host}
        for host in sorted(wanted & (set(by_host) | set(errors))):
            services: dict[str, dict[str, Any]] = {}
            for check in by_host.get(host, []):
                cell = services.setdefault(check.service, {"pass": 0, "fail": 0,
                                                           "failing": []})
                if check.status == "pass":
                    cell["pass"] += 1
                else:
                    cell["fail"] += 1
                    cell["failing"].append({"check": check.check, "status": check.status,
                                            "message": check.message})
            found[host] = {"run": run.id, "at": _iso(run.finished_at),
                           "error": errors.get(host), "services": services}
            wanted.discard(host)
    return found


def _rollout(runs: list[RunRow], host_rows: list[StatusRow]) -> dict[str, Any] | None:
    """The newest run when it has no result yet, with the hosts whose status it has written."""
    if not runs or runs[0].result is not None:
        return None
    run = runs[0]
    started = run.started_at
    done = sorted(r.host for r in host_rows
                  if r.updated_at is not None and r.updated_at >= started)
    return {
        "run": run.id, "kind": run.kind, "started_at": started.isoformat(),
        "actor": run.actor, "reason": run.reason, "sha": run.sha, "message": run.message,
        "hosts_done": done,
        "hosts_pending": sorted(r.host for r in host_rows if r.host not in done),
    }


def _activity(runs: list[RunRow], today: datetime) -> list[dict[str, Any]]:
    """Finished apply runs per day over the last two weeks: succeeded and not."""
    first = (today - timedelta(days=_ACTIVITY_DAYS - 1)).date()
    good: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    for run in runs:
        if run.kind not in APPLY_KINDS or run.result is None or not run.sha:
            continue
        day = run.started_at.astimezone(UTC).date()
        if day < first:
            break  # newest first
        (good if run.result == "succeeded" else bad)[day.isoformat()] += 1
    days = [(first + timedelta(days=i)).isoformat() for i in range(_ACTIVITY_DAYS)]
    return [{"day": d, "succeeded": good[d], "failed": bad[d]} for d in days]


def _delivery(store: Store, environment: str) -> dict[str, Any]:
    """The four keys over the last ``_DELIVERY_DAYS`` days, with their per-day series."""
    from gitops.report import delivery

    try:
        found = delivery.delivery_metrics(store, environment=environment, days=_DELIVERY_DAYS)
    except Exception as exc:  # a bug there must not take the page down
        return {"available": False, "reason": f"failed ({type(exc).__name__})"}
    metrics = found.get(environment)
    if metrics is None:
        return {"available": False, "reason": "no rollout recorded yet"}
    return {"available": True, "data": metrics.as_dict()}


def _owners(store: Store | None) -> dict[str, str]:
    if store is None:
        return {}
    from gitops.report.teams import environment_teams

    return environment_teams(store)


def _comparison(store: Store | None, owners: dict[str, str],
                today: datetime | None) -> dict[str, Any]:
    """Teams and environments side by side over ``_DELIVERY_DAYS`` days: the four keys,
    their trends against the days before, a series per key, and the DORA bands."""
    if store is None:
        return {"available": False, "reason": "nothing recorded yet"}
    from gitops.report import delivery

    try:
        teams = delivery.compare(store, owners, by="team", days=_DELIVERY_DAYS, now=today)
        envs = delivery.compare(store, owners, by="environment", days=_DELIVERY_DAYS, now=today)
    except Exception as exc:  # a bug there must not take the page down
        return {"available": False, "reason": f"failed ({type(exc).__name__})"}
    return {"available": bool(envs), "days": _DELIVERY_DAYS,
            "teams_declared": any(name != delivery.NO_TEAM for name in teams),
            "teams": [g.as_dict() for g in teams.values()],
            "environments": [g.as_dict() | {"team": owners.get(g.name)} for g in envs.values()],
            "bands": delivery.DORA_BANDS}


def _incidents(store: Store, environment: str) -> dict[str, Any]:
    """Open incidents and the newest closed ones, newest first."""
    from gitops.report import incidents

    try:
        found = [i.as_dict() for i in incidents.incidents(store, environment=environment)]
    except Exception as exc:  # a bug there must not take the page down
        return {"available": False, "reason": f"failed ({type(exc).__name__})"}
    found.reverse()
    open_ = [i for i in found if i["status"] == "open"]
    closed = [i for i in found if i["status"] != "open"]
    return {"available": True, "open": open_, "closed": closed[:_CLOSED_INCIDENTS],
            "closed_total": len(closed)}


def _who_did(store: Store, environment: str, found: dict[str, Any],
             today: datetime | None) -> dict[str, Any]:
    """``found`` (``_incidents``, kept between polls: not changed here) with each incident's
    ``audit``: who did what about it, from the audit trail (``gitops.report.whodid``)."""
    if not found.get("available"):
        return found
    from gitops.report.whodid import about

    entries = store.audit_trail(environment=environment, limit=_AUDIT_SCAN)
    now = today or datetime.now(UTC)
    return {**found, **{key: [{**i, "audit": about(i, entries, now)} for i in found[key]]
                        for key in ("open", "closed")}}


# -- HTTP -----------------------------------------------------------------------------------


def _static_file(name: str) -> Any:
    return resources.files("gitops.web").joinpath("static", name)


def _refuse_html(refused: Response, again: bool, sso: str | None = None,
                 token: bool = True) -> Response:
    """The browser's version of a refusal: the sign-in form (401) or why there is none
    (403); one same-site reload first, so a SameSite=Strict cookie is sent when the page was
    opened from a link on another site."""
    refresh = "" if again else '<meta http-equiv="refresh" content="0; url=/?again=1">'
    button = ("" if sso is None else '<p><a class="button" id="signin-oidc" '
              f'href="/signin/oidc">Sign in with {html_escape(sso)}</a></p>')
    if refused.status_code == 401 and not token:
        text = f"<p>This status page needs you to sign in beyond loopback.</p>{button}"
    elif refused.status_code == 401:
        text = (
            f"{button}<p>This status page needs the daemon's API token beyond loopback.</p>"
            '<form id="signin" method="post" action="/api/session">'
            '<label>API token <input type="password" name="token" required '
            'autocomplete="current-password"></label> <button type="submit">Sign in</button>'
            '</form><p id="signin-error" class="error" role="alert"></p>'
            '<script src="/static/signin.js" defer></script>')
    else:
        text = "<p>This status page answers loopback clients only (no API token is set).</p>"
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{refresh}<title>gitops: sign in</title><link rel="stylesheet" '
        f'href="/static/page.css"></head><body><main><h1>gitops: sign in</h1>{text}</main>'
        "</body></html>"
    )
    return Response(body, status_code=refused.status_code, media_type="text/html",
                    headers=_HEADERS)


def routes(state_dir: Path, authorize: Authorize | None,
           database: Database | None = None, chain: Sequence[Link] = (),
           sessions: Sessions | None = None,
           answers: PageAnswers | None = None,
           oidc: OidcSettings | None = None, teams: Sequence[str] = ()) -> list[BaseRoute]:
    """The page's routes over the store in ``state_dir`` (or ``database``); ``authorize`` is
    the API's check (None: no token can be checked, so only loopback clients are served);
    ``chain``: the daemon's environments, for the promotion pipeline; ``sessions``: the
    signed-in browsers (default: a table of 12-hour sessions); ``answers``: where the
    ``/api/page`` answer is kept (default: a new ``PageAnswers``); ``oidc``: sign-in through
    an OpenID provider (``gitops.web.oidc``), whose people may read the page; ``teams``: the
    settings' (for post-mortems' action items)."""
    where = database or Database(state_dir)
    cache = RecordCache()
    sessions = sessions or Sessions(12 * 3600)
    kept = answers or PageAnswers()

    def check(request: Request) -> Response | None:
        if authorize is not None:  # the daemon's gate: tokens, sessions, trusted loopback
            return authorize(request)
        if is_local(request):
            return None
        return JSONResponse({"error": "the status page answers loopback clients only"},
                            status_code=403)

    def read(fn: Callable[[Store], Any]) -> Any:
        with where.open(readonly=True) as store:
            return fn(store)

    @guarded(check, refusal=lambda request, refused: _refuse_html(
        refused, again="again" in request.query_params,
        sso=None if oidc is None else oidc.label, token=authorize is not None))
    async def index(request: Request) -> Response:
        html = _static_file("index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @guarded(check, exempt=lambda request: request.path_params["name"] not in _STATIC
             or request.path_params["name"] in _PUBLIC)
    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        data = _static_file(name).read_bytes()
        return Response(data, media_type=_STATIC[name], headers=_HEADERS)

    @guarded(check)
    def api_page(request: Request) -> Response:
        try:
            body = read(lambda store: kept.get(
                (store.page_mark(), _hour(None)),
                lambda: page_data(store, chain=chain, cache=cache, teams=teams)))
        except NoStore:  # nothing recorded yet: an empty page
            body = serialize(page_data(None, chain=chain, teams=teams))
        except StoreOutdated as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers=_HEADERS)
        return Response(body, media_type="application/json", headers=_HEADERS)

    @guarded(check)
    def api_run(request: Request) -> Response:
        try:
            run_id = int(request.path_params["run_id"])
        except ValueError:
            return JSONResponse({"error": "not a run id"}, status_code=404)
        if not 0 < run_id < _MAX_ID:
            return JSONResponse({"error": "no such run"}, status_code=404, headers=_HEADERS)
        try:
            data = read(lambda store: run_detail(store, run_id))
        except (NoStore, StoreOutdated):
            data = None
        if data is None:
            return JSONResponse({"error": "no such run"}, status_code=404, headers=_HEADERS)
        return JSONResponse(data, headers=_HEADERS)

    @guarded(check)
    def preview_page(request: Request) -> Response:
        try:
            preview_id = int(request.path_params["preview_id"])
            row = (read(lambda store: store.preview(preview_id))
                   if 0 < preview_id < _MAX_ID else None)
        except (ValueError, NoStore, StoreOutdated):
            row = None
        if row is None:
            return Response("no such preview", status_code=404, media_type="text/plain")
        from gitops.daemon.preview import marker, render_comment

        text = (render_comment(row.report, mark=marker(row.environment)) if row.report
                else f"preview {row.id} of {row.branch}: {row.state}. {row.summary}")
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        html = (f"<!doctype html><html lang=en><meta charset=utf-8><title>gitops preview "
                f"{row.id}</title><link rel=stylesheet href=/static/page.css><main>"
                f"<h1>Preview #{row.id}</h1><pre class=report>{escaped}</pre></main></html>")
        return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)

    return [
        *session_routes(sessions, authorize),
        *(oidc_routes(oidc, sessions) if oidc is not None else []),
        Route("/previews/{preview_id}", preview_page, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/page", api_page, methods=["GET"]),
        Route("/api/page/runs/{run_id}", api_run, methods=["GET"]),
    ]
