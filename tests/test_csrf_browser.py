"""Cross-site requests in a real browser (Debian's chromium through Playwright) change nothing.

The daemon's app over a real ``gitops.daemon.loop.Daemon`` (not started: its API and record only) is
served by uvicorn on 127.0.0.1 with no API token, the default that trusts loopback. An
attacker's page is served by ``http.server`` from another origin on loopback (another port
of 127.0.0.1: same site, other origin; and ``localhost``: another site). It posts a form
(``text/plain`` crafted to be JSON) to suspend and a ``no-cors`` fetch to reconcile; the
environment stays unsuspended and no reconcile is queued. And the page's sign-in form works
for a browser beyond loopback (through a trusted proxy's forwarded address).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import in_ci
from test_page import CHROMIUM, CHROMIUM_ARGS, _browser_unavailable

from gitops.daemon.loop import Daemon
from gitops.record.store import Store
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.server import bound_port, create_app, start_in_thread, stop

ATTACK = """<!doctype html><html><body>
<form id="form" method="post" enctype="text/plain" target="sink"
      action="{daemon}/api/environments/lab/suspend">
<input name='{{"reason": "csrf' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
window.reconcile = () => fetch("{daemon}/api/environments/lab/reconcile",
  {{method: "POST", mode: "no-cors", body: '{{"reason": "csrf"}}'}}).then(() => true);
</script></body></html>
"""


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, str]]:
    """The daemon's API over a real record, on 127.0.0.1, no API token."""
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(state_dir=tmp_path / "state", listen="127.0.0.1:0",
                        environments=[EnvironmentConfig(name="lab", repo=str(tmp_path))])
    with Store(settings.state_dir):
        pass  # the record exists, nothing in it
    d = Daemon(settings)
    server, thread = start_in_thread(create_app(d, settings), "127.0.0.1:0")
    try:
        yield d, f"http://127.0.0.1:{bound_port(server)}"
    finally:
        stop(server, thread)


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A static web server on another loopback port: (its folder, its port)."""
    folder = tmp_path / "attacker"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _browser_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"browser test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_cross_site_form_and_a_no_cors_fetch_change_nothing(
        daemon: tuple[Daemon, str], attacker: tuple[Path, int], browser: Any,
        host: str) -> None:
    """From another origin (same site or not), the form post that suspends and the no-cors
    fetch that reconciles are refused (403) and the record and the queue are unchanged."""
    d, url = daemon
    folder, port = attacker
    (folder / "attack.html").write_text(ATTACK.format(daemon=url))
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"http://{host}:{port}/attack.html")
    with page.expect_response(lambda r: r.url.endswith("/suspend")) as suspend:
        page.evaluate("document.getElementById('form').submit()")
    with page.expect_response(lambda r: r.url.endswith("/reconcile")) as reconcile:
        assert page.evaluate("window.reconcile()") is True
    assert suspend.value.status == 403
    assert reconcile.value.status == 403
    with Store(d.settings.state_dir, readonly=True) as store:
        controls = store.controls("lab")
    assert not controls.suspended and controls.reason == ""
    assert d.envs["lab"].pending is None


def test_the_same_requests_from_the_command_line_work(daemon: tuple[Daemon, str]) -> None:
    """The check above can fail: the CLI's way (JSON, no Origin) suspends and queues."""
    import httpx

    d, url = daemon
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/api/environments/lab/suspend",
                         json={"reason": "maintenance"}).status_code == 200
        assert http.post("/api/environments/lab/resume", json={}).status_code == 200
        assert http.post("/api/environments/lab/reconcile",
                         json={"reason": "now"}).status_code == 202
    with Store(d.settings.state_dir, readonly=True) as store:
        assert not store.controls("lab").suspended
    assert d.envs["lab"].pending is not None


def test_a_browser_beyond_loopback_signs_in_with_the_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Any) -> None:
    """Through a proxy (trusted_proxies 127.0.0.1, the browser's address forwarded as
    192.0.2.9) the page asks for the token; a wrong one is refused on the form, the right
    one signs in and the page shows the record; the cookie is a session id, not the token,
    HttpOnly, SameSite=Strict, with an expiry, and no URL ever held the token."""
    from builders import daemon_app
    from test_page import TOKEN, seed
    from test_server import RecordingController, environments

    from gitops.settings import SecretRef

    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("TEST_PAGE_TOKEN", TOKEN)
    monkeypatch.setenv("TEST_GITOPS_HOOK_SECRET", "hook-secret")
    seed(tmp_path / "state")
    s = Settings(api_token=SecretRef(env="TEST_PAGE_TOKEN"), trusted_proxies=["127.0.0.1"],
                 state_dir=tmp_path / "state")
    app = daemon_app(RecordingController(environments()), s, tmp_path / "state")
    server, thread = start_in_thread(app, "127.0.0.1:0")
    url = f"http://127.0.0.1:{bound_port(server)}"
    urls: list[str] = []
    try:
        context = browser.new_context(extra_http_headers={"X-Forwarded-For": "192.0.2.9"})
        p = context.new_page()
        p.set_default_timeout(15_000)
        p.on("request", lambda r: urls.append(r.url))
        p.goto(url + "/")
        p.wait_for_url("**/?again=1")
        p.fill("#signin input[name=token]", "wrong-token")
        p.click("#signin button")
        p.locator("#signin-error", has_text="wrong API token").wait_for()
        p.fill("#signin input[name=token]", TOKEN)
        p.click("#signin button")
        p.wait_for_selector("tr[data-host]")
        (cookie,) = context.cookies()
        context.close()
    finally:
        stop(server, thread)
    assert cookie["name"] == "gitops_session" and TOKEN not in cookie["value"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["expires"] > 0
    assert not [u for u in urls if TOKEN in u]
