"""The daemon's app behind a real OpenID provider, for the tests that sign people in.

``oidc_site`` starts panva's oidc-provider (``tests/oidc/provider.mjs``, Node) on 127.0.0.1
with the given accounts, then the daemon's app (uvicorn on 127.0.0.1) with ``[oidc]`` pointing
at it and one ``Gate`` for the API and the page, so a person signed in on the page acts
through the API with their own roles. ``beyond_loopback`` makes a browser context arrive
through the trusted proxy from 192.0.2.9 (only a session opens anything), and
``sign_in_as`` goes through the provider's login form.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from clitools import gitops
from conftest import in_ci

from gitops.record.store import Database
from gitops.settings import OidcSettings, SecretRef, Settings
from gitops.web import page as page_module
from gitops.web.access import Gate
from gitops.web.server import Controller, bound_port, create_app, start_in_thread, stop
from gitops.web.sessions import Sessions

PROVIDER = Path(__file__).parent / "oidc"
SECRET = "client-secret-never-shown-0c41a9"
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-pw", "email": "alice@example.org",
              "groups": ["payments-ops", "everyone"]},
    "bob": {"password": "bob-pw", "email": "bob@example.org", "groups": ["search-dev"]},
}


def provider_unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PROVIDER / "node_modules" / "oidc-provider").is_dir():
        return "the test provider is not installed (npm ci --prefix tests/oidc)"
    return None


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[str]


@dataclass
class Site:
    url: str
    provider: Provider
    gate: Gate
    settings: Settings


@contextmanager
def oidc_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, controller: Controller, *,
              accounts: dict[str, dict[str, Any]] | None = None,
              allowed_groups: list[str] | None = None, **settings: Any) -> Iterator[Site]:
    """The app over ``controller`` and ``tmp_path/state`` with ``[oidc]`` at a provider that
    knows ``accounts`` (default ``ACCOUNTS``); ``settings``: more fields of ``Settings``
    (``teams``, ``grants``...). Skips outside CI, fails under it, without Node's provider."""
    reason = provider_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"OpenID provider test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("TEST_GITOPS_HOOK_SECRET", "hook-secret")
    monkeypatch.setenv("TEST_OIDC_SECRET", SECRET)
    state = tmp_path / "state"
    process = subprocess.Popen(["node", str(PROVIDER / "provider.mjs")], cwd=PROVIDER,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    server = thread = None
    try:
        port = process.stdout.readline().split()[1]
        issuer = f"http://127.0.0.1:{port}"
        base = Settings(trusted_proxies=["127.0.0.1"], state_dir=state, **settings)
        gate = Gate(base, Database(state), sessions=Sessions(3600))
        # The app first (its port names the callback), its page routes once the callback is known.
        app = create_app(controller, base, gate=gate)
        server, thread = start_in_thread(app, "127.0.0.1:0")
        url = f"http://127.0.0.1:{bound_port(server)}"
        oidc = OidcSettings(issuer=issuer, client_id="gitops",
                            client_secret=SecretRef(env="TEST_OIDC_SECRET"),
                            redirect_url=f"{url}/signin/oidc/callback", label="Test SSO",
                            allowed_groups=allowed_groups or [])
        app.router.routes[0:0] = page_module.routes(
            state, gate.rule("read"), Database(state), sessions=gate.sessions, oidc=oidc,
            chain=getattr(controller, "chain", ()),  # a daemon's promotion pipeline
            teams=base.teams)
        process.stdin.write(json.dumps({"client": {
            "client_id": "gitops", "client_secret": SECRET,
            "redirect_uris": [oidc.redirect_url]}, "accounts": accounts or ACCOUNTS}) + "\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith("ready ")
        yield Site(url, Provider(issuer, process), gate, base)
    finally:
        if server is not None and thread is not None:
            stop(server, thread)
        process.stdin.close()
        process.wait(timeout=10)


def beyond_loopback(browser: Any) -> Any:
    """A browser context whose requests come through the trusted proxy from 192.0.2.9 and
    reach nothing but loopback."""
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": "192.0.2.9"})
    context.route("**/*", lambda route: route.continue_()
                  if urlsplit(route.request.url).hostname == "127.0.0.1" else route.abort())
    return context


def provider_login(p: Any, login: str, password: str) -> None:
    """Fill and send the provider's login form."""
    p.fill("input[name=login]", login)
    p.fill("input[name=password]", password)
    p.click("button[type=submit]")


def sign_in_as(browser: Any, site: Site, login: str, ready: str = "tr[data-host]") -> Any:
    """A new page beyond loopback, signed in through the provider as ``login`` (its password
    from ``ACCOUNTS``-style ``<login>-pw``), waiting for ``ready``."""
    context = beyond_loopback(browser)
    p = context.new_page()
    p.set_default_timeout(20_000)
    p.goto(site.url + "/signin/oidc")
    provider_login(p, login, f"{login}-pw")
    p.locator("#who-name", has_text=f"signed in as {login}").wait_for()
    p.wait_for_selector(ready)
    return p


# -- what a signed-in page does ------------------------------------------------------------

def card(p: Any, env: str) -> Any:
    return p.locator(f"section.environment[data-environment={env}]")


def post(p: Any, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """A request sent from the page's own session, as a hand-made script in it would."""
    status, text = p.evaluate("""async ([path, body]) => {
        const r = await fetch(path, {method: "POST", credentials: "same-origin",
          headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
        return [r.status, await r.text()];
    }""", [path, body])
    return status, json.loads(text).get("error", "") if status >= 400 else text


def get(p: Any, path: str) -> Any:
    return p.evaluate("""async (path) => {
        const r = await fetch(path, {credentials: "same-origin"});
        return {status: r.status, body: await r.json()};
    }""", path)


def audit(state: Path) -> list[dict[str, Any]]:
    """``gitops audit --state-dir STATE --json`` (no settings file), oldest first."""
    out = gitops("audit", "--state-dir", str(state), "--json",
                 env={"XDG_CONFIG_HOME": str(state.parent / "no-config")})
    assert out.returncode == 0, out.stderr
    return list(reversed(json.loads(out.stdout)))
