"""Owning teams, the four keys side by side per team, post-mortems and the digest.

One recorded history with known answers: team ``payments`` owns ``prod`` and ``staging``,
team ``search`` owns ``search-prod``; a window of 7 days ending now against the 7 before.
The runs are written through ``Store`` as the reconciler writes them (``test_delivery.record``),
the owners through ``Store.set_owners`` as ``reconcile`` records an inventory's ``team``.

Expected, previous window -> this window:

- payments: deployments 2 -> 3 (0.29 -> 0.43/day, better); lead time median 4560 s
  (7260, 1860) -> 3660 s (3660, 3660, 7260), better; change failure rate 1/3 -> 0/3, better;
  time to restore 3540 s -> none.
- search: deployments 1 -> 1 (same); lead time 3660 s -> 1860 s, better; change failure rate
  0/1 -> 1/2, worse; time to restore none -> 7140 s.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner
from test_delivery import BAD_CHECK, record
from test_page import CHROMIUM, CHROMIUM_ARGS, _browser_unavailable

from gitops.cli import main
from gitops.daemon.digest import Schedule
from gitops.daemon.loop import Daemon
from gitops.errors import InvalidDeclaration, UsageError
from gitops.pipeline.load import load
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.report import incidents
from gitops.report.delivery import NO_TEAM, compare
from gitops.report.teams import environment_teams
from gitops.settings import DigestSettings, Settings
from gitops.web import metrics, page
from gitops.web.server import bound_port, create_app, start_in_thread, stop

DAYS = 7
OWNERS = {"prod": "payments", "staging": "payments", "search-prod": "search"}


def two_teams(store: Store, now: datetime) -> None:
    """The history of the module docstring, relative to ``now`` (noon-aligned offsets)."""

    def at(days_ago: float, hours: float = 0) -> datetime:
        return now - timedelta(days=days_ago) + timedelta(hours=hours)

    # staging: s1 in the previous window; s2, s3 in this one
    record(store, "reconcile", "s1", start=at(10), seconds=60, result="succeeded",
           committed=at(10, -2), env="staging")
    record(store, "reconcile", "s2", start=at(5), seconds=60, result="succeeded",
           committed=at(5, -1), env="staging")
    record(store, "reconcile", "s3", start=at(4), seconds=60, result="succeeded",
           committed=at(4, -1), env="staging")
    # prod: p1 fails, p2 restores it 59 min later (previous window); p3 in this one
    record(store, "reconcile", "p1", start=at(9), seconds=120, result="failed",
           hosts=("host1",), committed=at(9, -3), failed_checks={"host1": BAD_CHECK}, env="prod")
    record(store, "reconcile", "p2", start=at(9, 1), seconds=60, result="succeeded",
           committed=at(9, 0.5), env="prod")
    record(store, "reconcile", "p3", start=at(3), seconds=60, result="succeeded",
           committed=at(3, -2), env="prod")
    # search-prod: q1 (previous); q2 fails, q3 restores it 1 h 59 min later (this window)
    record(store, "reconcile", "q1", start=at(11), seconds=60, result="succeeded",
           committed=at(11, -1), env="search-prod")
    record(store, "reconcile", "q2", start=at(2), seconds=120, result="failed",
           hosts=("host1",), committed=at(2, -1), failed_checks={"host1": BAD_CHECK},
           env="search-prod")
    record(store, "reconcile", "q3", start=at(2, 2), seconds=60, result="succeeded",
           committed=at(2, 1.5), env="search-prod")
    for env, team in OWNERS.items():
        store.set_owners(env, "inventory", team)
        store.set_status(env, ENVIRONMENT, [Condition("Ready", "True", "ReconciliationSucceeded",
                                                      "Verified")])


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def state(tmp_path: Path, now: datetime) -> Path:
    folder = tmp_path / "state"
    with Store(folder) as store:
        two_teams(store, now)
    return folder


def _check_payments_and_search(groups: dict[str, Any]) -> None:
    """The known answers of the module docstring, on ``as_dict()`` output."""
    pay, search = groups["payments"], groups["search"]
    assert pay["environments"] == ["prod", "staging"]
    assert pay["deployments"] == 3 and pay["previous"]["deployments"] == 2
    assert pay["deployment_frequency_per_day"] == pytest.approx(3 / 7)
    assert pay["trends"]["deployment_frequency_per_day"]["direction"] == "up"
    assert pay["trends"]["deployment_frequency_per_day"]["better"] is True
    assert pay["lead_time_median_s"] == pytest.approx(3660)
    assert pay["previous"]["lead_time_median_s"] == pytest.approx(4560)
    assert pay["trends"]["lead_time_median_s"]["better"] is True
    assert pay["change_failure_rate"] == 0 and pay["previous"]["change_failure_rate"] == 1 / 3
    assert pay["trends"]["change_failure_rate"]["direction"] == "down"
    assert pay["time_to_restore_median_s"] is None
    assert pay["previous"]["time_to_restore_median_s"] == pytest.approx(3540)
    assert pay["trends"]["time_to_restore_median_s"]["direction"] is None
    assert search["environments"] == ["search-prod"]
    assert search["deployments"] == 1
    assert search["trends"]["deployment_frequency_per_day"]["direction"] == "same"
    assert search["lead_time_median_s"] == pytest.approx(1860)
    assert search["trends"]["lead_time_median_s"]["better"] is True
    assert search["change_failure_rate"] == 0.5
    assert search["trends"]["change_failure_rate"] == {
        "previous": 0.0, "change": 0.5, "direction": "up", "better": False}
    assert search["time_to_restore_median_s"] == pytest.approx(7140)


def test_compare_by_team_gives_the_known_answers(state: Path, now: datetime) -> None:
    """Two teams over three environments: each key and its trend as the docstring says."""
    with Store(state, readonly=True) as store:
        groups = compare(store, environment_teams(store), by="team", days=DAYS, now=now)
        by_env = compare(store, environment_teams(store), by="environment", days=DAYS, now=now)
    _check_payments_and_search({n: g.as_dict() for n, g in groups.items()})
    assert set(by_env) == {"prod", "staging", "search-prod"}
    assert by_env["staging"].current.deployments == 2
    series = groups["payments"].series
    assert len(series) == DAYS and sum(k.deployments for k in series) == 3


def test_cli_metrics_by_team(state: Path) -> None:
    """``gitops metrics --by team`` prints and emits both teams with their trends."""
    args = ["metrics", "--by", "team", "--days", str(DAYS), "--state-dir", str(state)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["by"] == "team" and "elite" in dict(data["bands"]["lead_time_median_s"])
    _check_payments_and_search(data["groups"])
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "team payments (environments: prod, staging)" in text.output
    assert "0.43/day (3)" in text.output and "up from 0.29/day (better)" in text.output
    assert "50% (1 of 2)" in text.output and "up from 0% (worse)" in text.output
    assert "what good looks like" in text.output


def _get(app: Any, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gitops") as http:
            return await http.get(path)

    return asyncio.run(go())


def test_api_delivery_by_team(state: Path) -> None:
    """``GET /api/delivery?by=team`` answers what ``gitops metrics --by team --json`` prints;
    the owners are in ``/api/teams`` and a team label in ``/metrics``."""
    from starlette.applications import Starlette

    app = Starlette(routes=metrics.routes(state))
    answer = _get(app, f"/api/delivery?by=team&days={DAYS}")
    assert answer.status_code == 200, answer.text
    _check_payments_and_search(answer.json()["groups"])
    assert _get(app, "/api/delivery?by=owner").status_code == 400
    assert _get(app, "/api/teams").json()["environments"] == dict(sorted(OWNERS.items()))
    scrape = _get(app, "/metrics").text
    assert 'gitops_environment_team_info{environment="prod",team="payments"} 1.0' in scrape
    assert 'gitops_team_deployment_frequency_per_day{team="search",window="90d"}' in scrape


def test_settings_owner_wins_and_no_team_is_its_own_group(tmp_path: Path, now: datetime) -> None:
    """The daemon settings' team of an environment wins over its inventory's; an
    environment nobody owns is compared under "(none)"."""
    with Store(tmp_path / "s") as store:
        two_teams(store, now)
        store.set_owners("prod", "settings", "search")
        store.set_owners("staging", "inventory", None)
        owners = environment_teams(store)
        assert owners == {"prod": "search", "search-prod": "search"}
        groups = compare(store, owners, by="team", days=DAYS, now=now)
    assert groups["search"].environments == ("prod", "search-prod")
    assert groups[NO_TEAM].environments == ("staging",)


# -- post-mortems -----------------------------------------------------------------------------


def test_annotation_and_action_reach_api_page_and_report(state: Path, tmp_path: Path) -> None:
    """An annotation and an action item added through the CLI appear in the API, the page
    data and the Markdown report; the incident is reviewed once both are in place."""
    with Store(state, readonly=True) as store:
        found = incidents.incidents(store, "search-prod")
    assert len(found) == 1 and not found[0].reviewed and found[0].team == "search"
    iid = found[0].id
    run = CliRunner()
    out = run.invoke(main, ["incidents", "annotate", iid, "--state-dir", str(state),
                            "--summary", "The upstream of app did not start on host1.",
                            "--causes", "the canary check ran before the unit was up"])
    assert out.exit_code == 0, out.output
    assert "post-mortem reviewed" in out.output
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state), "--add",
                            "Wait for the unit before the HTTP check"])
    assert out.exit_code == 0, out.output
    assert "no owner yet" in out.output and "not reviewed yet" in out.output
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state),
                            "--assign", "1", "--team", "paymnts"])
    assert out.exit_code == 2 and "unknown team 'paymnts'" in out.output
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state), "--json",
                            "--assign", "1", "--team", "search"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["incident"]["reviewed"] is True

    from starlette.applications import Starlette

    api = _get(Starlette(routes=metrics.routes(state)), "/api/incidents").json()
    pm = next(i for i in api if i["id"] == iid)["postmortem"]
    assert pm["summary"]["text"] == "The upstream of app did not start on host1."
    assert pm["causes"][0]["text"] == "the canary check ran before the unit was up"
    assert pm["summary"]["by"] and pm["summary"]["at"]
    assert pm["actions"][0]["team"] == "search" and pm["actions"][0]["state"] == "open"
    with Store(state, readonly=True) as store:
        data = page.page_data(store)
        env = next(e for e in data["environments"] if e["name"] == "search-prod")
        assert env["team"] == "search"
        assert env["incidents"]["closed"][0]["postmortem"]["reviewed"] is True
        report = incidents.render_markdown(incidents.find(store, iid))
    assert "## Post-mortem" in report and "Status: reviewed." in report
    assert "The upstream of app did not start on host1." in report
    # assigned after it was added: the report says who gave it its team
    assert "| 1 | Wait for the unit before the HTTP check | search (given by " in report
    assert pm["actions"][0]["team_by"] and pm["actions"][0]["team_at"]
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state),
                            "--done", "1"])
    assert out.exit_code == 0 and "[done]" in out.output


def test_postmortem_bad_input_is_a_usage_error(state: Path) -> None:
    """An unknown incident, an empty text or no section: exit 2, one line, nothing written."""
    run = CliRunner()
    out = run.invoke(main, ["incidents", "annotate", "nope-1", "--state-dir", str(state),
                            "--summary", "x"])
    assert out.exit_code == 2 and "no incident 'nope-1'" in out.output
    with Store(state, readonly=True) as store:
        iid = incidents.incidents(store, "prod")[0].id
    out = run.invoke(main, ["incidents", "annotate", iid, "--state-dir", str(state),
                            "--summary", "   "])
    assert out.exit_code == 2 and "the summary is empty" in out.output
    out = run.invoke(main, ["incidents", "annotate", iid, "--state-dir", str(state)])
    assert out.exit_code == 2 and "name a section" in out.output
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state)])
    assert out.exit_code == 2
    with Store(state, readonly=True) as store:
        assert store.notes() == [] and store.actions() == []


def test_postmortem_api_needs_the_token_and_records_the_actor(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``POST /api/incidents/ID/annotate`` and ``.../actions`` need a token; what they write
    is recorded as the caller (``api``), never as a name the body gives, unless the token
    acts on behalf of people (``pmbot (for ann)``)."""
    from gitops.daemon.tokens import digest

    monkeypatch.setenv("TM_TOKEN", "pm-token-0f3a")
    settings = Settings(state_dir=state, api_token={"env": "TM_TOKEN"}, teams=["search"],
                        environments=[{"name": "search-prod", "repo": str(tmp_path)}])
    app = create_app(Daemon(settings), settings)
    with Store(state) as store:
        iid = incidents.incidents(store, "search-prod")[0].id
        store.add_token("pmbot", digest("pmbot-secret"), role="operator", team="search",
                        created_by="test", expires_at=None, on_behalf=True)

    async def post(path: str, body: Any, token: str | None) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:9469") as http:
            return await http.post(path, json=body, headers=headers)

    refused = asyncio.run(post(f"/api/incidents/{iid}/annotate", {"summary": "x"}, None))
    assert refused.status_code == 401
    forged = asyncio.run(post(f"/api/incidents/{iid}/annotate",
                              {"impact": "x", "actor": "ann"}, "pm-token-0f3a"))
    assert forged.status_code == 400 and "'actor'" in forged.json()["error"]
    ok = asyncio.run(post(f"/api/incidents/{iid}/annotate",
                          {"impact": "search answered 502 for 2 h", "actor": "ann"},
                          "pmbot-secret"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["postmortem"]["impact"] == {
        "text": "search answered 502 for 2 h", "by": "pmbot (for ann)",
        "at": ok.json()["postmortem"]["impact"]["at"]}
    added = asyncio.run(post(f"/api/incidents/{iid}/actions",
                             {"text": "Alert on 502s", "team": "search"}, "pm-token-0f3a"))
    assert added.status_code == 200 and added.json()["action"]["created_by"] == "api"
    done = asyncio.run(post(f"/api/incidents/{iid}/actions/1", {"done": True},
                            "pm-token-0f3a"))
    assert done.status_code == 200 and done.json()["action"]["state"] == "done"
    bad = asyncio.run(post(f"/api/incidents/{iid}/actions", {"text": 3}, "pm-token-0f3a"))
    assert bad.status_code == 400
    missing = asyncio.run(post("/api/incidents/nope-1/annotate", {"summary": "x"},
                               "pm-token-0f3a"))
    assert missing.status_code == 404



def test_a_postmortem_entry_rewrites_the_report_at_once(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``incidents annotate`` / ``action`` (CLI) and ``POST /api/incidents/ID/...``
    write is in ``reports/ID.md`` at once, not "Not written yet" until the next run."""
    with Store(state) as store:
        iid = incidents.incidents(store, "search-prod")[0].id
        incidents.write_reports(store, state / "reports")  # as the daemon left it
    report = state / "reports" / f"{iid}.md"
    assert "_Not written yet: What happened" in report.read_text()
    run = CliRunner()
    out = run.invoke(main, ["incidents", "annotate", iid, "--state-dir", str(state),
                            "--summary", "The canary's app did not start."])
    assert out.exit_code == 0, out.output
    text = report.read_text()
    assert "The canary's app did not start." in text
    assert "_Not written yet: What happened" not in text
    out = run.invoke(main, ["incidents", "action", iid, "--state-dir", str(state), "--add",
                            "Wait for the unit before the HTTP check"])
    assert out.exit_code == 0, out.output
    assert "| 1 | Wait for the unit before the HTTP check |" in report.read_text()

    monkeypatch.setenv("TM_TOKEN", "pm-token-0f3a")
    settings = Settings(state_dir=state, api_token={"env": "TM_TOKEN"}, teams=["search"],
                        allowed_hosts=["gitops"],
                        environments=[{"name": "search-prod", "repo": str(tmp_path)}])
    app = create_app(Daemon(settings), settings)

    async def post(path: str, body: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gitops") as http:
            return await http.post(path, json=body,
                                   headers={"Authorization": "Bearer pm-token-0f3a"})

    ok = asyncio.run(post(f"/api/incidents/{iid}/annotate",
                          {"impact": "search answered 502 for 2 h"}))
    assert ok.status_code == 200, ok.text
    assert "search answered 502 for 2 h" in report.read_text()
    done = asyncio.run(post(f"/api/incidents/{iid}/actions/1", {"done": True}))
    assert done.status_code == 200, done.text
    assert "| 1 | Wait for the unit before the HTTP check | no owner yet | done (" \
        in report.read_text()


# -- the page -------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    reason = _browser_unavailable()
    if reason is not None:
        pytest.skip(reason)
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    folder = tempfile.mkdtemp(prefix="gitops-teams-chromium-")
    with sync_playwright() as pw:
        contexts: list[Any] = []

        def open_page(url: str, width: int, height: int) -> Any:
            context = pw.chromium.launch_persistent_context(
                f"{folder}/{len(contexts)}", executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": width, "height": height})
            contexts.append(context)
            p = context.new_page()
            p.set_default_timeout(15_000)
            p.goto(url)
            p.wait_for_selector('[data-testid="comparison"] [data-team]')
            return p

        try:
            yield open_page
        finally:
            for context in contexts:
                context.close()
            shutil.rmtree(folder, ignore_errors=True)


def test_page_shows_both_teams_side_by_side(tmp_path: Path, now: datetime,
                                           chromium: Any) -> None:
    """In headless Chromium both teams stand side by side with their trends, a chart per
    key draws one line per team, and on a phone nothing overflows sideways."""
    from starlette.applications import Starlette

    state = tmp_path / "state"
    with Store(state) as store:  # the page's window is 30 days: the same split of the runs
        two_teams(store, now - timedelta(days=23))
        iid = incidents.incidents(store, "search-prod")[0].id
        incidents.annotate(store, iid, {"summary": "502s after the canary"}, actor="ann")
        incidents.add_action(store, iid, "Wait for the unit", "search", actor="ann")
    server, thread = start_in_thread(Starlette(routes=page.routes(state, None)), "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{bound_port(server)}/"
        p = chromium(url, 1280, 900)
        cards = p.locator('[data-testid="comparison"] [data-team]')
        assert cards.count() == 2
        pay = p.locator('[data-team="payments"]')
        search = p.locator('[data-team="search"]')
        box_pay, box_search = pay.bounding_box(), search.bounding_box()
        assert abs(box_pay["y"] - box_search["y"]) < 2 and box_pay["x"] < box_search["x"]
        freq = pay.locator('[data-key="deployment_frequency_per_day"]')
        assert "0.10/day" in freq.inner_text() and "from 0.07/day (better)" in freq.inner_text()
        cfr = search.locator('[data-key="change_failure_rate"]')
        assert "50 %" in cfr.inner_text() and "(worse)" in cfr.inner_text()
        assert cfr.locator("[data-trend]").get_attribute("data-trend") == "up"
        chart = p.locator('svg[data-chart="deployment_frequency_per_day"]')
        assert chart.locator("polyline.series").count() >= 2
        assert p.locator('[data-testid="bands"]').count() == 1
        item = p.locator(f'[data-incident="{iid}"]')
        item.locator("summary").click()
        pm = item.locator('[data-testid="postmortem"]')
        assert "502s after the canary" in pm.inner_text()
        assert "Wait for the unit" in pm.inner_text() and "team: search" in pm.inner_text()
        phone = chromium(url, 390, 844)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        a = phone.locator('[data-team="payments"]').bounding_box()
        b = phone.locator('[data-team="search"]').bounding_box()
        assert b["y"] > a["y"]  # stacked on a phone
    finally:
        stop(server, thread)


# -- the digest -----------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[dict[str, str], Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), json.loads(body)))
        self.send_response(403 if self.path.endswith("/refuse") else 200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
    got: list[tuple[dict[str, str], Any]] = []
    handler = type("Handler", (_Receiver,), {"got": got})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def test_digest_arrives_in_slack_format_on_schedule(
        tmp_path: Path, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's digest is due at the cron schedule (its clock injected) and reaches a
    Slack receiver with the figures per team, incidents, post-mortems and action items."""
    url, got = receiver
    monkeypatch.setenv("TM_SLACK", url)
    nine = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)  # a Monday
    state = tmp_path / "state"
    with Store(state) as store:
        two_teams(store, nine)
        iid = incidents.incidents(store, "search-prod")[0].id
        incidents.add_action(store, iid, "Alert on 502s", None, actor="ann")
    settings = Settings(state_dir=state, environments=[{"name": "prod", "repo": str(tmp_path)}],
                        digest={"schedule": "0 9 * * 1", "days": DAYS,
                                "notifiers": [{"type": "slack", "url": {"env": "TM_SLACK"}},
                                              {"type": "webhook", "url": {"env": "TM_SLACK"}}]})
    daemon = Daemon(settings)
    assert daemon.digest_tick(nine - timedelta(hours=1)) is None  # learns the next match
    assert daemon.digest_tick(nine - timedelta(seconds=1)) is None and got == []
    deliveries = daemon.digest_tick(nine)
    assert deliveries is not None and [d.ok for d in deliveries] == [True, True]
    assert daemon.digest_tick(nine + timedelta(minutes=1)) is None  # once per match
    assert len(got) == 2
    hook_headers, hook = got[1]
    assert hook_headers["X-Gitops-Event"] == "digest" and hook["schema"] == "gitops.digest/v1"
    assert hook["teams"]["payments"]["deployments"] == 3
    assert hook["teams"]["search"]["trends"]["change_failure_rate"]["better"] is False
    assert hook["open_actions"] == {"no owner yet": [{"incident": hook["incidents"]["opened"][0][
        "id"], "id": 1, "text": "Alert on 502s"}]}
    headers, body = got[0]
    assert headers["Content-Type"] == "application/json"
    assert body["text"] == ("Delivery digest 2026-03-09 to 2026-03-16 (7 days, against the 7 "
                            "before)")
    assert all(b["type"] == "section" and b["text"]["type"] == "mrkdwn" for b in body["blocks"])
    text = "\n".join(b["text"]["text"] for b in body["blocks"])
    assert "*payments* (prod, staging)" in text and "*search* (search-prod)" in text
    assert "deployment frequency: 0.43/day (up from 0.29/day, better)" in text
    assert "lead time (median): 61min (down from 76min, better)" in text
    assert "change failure rate: 50% (up from 0%, worse)" in text
    assert "time to restore (median): 119min (nothing to compare with)" in text
    assert "Incidents: 1 opened, 1 restored: " + iid in text
    assert "Post-mortems not reviewed: 2" in text
    assert "Open action items: no owner yet 1" in text


def test_each_digest_delivery_is_recorded_under_its_notifiers_name(
        tmp_path: Path, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest's deliveries go into each notifier's record of deliveries under the name its
    events' go under (a global one's own, an environment's ``prod-webhook-1``): one that
    refuses the digest is seen there, as a failing notifier is, not only in the log."""
    url, _ = receiver
    monkeypatch.setenv("TM_OK", url)
    monkeypatch.setenv("TM_NO", url.replace("/hook", "/refuse"))
    nine = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)  # a Monday
    state = tmp_path / "state"
    with Store(state) as store:
        two_teams(store, nine)
    settings = Settings(
        state_dir=state,
        notifiers=[{"type": "webhook", "url": {"env": "TM_OK"}, "events": ["digest"],
                    "name": "ops-hook"}],
        environments=[{"name": "prod", "repo": str(tmp_path),
                       "notifiers": [{"type": "webhook", "url": {"env": "TM_NO"}}]}],
        digest={"schedule": "0 9 * * 1", "days": DAYS})
    daemon = Daemon(settings)
    assert daemon.digest_tick(nine - timedelta(hours=1)) is None
    deliveries = daemon.digest_tick(nine)
    assert deliveries is not None
    assert [(d.notifier, d.state) for d in deliveries] == [("ops-hook", "delivered"),
                                                             ("prod-webhook-1", "refused")]
    with Store(state, readonly=True) as store:
        recorded = {(r["notifier"], r["event"], r["status"]) for r in store.deliveries()}
    assert recorded == {("ops-hook", "digest", "delivered"),
                        ("prod-webhook-1", "digest", "refused")}


def test_gitops_digest_send_records_each_delivery(
        tmp_path: Path, state: Path, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gitops digest --send`` says each delivery, exits 1 when one is refused, and records
    them as the daemon's digest does: the refusing notifier is seen failing on the page."""
    url, got = receiver
    monkeypatch.setenv("TM_OK", url)
    monkeypatch.setenv("TM_NO", url.replace("/hook", "/refuse"))
    toml = tmp_path / "gitops.toml"
    toml.write_text(f'state_dir = "{state}"\n'
                    '[[notifiers]]\nname = "ops-hook"\ntype = "webhook"\n'
                    'url = {env = "TM_OK"}\nevents = ["digest"]\n'
                    f'[[environments]]\nname = "prod"\nrepo = "{tmp_path}"\n'
                    '[[environments.notifiers]]\ntype = "webhook"\nurl = {env = "TM_NO"}\n')
    monkeypatch.setenv("GITOPS_CONFIG", str(toml))
    out = CliRunner().invoke(main, ["digest", "--send", "--days", str(DAYS)])
    assert out.exit_code == 1, out.output
    assert len(got) == 2
    assert "ops-hook" in out.stderr and "prod-webhook-1" in out.stderr
    with Store(state, readonly=True) as store:
        recorded = {(r["notifier"], r["event"], r["status"]) for r in store.deliveries()}
    assert recorded == {("ops-hook", "digest", "delivered"),
                        ("prod-webhook-1", "digest", "refused")}


def test_gitops_digest_prints_the_figures(state: Path) -> None:
    """``gitops digest --days 7`` prints each team's keys with their change."""
    out = CliRunner().invoke(main, ["digest", "--days", str(DAYS), "--state-dir", str(state)])
    assert out.exit_code == 0, out.output
    assert "deployment frequency: 0.43/day (up from 0.29/day, better)" in out.output
    assert "change failure rate: 50% (up from 0%, worse)" in out.output
    assert "Incidents: 1 opened, 1 restored" in out.output
    data = json.loads(CliRunner().invoke(
        main, ["digest", "--json", "--days", str(DAYS), "--state-dir", str(state)]).output)
    assert data["schema"] == "gitops.digest/v1"
    assert data["teams"]["search"]["change_failure_rate"] == 0.5


def test_schedule_fires_once_per_match() -> None:
    """A digest schedule is due once at each cron match, read in its time zone."""
    s = Schedule(DigestSettings(schedule="30 8 * * *", timezone="Europe/Berlin"))
    t = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
    assert not s.due(t)
    assert not s.due(t + timedelta(minutes=29))
    assert s.due(t + timedelta(minutes=30))  # 08:30 in Berlin (summer time) is 06:30 UTC
    assert not s.due(t + timedelta(minutes=31))


# -- declarations -------------------------------------------------------------------------


def _repo(root: Path, team: str, teams_yml: str | None = "teams:\n  - payments\n  - search\n"
          ) -> Path:
    (root / "inventories").mkdir(parents=True)
    (root / "deploys/web").mkdir(parents=True)
    (root / "deploys/web/deploy.py").write_text("")
    if teams_yml is not None:
        (root / "teams.yml").write_text(teams_yml)
    (root / "inventories/prod.yml").write_text(
        "settings:\n"
        f"  team: {team}\n"
        "  service_teams:\n"
        "    web: search\n"
        "hosts:\n"
        "  web-1:\n"
        "    address: 10.0.0.1\n"
        "    groups: [all]\n"
        "    services:\n"
        "      web: {}\n")
    return root


def test_unknown_team_in_an_inventory_is_invalid_at_its_line(tmp_path: Path) -> None:
    """An inventory naming a team teams.yml does not declare: invalid, at file and line."""
    with pytest.raises(InvalidDeclaration) as caught:
        load(_repo(tmp_path / "a", "paymnts"), "prod")
    assert str(caught.value).splitlines()[1].strip() == (
        "inventories/prod.yml:2 settings.team: unknown team 'paymnts' "
        "(declared in teams.yml: payments, search)")
    state = load(_repo(tmp_path / "b", "payments"), "prod")
    assert state.settings.team == "payments" and state.settings.service_teams == {"web": "search"}
    with pytest.raises(InvalidDeclaration) as caught:
        load(_repo(tmp_path / "c", "payments", None), "prod")
    assert "inventories/prod.yml:2 settings.team: unknown team 'payments' (there is no " \
        "teams.yml" in str(caught.value)
    with pytest.raises(InvalidDeclaration) as caught:
        load(_repo(tmp_path / "d", "payments", "teams:\n  - pay ments\n"), "prod")
    assert "teams.yml:2 teams.0: team name should be" in str(caught.value)


def test_unknown_team_in_the_daemon_settings_is_named_at_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment of the settings naming a team not in ``teams``: exit 2 at file:line."""
    toml = tmp_path / "gitops.toml"
    toml.write_text('teams = ["payments"]\n\n[[environments]]\nname = "prod"\nrepo = "/r"\n'
                    'team = "search"\n')
    monkeypatch.setenv("GITOPS_CONFIG", str(toml))
    from gitops import settings as settings_

    with pytest.raises(UsageError) as caught:
        settings_.load()
    assert str(caught.value) == (f"settings: {toml}:6 environments.0.team: unknown team "
                                 "'search' (teams: payments)")


def test_owners_and_postmortems_in_either_database(store_backend: Any, now: datetime) -> None:
    """SQLite and PostgreSQL keep owners, post-mortem entries and action items alike."""
    with store_backend.open() as store:
        two_teams(store, now)
        store.set_owners("prod", "settings", "search", {"web": "payments"})
        iid = incidents.incidents(store, "prod")[0].id
        incidents.annotate(store, iid, {"summary": "s", "causes": "c1"}, actor="ann")
        incidents.annotate(store, iid, {"summary": "s2", "causes": "c2"}, actor="bob")
        item = incidents.add_action(store, iid, "do it", None, actor="ann")
        incidents.update_action(store, iid, item.id, actor="bob", done=True, team="search",
                                teams={"search"})
        incidents.update_action(store, iid, item.id, actor="carl", team="search",
                                teams={"search"})  # the same team: who gave it stays bob
    with store_backend.open(readonly=True) as store:
        found = incidents.find(store, iid)
        assert environment_teams(store)["prod"] == "search"
        assert compare(store, environment_teams(store), days=DAYS, now=now)[
            "search"].environments == ("prod", "search-prod")
    pm = found.postmortem
    assert pm["summary"]["text"] == "s2" and pm["summary"]["by"] == "bob"
    assert [c["text"] for c in pm["causes"]] == ["c1", "c2"]
    assert pm["actions"][0]["state"] == "done" and pm["actions"][0]["done_by"] == "bob"
    assert pm["actions"][0]["team_by"] == "bob" and pm["actions"][0]["team_at"]
    assert found.reviewed and found.team == "search"
