"""Sign-in to the status page through a real OpenID provider, in a real browser.

The provider is panva's oidc-provider (OpenID Certified) run by Node on 127.0.0.1
(``tests/oidc/provider.mjs``, installed by ``test.sh`` with ``npm ci``); the daemon's app is
served by uvicorn on 127.0.0.1 and reached by Debian's chromium through Playwright as from
beyond loopback (a trusted proxy's forwarded address), so only a session can open the page.
The flow is the authorization code with PKCE; Authlib checks the ID token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from oidcsite import SECRET, Provider, beyond_loopback, oidc_site, provider_login
from test_csrf_browser import browser  # noqa: F401  (the fixture)
from test_page import seed
from test_server import RecordingController, environments

from gitops.record.store import Database
from gitops.settings import Settings
from gitops.web.access import Caller, Gate
from gitops.web.oidc import Pending, _groups


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         request: pytest.FixtureRequest) -> Iterator[tuple[str, Provider]]:
    """The daemon's app with ``[oidc]`` pointing at a provider that knows its callback:
    (the app's URL, the provider). ``allowed_groups``: the fixture's parameter, if any."""
    seed(tmp_path / "state")
    with oidc_site(tmp_path, monkeypatch, RecordingController(environments()),
                   allowed_groups=list(getattr(request, "param", []))) as served:
        yield served.url, served.provider


_beyond_loopback = beyond_loopback
_sign_in = provider_login


def test_a_person_signs_in_through_the_provider_and_out_again(
        site: tuple[str, Provider], browser: Any) -> None:  # noqa: F811
    """The page offers the provider; a wrong password stays at the provider; the right one
    comes back signed in as alice with the record shown; the cookie is a session id
    (HttpOnly, SameSite=Strict), no URL held the client secret, the pending sign-in cookie
    is gone; signing out shows the sign-in page again."""
    url, provider = site
    context = _beyond_loopback(browser)
    urls: list[str] = []
    p = context.new_page()
    p.set_default_timeout(20_000)
    p.on("request", lambda r: urls.append(r.url))
    p.goto(url + "/")
    p.click("#signin-oidc", timeout=20_000)
    p.wait_for_url(f"{provider.issuer}/interaction/**")
    _sign_in(p, "alice", "wrong")
    p.locator("#problem", has_text="wrong login or password").wait_for()
    _sign_in(p, "alice", "alice-pw")
    p.wait_for_selector("tr[data-host]")
    p.locator("#who-name", has_text="signed in as alice").wait_for()
    cookies = {c["name"]: c for c in context.cookies()}
    assert set(cookies) >= {"gitops_session"} and "gitops_oidc" not in cookies
    session = cookies["gitops_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert not [u for u in urls if SECRET in u]
    auth = next(u for u in urls if u.startswith(f"{provider.issuer}/auth?"))
    query = parse_qs(urlsplit(auth).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["nonce"] and query["state"]
    with p.expect_response(lambda r: r.request.method == "DELETE") as out:
        p.click("#signout")
    assert out.value.status == 204
    p.locator("#signin-oidc").wait_for()
    assert "gitops_session" not in {c["name"] for c in context.cookies()}
    context.close()


@pytest.mark.parametrize("site", [["payments-ops"]], indirect=True)
def test_a_person_outside_the_allowed_groups_is_refused(
        site: tuple[str, Provider], browser: Any) -> None:  # noqa: F811
    """bob signs in at the provider but is in no allowed group: a 403 page says so and no
    session is opened; alice, in payments-ops, gets in."""
    url, _ = site
    context = _beyond_loopback(browser)
    p = context.new_page()
    p.set_default_timeout(20_000)
    p.goto(url + "/signin/oidc")
    _sign_in(p, "bob", "bob-pw")
    p.locator("#signin-problem", has_text="bob is not in a group allowed to sign in").wait_for()
    assert "gitops_session" not in {c["name"] for c in context.cookies()}
    context.close()
    context = _beyond_loopback(browser)
    p = context.new_page()
    p.set_default_timeout(20_000)
    p.goto(url + "/signin/oidc")
    _sign_in(p, "alice", "alice-pw")
    p.locator("#who-name", has_text="signed in as alice").wait_for()
    context.close()


def test_a_forged_or_replayed_callback_opens_no_session(site: tuple[str, Provider]) -> None:
    """A callback with an unknown state, or a real state from another browser (no pending
    cookie), is 400; with the cookie but a code the provider never issued, 502; none of them
    sets a session cookie."""
    url, _ = site
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": "192.0.2.9"},
                      timeout=10) as http:
        forged = http.get("/signin/oidc/callback", params={"state": "x" * 40, "code": "y"})
        assert forged.status_code == 400 and "stale" in forged.text
        begin = http.get("/signin/oidc")
        assert begin.status_code == 302
        state = parse_qs(urlsplit(begin.headers["location"]).query)["state"][0]
        pending = begin.cookies["gitops_oidc"]
        elsewhere = httpx.get(f"{url}/signin/oidc/callback",
                              params={"state": state, "code": "y"}, timeout=10)
        assert elsewhere.status_code == 400
        http.cookies.set("gitops_oidc", pending)
        bogus = http.get("/signin/oidc/callback", params={"state": state, "code": "made-up"})
        assert bogus.status_code == 502 and "could not be verified" in bogus.text
        for answer in (forged, elsewhere, bogus):
            assert "gitops_session" not in answer.cookies
        again = http.get("/signin/oidc/callback", params={"state": state, "code": "made-up"})
        assert again.status_code == 400  # a state is used once


def test_the_page_beyond_loopback_offers_the_provider_before_the_token_form(
        site: tuple[str, Provider]) -> None:
    """With [oidc] the page answers 401 with the provider's button first, then the form for
    an API token (robots and admins)."""
    url, _ = site
    answer = httpx.get(url + "/?again=1", headers={"X-Forwarded-For": "192.0.2.9"}, timeout=10)
    assert answer.status_code == 401
    text = answer.text
    assert "Sign in with Test SSO" in text and 'name="token"' in text
    assert text.index("Sign in with Test SSO") < text.index('name="token"')


# -- the pieces, without a provider ----------------------------------------------------------


def test_a_pending_sign_in_is_bound_to_its_browser_used_once_and_expires() -> None:
    now = [1000.0]
    pending = Pending(600, clock=lambda: now[0])
    browser_a = pending.start("s1", "n1", "v1")
    assert pending.finish("s1", "another browser") is None
    started = pending.finish("s1", browser_a)
    assert started is not None and started.nonce == "n1" and started.code_verifier == "v1"
    assert pending.finish("s1", browser_a) is None
    browser_b = pending.start("s2", "n2", "v2")
    now[0] += 601
    assert pending.finish("s2", browser_b) is None


def test_pending_sign_ins_are_bounded() -> None:
    pending = Pending(600, limit=3)
    bindings = [pending.start(f"s{i}", "n", "v") for i in range(5)]
    assert pending.finish("s0", bindings[0]) is None
    assert pending.finish("s4", bindings[4]) is not None


@pytest.mark.parametrize(("claim", "groups"), [
    (["b", "a", "a"], ("a", "b")),
    ("solo", ("solo",)),
    (None, ()),
    ({"a": 1}, ()),
    (["ok", 3, "", "x" * 500, "bad\nline"], ("ok",)),
])
def test_the_groups_claim_is_read_as_short_printable_names(claim: Any,
                                                            groups: tuple[str, ...]) -> None:
    assert _groups(claim) == groups


@pytest.mark.parametrize(("groups", "permission", "team", "role"), [
    (("payments-ops",), "suspend", "payments", "operator"),
    (("payments-ops",), "suspend", "search", None),
    (("payments-ops",), "forget", "payments", None),
    (("search-dev",), "read", None, "viewer"),       # every signed-in person reads
    (("search-dev",), "reconcile", "search", None),
    ((), "rollback", "payments", "rollback"),         # alice's own grant, as user:alice
])
def test_a_persons_roles_come_from_their_groups_and_their_own_grants(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, groups: tuple[str, ...],
        permission: str, team: str | None, role: str | None) -> None:
    """Grants name a provider group (``group:<name>``) or a person (``user:<name>``); a
    person with neither reads as a viewer and changes nothing."""
    from gitops.settings import GrantConfig

    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(state_dir=tmp_path / "state", teams=["payments", "search"], grants=[
        GrantConfig(subject="group:payments-ops", role="operator", team="payments"),
        GrantConfig(subject="user:alice", role="rollback", team="payments")])
    gate = Gate(settings, Database(tmp_path / "state"))
    caller = Caller("user:alice" if not groups else "user:someone", groups=groups)
    assert gate.allows(caller, permission, team) == role
