"""The status page in a real headless browser: Debian's chromium driven by Playwright.

A real store in ``tmp_path`` is written through ``Store`` methods with the records the
pipeline writes (3 hosts lab-1..3, services base/app/web); the page's routes are served by a
real uvicorn on 127.0.0.1. Browser tests are skipped (with the reason) when chromium or
Playwright is missing, unless the environment variable CI is set: then they fail. The access
rules are tested in-process with a client address beyond loopback, without a browser.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import in_ci
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gitops.daemon import control
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    OpPlan,
    OpResult,
    Plan,
    Revision,
    VerifyReport,
)
from gitops.web import page
from gitops.web.server import bound_port, start_in_thread, stop
from gitops.web.sessions import Sessions

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTS = ("lab-1", "lab-2", "lab-3")
SERVICES = ("base", "app", "web")
CHECKS = {"base": ("packages", "ntp running"), "app": ("unit active",),
          "web": ("port 80 listening", "index served")}
ENV = "lab"
TOKEN = "page-token-never-shown-5d1e"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


BROKEN = re.compile(r"(?<![A-Za-z])(?:null|undefined|NaN)")
"""What the page shows when its script writes a value it lacks (``nullnull``, ``NaN %``)."""


def no_broken_text(p: Any) -> None:
    """No visible text of the page reads ``null``, ``undefined`` or ``NaN``."""
    text = p.locator("body").inner_text()
    lines = [line for line in text.splitlines() if BROKEN.search(line)]
    assert not lines, lines


def _browser_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; no `playwright install`)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


# -- recording through the store -------------------------------------------------------------


def revision(n: int, message: str | None = None) -> Revision:
    return Revision(sha=f"{n:x}" * 40 if n < 16 else f"{n:040x}", branch="main",
                    author="Ada <ada@example.org>",
                    committed_at=datetime.now(UTC) - timedelta(minutes=5),
                    message=message or f"commit number {n}\n\nbody")


def record_run(
    store: Store,
    rev: Revision,
    *,
    failing: dict[tuple[str, str, str], str] | None = None,
    unreachable: tuple[str, ...] = (),
) -> int:
    """One reconcile of ``rev`` on HOSTS as ``reconcile`` records it: the run, then the
    status of each host and of the environment. ``failing`` maps (host, service, check) to
    the failure message."""
    failing = failing or {}
    run_id = store.start_run(ENV, "reconcile", None, actor="test", reason="poll")
    store.set_revision(run_id, rev)
    plan = Plan(hosts=tuple(HostPlan(host=h, ops=tuple(
        OpPlan(name=f"{s}: configure", service=s, would_change=True, diff="secret-free diff")
        for s in SERVICES)) for h in HOSTS))
    apply = ApplyReport(hosts=tuple(
        HostApply(host=h, status="unreachable", error=f"{h}: ssh: connection refused")
        if h in unreachable else
        HostApply(host=h, status="ok", duration_s=1.5, ops=tuple(
            OpResult(name=f"{s}: configure", service=s, status="changed") for s in SERVICES))
        for h in HOSTS))
    results = tuple(
        CheckResult(host=h, service=s, check=c,
                    status="fail" if (h, s, c) in failing else "pass",
                    message=failing.get((h, s, c), ""), duration_s=0.1)
        for h in HOSTS if h not in unreachable for s in SERVICES for c in CHECKS[s])
    verify = VerifyReport(results=results)
    bad = sorted(set(apply.failed_hosts) | set(verify.failed_hosts))
    store.finish_run(run_id, "failed" if bad else "succeeded", plan=plan, apply=apply,
                     verify=verify, stage_s={"plan+apply": 3.0, "verify": 1.0})
    for h in HOSTS:
        if h in unreachable:
            cond = Condition("Ready", "False", "ApplyFailed", f"{h}: ssh: connection refused")
            store.set_status(ENV, h, [cond])
            continue
        fails = [f"{s}/{c}" for (fh, s, c) in failing if fh == h]
        cond = (Condition("Ready", "False", "VerificationFailed", "failed checks: "
                          + ", ".join(fails)) if fails else
                Condition("Ready", "True", "ReconciliationSucceeded", f"applied {rev.ref}"))
        store.set_status(ENV, h, [cond], applied=rev.ref, attempted=rev.ref,
                         verified=rev.ref if not fails else None)
    env_cond = (Condition("Ready", "False", "ReconciliationFailed", f"{len(bad)} host(s) failed")
                if bad else
                Condition("Ready", "True", "ReconciliationSucceeded", f"applied {rev.ref}"))
    store.set_status(ENV, ENVIRONMENT, [env_cond], attempted=rev.ref,
                     applied=None if bad else rev.ref)
    return run_id


def seed(state_dir: Path) -> None:
    """Run 1: A on all hosts. Run 2: B, lab-2's web fails a check, lab-3 is unreachable."""
    with Store(state_dir) as store:
        seed_store(store)


def seed_store(store: Store) -> None:
    record_run(store, revision(10))
    record_run(store, revision(11), unreachable=("lab-3",), failing={
        ("lab-2", "web", "port 80 listening"): "nothing listens on 0.0.0.0:80"})


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    state_dir: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The page's routes over a seeded store, served by uvicorn on 127.0.0.1."""
    state_dir = tmp_path / "state"
    seed(state_dir)
    server, thread = start_in_thread(Starlette(routes=page.routes(state_dir, None)),
                                     "127.0.0.1:0")
    try:
        yield Served(f"http://127.0.0.1:{bound_port(server)}", state_dir)
    finally:
        stop(server, thread)


@pytest.fixture
def browser_factory() -> Iterator[Any]:
    """Opens pages in headless chromium, each context with a fresh user data dir."""
    reason = _browser_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"browser test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    contexts: list[Any] = []
    dirs: list[str] = []
    with sync_playwright() as pw:

        def open_page(url: str, width: int = 1280, height: int = 900,
                      ready: str = "tr[data-host]") -> Any:
            user_data = tempfile.mkdtemp(prefix="gitops-page-chromium-")
            dirs.append(user_data)
            context = pw.chromium.launch_persistent_context(
                user_data, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height})
            contexts.append(context)
            p = context.new_page()
            p.set_default_timeout(15_000)
            errors: list[str] = []
            p.on("pageerror", lambda exc: errors.append(str(exc)))
            p.js_errors = errors
            p.goto(url)
            p.wait_for_selector(ready)
            pages.append(p)
            return p

        pages: list[Any] = []
        try:
            yield open_page
            for p in pages:  # whatever state the test left the page in
                no_broken_text(p)
        finally:
            for context in contexts:
                context.close()
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)


def cell(p: Any, host: str, service: str) -> Any:
    return p.locator(f'tr[data-host="{host}"] td[data-service="{service}"]')


# -- in the browser --------------------------------------------------------------------------


def test_page_lists_hosts_with_failing_check_and_revisions(
        served: Served, browser_factory: Any) -> None:
    """The grid lists the hosts, the failing check sits on lab-2 x web, and each host shows
    its applied revision against the desired one."""
    p = browser_factory(served.url + "/")
    rows = p.locator("table.grid tbody tr")
    assert [rows.nth(i).get_attribute("data-host") for i in range(rows.count())] == list(HOSTS)
    bad = cell(p, "lab-2", "web")
    assert "bad" in (bad.get_attribute("class") or "")
    bad.locator("summary").click()
    assert bad.locator('li[data-check="port 80 listening"]').is_visible()
    assert "nothing listens on 0.0.0.0:80" in bad.inner_text()
    assert "nothing listens" in (bad.locator("details").get_attribute("title") or "")
    for host in HOSTS:
        for service in SERVICES:
            if (host, service) != ("lab-2", "web"):
                assert "ok" in (cell(p, host, service).get_attribute("class") or ""), (
                    host, service)
    b, a = revision(11).sha[:10], revision(10).sha[:10]
    for host, applied in (("lab-1", b), ("lab-2", b), ("lab-3", a)):
        revs = p.locator(f'tr[data-host="{host}"] td.revs')
        assert revs.locator("code.applied").inner_text() == applied
        assert revs.locator("code.desired").inner_text() == b
        assert ("behind" in revs.inner_text()) == (host == "lab-3")
    # lab-3 was unreachable in run 2: its latest checks are run 1's (all pass)
    assert cell(p, "lab-3", "web").inner_text().strip() == "✓ 2"
    delivery = p.locator('[data-testid="delivery"]').inner_text()
    assert "change failure rate (1 of 2 rollouts)" in delivery and "50 %" in delivery
    incidents = p.locator('[data-testid="incidents"]')
    assert "Open (1)" in incidents.inner_text()
    incidents.locator("summary").first.click()
    assert "nothing listens on 0.0.0.0:80" in incidents.inner_text()
    assert "reconcile run 2 failed on lab-2, lab-3" in incidents.inner_text()
    assert p.js_errors == []


def test_page_changes_after_a_new_run_without_reload(
        served: Served, browser_factory: Any) -> None:
    """A run recorded while the page is open shows up by the page's own refresh, in the
    team comparison too (kept between polls until a run lands)."""
    with Store(served.state_dir) as store:
        store.set_owners(ENV, "inventory", "web")  # the team panel shows with a team only
    p = browser_factory(served.url + "/")
    p.evaluate("window.__notReloaded = true")
    no_broken_text(p)  # before the run; the fixture checks the page after it
    assert p.locator('tr.run-row[data-run="3"]').count() == 0
    assert p.locator('[data-testid="comparison"] [data-environment="lab"]'
                     ' [data-key="change_failure_rate"] .key-value').inner_text() == "50 %"
    with Store(served.state_dir) as store:
        record_run(store, revision(12, "fix the web service"))
    p.wait_for_selector('tr.run-row[data-run="3"]')
    p.wait_for_function(
        """() => document.querySelector('tr[data-host="lab-2"] td[data-service="web"]')
                 .classList.contains('ok')""")
    assert "fix the web service" in p.locator('tr.run-row[data-run="3"]').inner_text()
    c = revision(12).sha[:10]
    for host in HOSTS:
        assert p.locator(f'tr[data-host="{host}"] code.applied').inner_text() == c
    incidents = p.locator('[data-testid="incidents"]')
    assert "Open (0)" in incidents.inner_text() and "Closed (1)" in incidents.inner_text()
    assert "restored after" in incidents.inner_text()
    rate = ('[data-testid="comparison"] [data-environment="lab"]'
            ' [data-key="change_failure_rate"] .key-value')
    p.wait_for_function(f"""() => document.querySelector('{rate}').textContent === '33 %'""")
    assert p.evaluate("window.__notReloaded") is True
    assert p.js_errors == []


def test_running_rollout_shows_progress(served: Served, browser_factory: Any) -> None:
    """A run without a result shows as a rollout with the hosts whose status it wrote."""
    p = browser_factory(served.url + "/")
    assert p.locator('[data-testid="rollout"]').count() == 0
    with Store(served.state_dir) as store:
        run_id = store.start_run(ENV, "reconcile", None, actor="test", reason="webhook")
        store.set_revision(run_id, revision(13, "roll out 13"))
    rollout = p.locator('[data-testid="rollout"]')
    rollout.wait_for()
    assert f"run #{run_id}" in rollout.inner_text()
    assert "0/3 hosts done" in rollout.inner_text()
    with Store(served.state_dir) as store:
        store.set_status(ENV, "lab-1", [Condition("Ready", "True", "ReconciliationSucceeded",
                                                  "ok")], applied=revision(13).ref)
    p.wait_for_function("""() => document.querySelector('[data-testid="rollout"]')
                             .innerText.includes('1/3 hosts done')""")
    with Store(served.state_dir) as store:
        store.finish_run(run_id, "succeeded")
    p.wait_for_selector('[data-testid="rollout"]', state="detached")


def test_run_detail_opens_on_click(served: Served, browser_factory: Any) -> None:
    """Clicking a run in the history shows its hosts, checks and operations."""
    p = browser_factory(served.url + "/")
    p.locator('tr.run-row[data-run="2"]').click()
    panel = p.locator("#run")
    panel.locator("text=nothing listens on 0.0.0.0:80").wait_for()
    text = panel.inner_text()
    assert "Run #2: reconcile" in text
    assert "ssh: connection refused" in text
    assert "web: configure" in text
    p.locator("#run-close").click()
    assert panel.is_hidden()


def test_phone_viewport_has_no_horizontal_overflow(
        served: Served, browser_factory: Any) -> None:
    """At 390x844 the grid collapses and nothing scrolls sideways, run detail included."""
    p = browser_factory(served.url + "/", width=390, height=844)
    overflow = "document.scrollingElement.scrollWidth <= window.innerWidth"
    assert p.evaluate(overflow), p.evaluate("document.scrollingElement.scrollWidth")
    assert p.locator("table.grid thead").is_hidden()
    p.locator('tr.run-row[data-run="2"]').click()
    p.locator("#run >> text=nothing listens on 0.0.0.0:80").wait_for()
    assert p.evaluate(overflow), p.evaluate("document.scrollingElement.scrollWidth")


def test_suspension_and_hold_show_on_the_page(served: Served, browser_factory: Any) -> None:
    """A suspended environment with a rollback hold shows a Suspended condition (reason,
    actor, time) and the held revision."""
    with Store(served.state_dir) as store:
        control.hold(store, ENV, revision(10).sha, head=revision(11).sha, actor="bob",
                     reason="bad release")
        control.suspend(store, ENV, actor="alice", reason="db migration tonight")
    p = browser_factory(served.url + "/")
    conditions = p.locator("ul.conditions").first
    conditions.locator("text=Suspended=True").wait_for()
    text = conditions.inner_text()
    assert "SuspendedByOperator" in text and "suspended by alice since" in text
    assert "db migration tonight" in text
    assert f"held at {revision(10).sha[:10]}" in p.locator(".env-title").first.inner_text()
    assert p.js_errors == []


def test_markup_from_the_store_renders_as_text(served: Served, browser_factory: Any) -> None:
    """A commit message and a check message holding <script> show as text, never run."""
    with Store(served.state_dir) as store:
        record_run(store, revision(14, XSS), failing={("lab-1", "app", "unit active"): XSS})
    p = browser_factory(served.url + "/")
    row = p.locator('tr.run-row[data-run="3"]')
    assert XSS.splitlines()[0] in row.inner_text()
    bad = cell(p, "lab-1", "app")
    bad.locator("summary").click()
    assert XSS in bad.inner_text()
    assert p.evaluate("window.__pwned") is None
    assert p.locator("main script, main img").count() == 0


def test_screenshot(served: Served, browser_factory: Any) -> None:
    """A full-page screenshot for a person to look at: /tmp/gitops-page.png."""
    with Store(served.state_dir) as store:
        store.quarantine(ENV, revision(11).sha, "verification failed on lab-2")
    p = browser_factory(served.url + "/", width=1280, height=900)
    cell(p, "lab-2", "web").locator("summary").click()
    out = Path(os.environ.get("GITOPS_PAGE_SCREENSHOT", "/tmp/gitops-page.png"))
    p.screenshot(path=str(out), full_page=True)
    p.set_viewport_size({"width": 390, "height": 844})
    p.screenshot(path=str(out.with_name(out.stem + "-phone.png")), full_page=True)
    assert out.stat().st_size > 10_000


# -- the data and the access rules, without a browser ----------------------------------------


def test_page_data_shape(tmp_path: Path) -> None:
    """``/api/page``: grid cells, desired vs applied, history; delivery said unavailable."""
    seed(tmp_path)
    with Store(tmp_path) as store:
        data = page.page_data(store)
        detail = page.run_detail(store, 2)
    (env,) = data["environments"]
    assert env["name"] == ENV and env["ready"] == "False"
    assert env["services"] == sorted(SERVICES)
    assert env["desired"] == revision(11).sha and env["desired_from"] == "attempted"
    hosts = {h["name"]: h for h in env["hosts"]}
    assert hosts["lab-2"]["services"]["web"] == {"pass": 1, "fail": 1, "failing": [
        {"check": "port 80 listening", "status": "fail",
         "message": "nothing listens on 0.0.0.0:80"}]}
    assert [h["in_sync"] for h in env["hosts"]] == [True, True, False]
    assert hosts["lab-3"]["checks_run"] == 1 and hosts["lab-2"]["checks_run"] == 2
    assert [r["id"] for r in env["history"]] == [2, 1]
    assert env["rollout"] is None
    assert sum(d["succeeded"] + d["failed"] for d in env["activity"]) == 2
    delivery = env["delivery"]["data"]
    assert (delivery["deployments"], delivery["failed_rollouts"], delivery["rollouts"]) == (1, 1, 2)
    (incident,) = env["incidents"]["open"]
    assert incident["cause"] == "failed rollout" and env["incidents"]["closed"] == []
    assert detail is not None
    assert all("diff" not in op for h in detail["plan"]["hosts"] for op in h["ops"])
    assert "secret-free diff" not in str(detail)


def bearer(request: Request) -> Response | None:
    """What ``gitops.web.server`` checks with a token configured: the bearer header."""
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and sent.strip() == TOKEN:
        return None
    return JSONResponse({"error": "missing or wrong API token"}, status_code=401)


def gated(state: Path, monkeypatch: pytest.MonkeyPatch, *, token: bool = True,
          sessions: Sessions | None = None) -> list[Any]:
    """The page's routes behind the daemon's gate: the settings' ``api_token`` (``TOKEN``)
    when ``token``, else the single-operator lab mode (loopback trusted)."""
    from gitops.record.store import Database
    from gitops.settings import SecretRef, Settings
    from gitops.web.access import Gate

    monkeypatch.setenv("TEST_PAGE_GATE_TOKEN", TOKEN)
    s = Settings(state_dir=state,
                 api_token=SecretRef(env="TEST_PAGE_GATE_TOKEN") if token else None)
    gate = Gate(s, Database(state), sessions=sessions)
    return page.routes(state, gate.rule("read"), sessions=gate.sessions)


def call(app: Starlette, client: str, requests: list[tuple[str, dict[str, str]]]
         ) -> list[httpx.Response]:
    """GET each path in order from ``client`` with one cookie jar (no redirects followed)."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gitops") as http:
            return [await http.get(path, headers=headers) for path, headers in requests]

    return asyncio.run(go())


def test_the_comparison_is_computed_again_only_when_a_run_lands(tmp_path: Path) -> None:
    """Polls of an unchanged record reuse the team comparison; a new run makes the next
    poll compute it again, with the new run counted."""
    state = tmp_path / "state"
    seed(state)
    cache = page.RecordCache()

    def rate() -> Any:
        with Store(state, readonly=True) as store:
            data = page.page_data(store, cache=cache)
        (lab,) = data["comparison"]["environments"]
        return lab["change_failure_rate"]

    assert rate() == 0.5 and rate() == 0.5 and rate() == 0.5
    assert cache.computed == 3  # the comparison, lab's delivery and lab's incidents, once
    with Store(state) as store:
        record_run(store, revision(12, "fix the web service"))
    assert rate() == pytest.approx(1 / 3)
    assert cache.computed == 6
    assert rate() == pytest.approx(1 / 3) and cache.computed == 6


def test_incidents_are_kept_until_a_run_lands_or_someone_writes_into_a_post_mortem(
        tmp_path: Path) -> None:
    """A poll of an unchanged record reuses the incidents it computed; a note written into
    the post-mortem (from another process: the CLI), an action item given to a team, or a
    new run shows at the next poll."""
    state = tmp_path / "state"
    seed(state)
    cache = page.RecordCache()

    def incidents() -> dict[str, Any]:
        with Store(state, readonly=True) as store:
            data = page.page_data(store, cache=cache)
        (lab,) = data["environments"]
        return dict(lab["incidents"])

    first = incidents()
    (opened,) = first["open"]
    computed = cache.computed
    assert incidents() == first and cache.computed == computed
    with Store(state) as store:
        store.add_note(opened["id"], "summary", "lab-3 lost its link", actor="cli:ops")
        item = store.add_action(opened["id"], "alert on the link", None, actor="cli:ops")
    (noted,) = incidents()["open"]
    assert noted["postmortem"]["summary"]["text"] == "lab-3 lost its link"
    assert cache.computed > computed
    with Store(state) as store:
        store.update_action(item.id, actor="cli:ops", team="network")
    (given,) = incidents()["open"]
    assert [a["team"] for a in given["postmortem"]["actions"]] == ["network"]
    with Store(state) as store:
        record_run(store, revision(12, "fix the web service"))
    assert incidents()["open"] == []


def test_loopback_is_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the single-operator lab mode (no token made, no api_token) the page, its files and
    its data need no token on loopback."""
    seed(tmp_path)
    app = Starlette(routes=gated(tmp_path, monkeypatch, token=False))
    responses = call(app, "127.0.0.1", [(p, {}) for p in (
        "/", "/static/page.js", "/static/page.css", "/api/page", "/api/page/runs/2")])
    assert [r.status_code for r in responses] == [200] * 5
    assert responses[0].headers["content-security-policy"].startswith("default-src 'none'")
    assert call(app, "::1", [("/api/page", {})])[0].status_code == 200
    assert call(app, "127.0.0.1", [("/static/../page.py", {}), ("/api/page/runs/99", {})]
                )[0].status_code == 404


def session(app: Starlette, client: str, steps: Callable[[httpx.AsyncClient], Any],
            base_url: str = "http://gitops") -> Any:
    """Run ``steps`` (an async function of a client with one cookie jar) against ``app``."""

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            return await steps(http)

    return asyncio.run(go())


def test_beyond_loopback_needs_the_token(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond loopback: refused without the token (the sign-in form, its script public);
    the header works; ``?token=`` in a URL signs nobody in; the form's POST of the token
    sets a session cookie that is not the token (HttpOnly, SameSite=Strict, an expiry), and
    the cookie then works until signed out."""
    seed(tmp_path)
    app = Starlette(routes=gated(tmp_path, monkeypatch))
    far = "10.213.0.99"
    refused = call(app, far, [("/", {}), ("/api/page", {}), ("/static/page.js", {}),
                              (f"/?token={TOKEN}", {}), ("/?again=1", {})])
    assert [r.status_code for r in refused] == [401] * 5
    assert "http-equiv" in refused[0].text and "http-equiv" not in refused[4].text
    assert 'id="signin"' in refused[4].text and "/static/signin.js" in refused[4].text
    assert all("set-cookie" not in r.headers for r in refused)
    assert TOKEN not in "".join(r.text for r in refused[:3] + refused[4:])
    assert call(app, far, [("/static/signin.js", {})])[0].status_code == 200
    ok = call(app, far, [("/api/page", {"authorization": f"Bearer {TOKEN}"})])
    assert ok[0].status_code == 200

    async def sign_in(http: httpx.AsyncClient) -> list[httpx.Response]:
        wrong = await http.post("/api/session", json={"token": "wrong"})
        right = await http.post("/api/session", json={"token": TOKEN})
        after = [await http.get(p) for p in ("/", "/api/page", "/static/page.js")]
        out = await http.delete("/api/session")
        gone = await http.get("/api/page")
        return [wrong, right, *after, out, gone]

    wrong, right, *after, out, gone = session(app, far, sign_in)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert right.status_code == 204
    cookie = right.headers["set-cookie"]
    assert TOKEN not in cookie and cookie.startswith(f"{page.COOKIE}=")
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    assert "max-age=43200" in lowered and "secure" not in lowered
    assert [r.status_code for r in after] == [200, 200, 200]
    assert out.status_code == 204 and gone.status_code == 401
    assert TOKEN not in "".join(r.text for r in (wrong, right, *after, out, gone))


def test_session_cookie_is_secure_over_https_and_expires(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS the session cookie is Secure; past its lifetime the session is refused."""
    seed(tmp_path)
    now = [1000.0]
    sessions = Sessions(60, clock=lambda: now[0])
    app = Starlette(routes=gated(tmp_path, monkeypatch, sessions=sessions))

    async def sign_in(http: httpx.AsyncClient) -> list[httpx.Response]:
        right = await http.post("/api/session", headers={"authorization": f"Bearer {TOKEN}"})
        fresh = await http.get("/api/page")
        now[0] += 61
        stale = await http.get("/api/page")
        return [right, fresh, stale]

    right, fresh, stale = session(app, "10.213.0.99", sign_in, base_url="https://gitops")
    assert right.status_code == 204
    assert "secure" in right.headers["set-cookie"].lower()
    assert "max-age=60" in right.headers["set-cookie"].lower()
    assert fresh.status_code == 200 and stale.status_code == 401


def test_without_authorize_only_loopback(tmp_path: Path) -> None:
    """With no token to check, beyond loopback is refused even with a token."""
    seed(tmp_path)
    app = Starlette(routes=page.routes(tmp_path, None))
    far = call(app, "192.0.2.7", [("/", {}), ("/api/page", {}), (f"/?token={TOKEN}", {})])
    assert [r.status_code for r in far] == [403, 403, 403]
    assert call(app, "127.0.0.1", [("/", {})])[0].status_code == 200


def test_services_a_host_keeps_show_on_the_page(served: Served, browser_factory: Any) -> None:
    """A service the revision no longer declares on a host but the host keeps (no remove.py,
    or prune off) is named on that host's row, never silently dropped (gitops.pipeline.prune)."""
    with Store(served.state_dir) as store:
        store.set_installed(ENV, "lab-3", {"web": ({}, ()), "app": ({}, ())}, revision(10).ref)
        store.mark_installed(ENV, "lab-3", "web", "left in place")
        store.mark_installed(ENV, "lab-3", "app", "not pruned")
    p = browser_factory(served.url + "/")
    row = p.locator('tr[data-host="lab-3"]')
    assert row.locator('.not-removed[data-service="web"]').inner_text() == (
        "web: left in place (no remove.py)")
    assert row.locator('.not-removed[data-service="app"]').inner_text() == (
        "app: not removed (prune is off)")
    assert p.locator('tr[data-host="lab-1"] .not-removed').count() == 0
    assert p.js_errors == []


def _three_verified(store: Store) -> None:
    for n in (10, 11, 12):
        record_run(store, revision(n))


def _running(store: Store) -> None:
    seed_store(store)
    run_id = store.start_run(ENV, "reconcile", None, actor="test", reason="webhook")
    store.set_revision(run_id, revision(13, "roll out 13"))


def _previews(store: Store) -> None:
    _three_verified(store)
    done = store.start_preview(ENV, provider="github", number=7, branch="fix", base="main",
                               head_sha="a" * 40)
    store.finish_preview(done, None, summary="done")
    store.start_preview(ENV, provider="github", number=8, branch="more", base="main",
                        head_sha="b" * 40)


STATES: dict[str, Any] = {
    "empty": lambda store: None,
    "three-verified": _three_verified,
    "failed-with-incident": lambda store: seed_store(store),
    "running": _running,
    "previews": _previews,
}


@pytest.mark.parametrize("state", list(STATES))
def test_no_null_undefined_or_nan_in_any_state(state: str, tmp_path: Path,
                                               browser_factory: Any) -> None:
    """Whatever the record holds, no visible text reads null, undefined or NaN (three
    verified runs, no change-failure note nor stage table, showed "nullnull")."""
    state_dir = tmp_path / "state"
    with Store(state_dir) as store:
        STATES[state](store)
    server, thread = start_in_thread(Starlette(routes=page.routes(state_dir, None)),
                                     "127.0.0.1:0")
    try:
        p = browser_factory(f"http://127.0.0.1:{bound_port(server)}/",
                            ready="tr[data-host]" if state != "empty" else "main")
        p.wait_for_selector('[data-testid="delivery"]' if state != "empty" else "body")
        no_broken_text(p)
        assert p.js_errors == []
    finally:
        stop(server, thread)
