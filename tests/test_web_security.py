"""The daemon's HTTP server as an attacker meets it: Host, cross-site requests, proxies, TLS,
sessions, response headers, hostile bodies and replayed webhooks (docs/security.md).

In-process requests (httpx's ASGI transport) give a client address beyond loopback or odd
headers without sending a packet anywhere; the TLS and proxy tests run a real uvicorn on
127.0.0.1. The controller is test_server's recording one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import daemon_app, self_signed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from test_page import seed
from test_server import (
    API_TOKEN,
    HOOK_SECRET,
    MAX_BODY,
    RecordingController,
    Running,
    _hermetic_settings,  # noqa: F401 (autouse fixture)
    environments,
    signed_github,
)
from test_webhooks import GITHUB_PUSH, GITLAB_PUSH

from gitops.errors import UsageError
from gitops.settings import SecretRef, Settings
from gitops.web.server import bound_port, create_app, start_in_thread, stop
from gitops.web.webhooks import hmac_sha256_hex

BASE = "http://127.0.0.1:9469"
JSON = {"Content-Type": "application/json"}


def app_and_controller(tmp_path: Path, *, token: bool = False, **options: Any
                       ) -> tuple[Starlette, RecordingController]:
    """The daemon's app as ``gitops run`` builds it (API, webhooks, metrics, the page)."""
    seed(tmp_path)
    controller = RecordingController(environments())
    s = Settings(api_token=SecretRef(env="TEST_GITOPS_API_TOKEN") if token else None,
                 environments=controller.envs, state_dir=tmp_path,
                 **{"max_body": MAX_BODY, **options})
    app = daemon_app(controller, s, tmp_path)
    return app, controller


def send(app: Starlette, method: str, path: str, *, client: str = "127.0.0.1",
         base_url: str = BASE, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


ROUTES = [
    ("GET", "/healthz"), ("GET", "/"), ("GET", "/static/page.js"), ("GET", "/api/page"),
    ("GET", "/api/page/runs/1"), ("GET", "/previews/1"), ("GET", "/metrics"),
    ("GET", "/api/status"), ("GET", "/api/runs"), ("GET", "/api/environments"),
    ("POST", "/api/environments/prod/suspend"), ("POST", "/api/environments/prod/reconcile"),
    ("POST", "/hooks/prod"), ("POST", "/api/session"), ("DELETE", "/api/session"),
    ("POST", "/api/incidents/1/annotate"),
]


# -- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_wrong_host_is_400_on_every_route(tmp_path: Path, method: str, path: str) -> None:
    """Every route answers 400 to a Host it does not allow (a rebound name, another port)
    and nothing reaches the controller; the allowed names pass the Host rule."""
    app, controller = app_and_controller(tmp_path)
    for host in ("rebound.example:9469", "rebound.example", "127.0.0.1:8080", "localhost",
                 "[::1]:1", "127.0.0.1:9469@evil", ""):
        response = send(app, method, path, headers={**JSON, "Host": host}, content=b"{}")
        assert response.status_code == 400, (host, response.text)
        assert "Host" in response.json()["error"]
    for host in ("127.0.0.1:9469", "localhost:9469", "LOCALHOST:9469", "[::1]:9469"):
        response = send(app, method, path, headers={**JSON, "Host": host}, content=b"{}")
        assert response.status_code != 400 or "Host" not in response.text, host
    assert controller.operations == [] or all(
        op["actor"] == "local" for op in controller.operations)


def test_a_rebound_name_gets_400_from_the_running_server(tmp_path: Path) -> None:
    """Over real TCP: the page answers its own address and localhost, and 400 to a name
    rebound to 127.0.0.1 (DNS rebinding) even from loopback."""
    app, _ = app_and_controller(tmp_path)
    server, thread = start_in_thread(app, "127.0.0.1:0")
    port = bound_port(server)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            mine = http.get("/api/page")
            local = http.get("/api/page", headers={"Host": f"localhost:{port}"})
            rebound = http.get("/api/page", headers={"Host": f"attacker.example:{port}"})
    finally:
        stop(server, thread)
    assert (mine.status_code, local.status_code, rebound.status_code) == (200, 200, 400)
    assert "environments" not in rebound.text


def test_allowed_hosts_replace_the_defaults(tmp_path: Path) -> None:
    """``allowed_hosts`` names the hosts served: a name alone any port, name:port that one."""
    app, _ = app_and_controller(tmp_path, allowed_hosts=["gitops.example.org",
                                                         "10.0.0.5:9469"])
    status = {h: send(app, "GET", "/healthz", headers={"Host": h}).status_code for h in (
        "gitops.example.org", "gitops.example.org:8443", "10.0.0.5:9469", "10.0.0.5:80",
        "127.0.0.1:9469")}
    assert status == {"gitops.example.org": 200, "gitops.example.org:8443": 200,
                      "10.0.0.5:9469": 200, "10.0.0.5:80": 400, "127.0.0.1:9469": 400}


def test_bad_host_settings_are_refused_with_the_field(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """A malformed ``allowed_hosts`` or ``trusted_proxies`` entry, or half a TLS pair, stops
    the settings with the field named."""
    from gitops.settings import load

    for text, field in (('allowed_hosts = ["http://x/"]', "allowed_hosts"),
                        ('trusted_proxies = ["*"]', "trusted_proxies"),
                        ('tls_cert = "/etc/cert.pem"', "tls_cert: needs tls_key")):
        path = tmp_path / "gitops.toml"
        path.write_text(text + "\n")
        monkeypatch.setenv("GITOPS_CONFIG", str(path))
        with pytest.raises(UsageError, match=rf"gitops.toml:1 {field}"):
            load()


# -- cross-site requests -----------------------------------------------------------------------


def test_state_changing_routes_need_json_and_this_origin(tmp_path: Path) -> None:
    """A POST from a form (urlencoded, multipart, text/plain), without a Content-Type, from
    another origin (another port of 127.0.0.1, localhost, ``null``) or a same-site but
    cross-origin fetch is refused; the CLI's request and the page's own pass."""
    app, controller = app_and_controller(tmp_path)
    body = json.dumps({"reason": "csrf"}).encode()
    path = "/api/environments/prod/suspend"
    refused = {
        "form": ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        "multipart": ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        "text/plain": ({"Content-Type": "text/plain"}, 415),
        "none": ({}, 415),
        "json-ish": ({"Content-Type": "application/jsonp"}, 415),
        "other port": ({**JSON, "Origin": "http://127.0.0.1:18080"}, 403),
        "other host": ({**JSON, "Origin": "http://localhost:9469"}, 403),
        "null": ({**JSON, "Origin": "null"}, 403),
        "path in origin": ({**JSON, "Origin": "http://127.0.0.1:9469/x"}, 403),
        "same-site": ({**JSON, "Sec-Fetch-Site": "same-site"}, 403),
        "cross-site": ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
        "form from elsewhere": ({"Content-Type": "text/plain",
                                 "Origin": "http://127.0.0.1:18080"}, 403),
    }
    for what, (headers, status) in refused.items():
        response = send(app, "POST", path, headers=headers, content=body)
        assert response.status_code == status, (what, response.text)
    assert controller.operations == []
    for headers in (JSON, {"Content-Type": "application/json; charset=utf-8"},
                    {**JSON, "Origin": BASE}, {**JSON, "Sec-Fetch-Site": "same-origin"},
                    {**JSON, "Origin": BASE, "Sec-Fetch-Site": "same-origin"}):
        assert send(app, "POST", path, headers=headers, content=body).status_code == 200
    assert len(controller.operations) == 5
    proxied, _ = app_and_controller(tmp_path, allowed_hosts=["gitops.example.com"])
    behind = {**JSON, "Host": "gitops.example.com", "Origin": "https://gitops.example.com"}
    assert send(proxied, "POST", path, headers=behind, content=body).status_code == 200
    elsewhere = {**behind, "Origin": "https://evil.example.com"}
    assert send(proxied, "POST", path, headers=elsewhere, content=body).status_code == 403


HOSTS = st.sampled_from(["127.0.0.1:9469", "localhost:9469", "[::1]:9469", "127.0.0.1",
                         "127.0.0.1:9470", "evil.example:9469", "evil.example", "[::1]",
                         "localhost.:9469", "127.0.0.1:0", "127.0.0.1:99999", ":9469",
                         "[::1:9469", "LocalHost:9469"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
ORIGINS = st.none() | st.sampled_from([
    "http://127.0.0.1:9469", "http://localhost:9469", "https://127.0.0.1:9469",
    "http://127.0.0.1:18080", "http://evil.example", "null", "http://127.0.0.1",
    "http://[::1]:9469", "file://", "http://127.0.0.1:9469/", ""])
SITES = st.none() | st.sampled_from(["same-origin", "same-site", "cross-site", "none", "x"])
TYPES = st.none() | st.sampled_from([
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
    "application/json-patch+json", "", "application/jsonx"])


def _own_name(host: str) -> str | None:
    """The loopback name ``host`` (any case, one trailing dot) gives with port 9469."""
    lowered = host.lower()
    for name in ("127.0.0.1", "localhost", "[::1]"):
        for dot in ("", "."):
            port = lowered.removeprefix(name + dot + ":")
            if port != lowered and port.isdigit() and int(port) == 9469:
                return name
    return None


def _expected(method: str, host: str, origin: str | None, site: str | None,
              ctype: str | None) -> int:
    """The rules of docs/security.md, written out plainly."""
    name = _own_name(host)
    if name is None:
        return 400
    if method == "GET":
        return 200
    if origin is not None:
        own = {f"{scheme}://{name}{dot}:9469" for scheme in ("http", "https")
               for dot in ("", ".")}
        if origin.lower() not in own:
            return 403
    elif site not in (None, "same-origin", "none"):
        return 403
    media = (ctype or "").partition(";")[0].strip().lower()
    return 415 if media != "application/json" else 202


@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST"]), host=HOSTS, origin=ORIGINS, site=SITES,
       ctype=TYPES)
def test_fuzz_host_origin_and_content_type(tmp_path: Path, method: str, host: str,
                                           origin: str | None, site: str | None,
                                           ctype: str | None) -> None:
    """Any Host, Origin, Sec-Fetch-Site and Content-Type: the answer is the rules' (400,
    403, 415, or served), never a 500, and only a served POST reaches the controller."""
    controller = RecordingController(environments())
    app = create_app(controller, Settings(max_body=MAX_BODY, environments=controller.envs,
                                          state_dir=tmp_path / "state"))
    headers = {"Host": host}
    for key, value in (("Origin", origin), ("Sec-Fetch-Site", site), ("Content-Type", ctype)):
        if value is not None:
            headers[key] = value
    path = "/api/status" if method == "GET" else "/api/environments/prod/reconcile"
    response = send(app, method, path, headers=headers, content=b"{}" if method == "POST"
                    else None)
    assert response.status_code == _expected(method, host, origin, site, ctype), (
        headers, response.text)
    assert len(controller.triggers) == (1 if response.status_code == 202 else 0)


def test_no_cors_headers_and_every_answer_says_nosniff_and_no_store(tmp_path: Path) -> None:
    """No answer carries a CORS header, even to a preflight with an Origin; every answer
    (API, metrics, health, refusals, 404) says nosniff and no-store."""
    app, _ = app_and_controller(tmp_path)
    origin = {"Origin": "http://127.0.0.1:18080"}
    answers = [
        send(app, "GET", "/api/status", headers=origin),
        send(app, "GET", "/healthz"), send(app, "GET", "/metrics"),
        send(app, "GET", "/api/page", headers=origin), send(app, "GET", "/nope"),
        send(app, "OPTIONS", "/api/environments/prod/suspend", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"}),
        send(app, "POST", "/api/environments/prod/suspend", headers={"Host": "x"}),
        send(app, "POST", "/api/environments/prod/suspend", headers=JSON, content=b"{"),
    ]
    for response in answers:
        assert not [h for h in response.headers if h.lower().startswith("access-control")]
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
        assert response.headers["cache-control"] == "no-store", response.request.url
    assert answers[5].status_code == 405


def test_the_page_script_writes_text_only(tmp_path: Path) -> None:
    """The page's scripts never parse markup (textContent, element building only), under a
    CSP that allows no inline script and no form submission."""
    from importlib import resources

    scripts = [f for f in resources.files("gitops.web").joinpath("static").iterdir()
               if f.name.endswith(".js")]
    assert {"page.js", "signin.js", "actions.js"} <= {f.name for f in scripts}
    for script in scripts:
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in text, (script.name, sink)
    app, _ = app_and_controller(tmp_path)
    csp = send(app, "GET", "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "form-action 'none'" in csp
    assert "unsafe-inline" not in csp


# -- hostile bodies and ids ------------------------------------------------------------------


def test_deep_json_is_400_and_a_big_body_413(tmp_path: Path) -> None:
    """JSON nested 100,000 deep answers 400 (not a 500 from the parser's recursion) on the
    API, the post-mortems and a signed webhook; a body over max_body answers 413."""
    app, controller = app_and_controller(tmp_path, max_body=1_000_000)
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = b'{"reason": ' + deep + b"}"
    for path in ("/api/environments/prod/suspend", "/api/environments/prod/reconcile",
                 "/api/incidents/1/annotate"):
        for body in (deep, nested):
            response = send(app, "POST", path, headers=JSON, content=body)
            assert response.status_code == 400, (path, response.text)
            assert "too deep" in response.json()["error"]
    push = b'{"ref": "refs/heads/main", "x": ' + deep + b"}"
    signed = {**JSON, "X-GitHub-Event": "push",
              "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(HOOK_SECRET, push)}
    assert send(app, "POST", "/hooks/prod", headers=signed, content=push).status_code == 400
    big = send(app, "POST", "/api/environments/prod/suspend", headers=JSON,
               content=b'{"reason": "' + b"x" * 1_000_001 + b'"}')
    assert big.status_code == 413
    assert controller.operations == [] and controller.triggers == []


def test_ids_past_the_database_integer_are_404(tmp_path: Path) -> None:
    """A run or preview id too big for the database answers 404, not a 500."""
    app, _ = app_and_controller(tmp_path)
    huge = "99999999999999999999999"
    for path in (f"/api/page/runs/{huge}", f"/api/runs/{huge}", f"/previews/{huge}",
                 f"/api/page/runs/-{huge}", "/api/page/runs/0"):
        assert send(app, "GET", path).status_code == 404, path


# -- webhook deliveries ------------------------------------------------------------------------


def test_a_replayed_delivery_is_answered_duplicate_and_not_acted_on(tmp_path: Path) -> None:
    """The same GitHub or GitLab delivery id twice: one trigger, the second answer 200
    "duplicate"; an unsigned request cannot burn an id; another id acts again."""
    server, done = _serve(Settings(max_body=MAX_BODY), tmp_path)
    try:
        _replay(server)
    finally:
        done()


def _replay(server: Running) -> None:
    body, headers = signed_github(GITHUB_PUSH)
    lab = json.dumps(GITLAB_PUSH | {"ref": "refs/heads/main"}).encode()
    gitlab = {**JSON, "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": HOOK_SECRET}
    with server.client() as http:
        forged = http.post("/hooks/prod", content=body, headers={
            **headers, "X-Hub-Signature-256": "sha256=00", "X-GitHub-Delivery": "d-1"})
        first = http.post("/hooks/prod", content=body,
                          headers={**headers, "X-GitHub-Delivery": "d-1"})
        again = http.post("/hooks/prod", content=body,
                          headers={**headers, "X-GitHub-Delivery": "d-1"})
        other = http.post("/hooks/prod", content=body,
                          headers={**headers, "X-GitHub-Delivery": "d-2"})
        key = http.post("/hooks/prod", content=lab, headers={**gitlab, "Idempotency-Key": "k"})
        key_again = http.post("/hooks/prod", content=lab,
                              headers={**gitlab, "Idempotency-Key": "k"})
        uuid = http.post("/hooks/prod", content=lab,
                         headers={**gitlab, "X-Gitlab-Event-UUID": "u-1"})
        uuid_again = http.post("/hooks/prod", content=lab,
                               headers={**gitlab, "X-Gitlab-Event-UUID": "u-1"})
    assert forged.status_code == 401
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert again.json() == {"duplicate": "d-1"}
    assert (key.status_code, key_again.status_code) == (202, 200)
    assert (uuid.status_code, uuid_again.status_code) == (202, 200)
    assert len(server.controller.triggers) == 4


# -- proxies ---------------------------------------------------------------------------------


def _reconcile_actor(server: Running, headers: dict[str, str],
                     state: Path | None = None) -> tuple[int, str | None]:
    """(status, the client address the audit trail recorded for it: the caller and where
    the request came from)."""
    from gitops.record.store import Store

    with server.client() as http:
        response = http.post("/api/environments/prod/reconcile", json={}, headers=headers)
    if state is None or response.status_code != 202:
        return response.status_code, None
    with Store(state, readonly=True) as store:
        row = store.audit_trail(limit=1)[0]
    return response.status_code, f"{row.actor}:{row.address}"


def _serve(settings_: Settings, state: Path) -> tuple[Running, Callable[[], None]]:
    controller = RecordingController(environments())
    settings_ = settings_.model_copy(update={"environments": controller.envs,
                                             "state_dir": state})
    server, thread = start_in_thread(create_app(controller, settings_), "127.0.0.1:0")
    return (Running(controller, f"http://127.0.0.1:{bound_port(server)}"),
            lambda: stop(server, thread))


def test_forwarded_for_is_believed_only_from_trusted_proxies(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """Without trusted_proxies (FORWARDED_ALLOW_IPS="*" set, ignored, and said so at start)
    X-Forwarded-For changes no client address the audit trail records; a request carrying
    one is no longer taken as loopback. With trusted_proxies naming 127.0.0.1 the forwarded
    client is the client."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    forwarded = {"X-Forwarded-For": "192.0.2.1"}
    token = SecretRef(env="TEST_GITOPS_API_TOKEN")
    with caplog.at_level(logging.INFO, logger="gitops.web.server"):
        plain, done = _serve(Settings(api_token=token), tmp_path / "a")
    try:
        assert _reconcile_actor(plain, {**auth, **forwarded}, tmp_path / "a") == (
            202, "api:127.0.0.1")
    finally:
        done()
    assert "X-Forwarded-For/-Proto ignored (no trusted_proxies)" in caplog.text
    assert "FORWARDED_ALLOW_IPS is set and ignored" in caplog.text
    open_, done = _serve(Settings(), tmp_path / "b")
    try:
        assert _reconcile_actor(open_, {})[0] == 202
        assert _reconcile_actor(open_, forwarded)[0] == 401
    finally:
        done()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gitops.web.server"):
        proxied, done = _serve(Settings(api_token=token, trusted_proxies=["127.0.0.0/8"]),
                               tmp_path / "c")
    try:
        assert _reconcile_actor(proxied, {**auth, **forwarded}, tmp_path / "c") == (
            202, "api:192.0.2.1")
        assert _reconcile_actor(proxied, auth, tmp_path / "c") == (202, "api:127.0.0.1")
    finally:
        done()
    assert "believed from trusted_proxies: 127.0.0.0/8" in caplog.text


# -- TLS and sessions ------------------------------------------------------------------------


def test_tls_serves_https_and_the_session_cookie_is_secure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With tls_cert/tls_key the server answers HTTPS (verified against the certificate) and
    not plain HTTP; the CLI's client reaches it; signing in over it sets a Secure session
    cookie; the token is in no answer and no log line."""
    from gitops.cli.client import DaemonClient

    cert, key = self_signed(tmp_path)
    seed(tmp_path / "state")
    controller = RecordingController(environments())
    s = Settings(api_token=SecretRef(env="TEST_GITOPS_API_TOKEN"), tls_cert=cert,
                 tls_key=key, environments=controller.envs, state_dir=tmp_path / "state")
    app = daemon_app(controller, s, tmp_path / "state")
    with caplog.at_level(logging.DEBUG):
        server, thread = start_in_thread(app, "127.0.0.1:0")
        port = bound_port(server)
        try:
            context = ssl.create_default_context(cafile=str(cert))
            with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context,
                              timeout=10) as http:
                health = http.get("/healthz")
                signed = http.post("/api/session", json={"token": API_TOKEN})
                status = http.get("/api/status", headers={
                    "Authorization": f"Bearer {API_TOKEN}"})
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            daemon = DaemonClient(s.model_copy(update={"listen": f"127.0.0.1:{port}"}))
            cli = daemon.call("GET", "/healthz")
        finally:
            stop(server, thread)
    assert health.status_code == 200 and cli == (200, {"status": "ok"})
    assert signed.status_code == 204 and status.status_code == 200
    cookie = signed.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert API_TOKEN not in signed.headers["set-cookie"]
    assert API_TOKEN not in caplog.text and API_TOKEN not in health.text + signed.text
    assert f"HTTPS with {cert}" in caplog.text


def test_an_unreadable_certificate_stops_the_start_with_its_name(tmp_path: Path) -> None:
    """A key that is not the certificate's, or a missing file, is a UsageError at start."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other = self_signed(tmp_path / "b")
    for tls_key in (other, tmp_path / "absent.pem"):
        app = create_app(RecordingController(environments()),
                         Settings(tls_cert=cert, tls_key=tls_key))
        with pytest.raises(UsageError, match="tls_cert"):
            start_in_thread(app, "127.0.0.1:0")
