"""The daemon's HTTP server, run for real: uvicorn on 127.0.0.1, an ephemeral port, httpx.

The controller is a small recording implementation of ``gitops.web.server.Controller``; the real
daemon implements the same protocol.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_webhooks import GITEA_PUSH, GITHUB_PING, GITHUB_PUSH, GITLAB_PUSH

from gitops.errors import GitopsError, LockHeld, UsageError
from gitops.settings import EnvironmentConfig, SecretRef, Settings
from gitops.web.server import bound_port, create_app, serve, start_in_thread, stop
from gitops.web.webguard import is_loopback
from gitops.web.webhooks import hmac_sha256_hex

HOOK_SECRET = "hook-secret-never-shown-7f3a"
API_TOKEN = "api-token-never-shown-91c2"
MAX_BODY = 4096


@dataclass
class RecordingController:
    """Records every call; ``fail_with`` makes ``operate`` raise."""

    envs: list[EnvironmentConfig]
    triggers: list[tuple[str, str, str]] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)
    fail_with: GitopsError | None = None

    def environments(self) -> list[EnvironmentConfig]:
        return list(self.envs)

    def trigger(self, environment: str, *, reason: str, actor: str) -> bool:
        self.triggers.append((environment, reason, actor))
        queued = environment not in self.pending
        self.pending.add(environment)
        return queued

    def operate(
        self,
        environment: str,
        action: str,
        *,
        actor: str,
        reason: str = "",
        revision: str | None = None,
    ) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.operations.append(
            {
                "environment": environment,
                "action": action,
                "actor": actor,
                "reason": reason,
                "revision": revision,
            }
        )
        return {"done": action, "environment": environment}

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    def status(self) -> list[dict[str, Any]]:
        return [{"environment": env.name, "ready": True} for env in self.envs]


@dataclass
class Running:
    controller: RecordingController
    url: str

    def client(self) -> httpx.Client:
        """A client as the CLI is: every request says its body is JSON."""
        return httpx.Client(base_url=self.url, timeout=10,
                            headers={"Content-Type": "application/json"})


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("TEST_GITOPS_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("TEST_GITOPS_API_TOKEN", API_TOKEN)


def environments() -> list[EnvironmentConfig]:
    hook = SecretRef(env="TEST_GITOPS_HOOK_SECRET")
    return [
        EnvironmentConfig(name="prod", repo="https://example.com/state.git", webhook_secret=hook),
        EnvironmentConfig(
            name="dev", repo="https://example.com/state.git", branch="develop", webhook_secret=hook
        ),
        EnvironmentConfig(name="lab", repo="/srv/state"),  # no webhooks
    ]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a real server (token or not) on 127.0.0.1:0; stopped after the test."""
    started: list[tuple[Any, Any]] = []

    def _start(*, token: bool = True, listen: str = "127.0.0.1:0") -> Running:
        controller = RecordingController(environments())
        settings = Settings(
            api_token=SecretRef(env="TEST_GITOPS_API_TOKEN") if token else None,
            max_body=MAX_BODY, state_dir=tmp_path / "state",
            environments=controller.envs,
        )
        server, thread = start_in_thread(create_app(controller, settings), listen)
        started.append((server, thread))
        host = listen.rpartition(":")[0]
        return Running(controller, f"http://{host}:{bound_port(server)}")

    yield _start
    for server, thread in started:
        stop(server, thread)
        assert not thread.is_alive()


@pytest.fixture
def server(start: Callable[..., Running]) -> Running:
    return start()


def signed_github(payload: dict[str, Any], event: str = "push") -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(HOOK_SECRET, body),
        "Content-Type": "application/json",
    }


def test_healthz(server: Running) -> None:
    """GET /healthz answers 200 with the controller's health."""
    with server.client() as http:
        response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_github_push_triggers_once(server: Running) -> None:
    """A signed GitHub push to the watched branch answers 202 and triggers one reconcile."""
    body, headers = signed_github(GITHUB_PUSH)
    with server.client() as http:
        response = http.post("/hooks/prod", content=body, headers=headers)
    assert response.status_code == 202
    assert response.json() == {"triggered": True}
    assert server.controller.triggers == [("prod", "github push 0d1a26e67d", "webhook:github")]


def test_second_push_is_coalesced(server: Running) -> None:
    """A second push while one reconcile is pending answers triggered: false (coalesced)."""
    body, headers = signed_github(GITHUB_PUSH)
    with server.client() as http:
        first = http.post("/hooks/prod", content=body, headers=headers)
        second = http.post("/hooks/prod", content=body, headers=headers)
    assert first.json() == {"triggered": True}
    assert second.status_code == 202
    assert second.json() == {"triggered": False}


def test_gitlab_push_triggers_once(server: Running) -> None:
    """A GitLab Push Hook with the right token answers 202 and triggers one reconcile."""
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": HOOK_SECRET}
    with server.client() as http:
        response = http.post("/hooks/prod", json=GITLAB_PUSH, headers=headers)
    assert response.status_code == 202
    assert server.controller.triggers == [("prod", "gitlab push da1560886d", "webhook:gitlab")]


def test_gitea_push_triggers_once(server: Running) -> None:
    """A signed Gitea push to the watched branch (develop) answers 202 and triggers once."""
    body = json.dumps(GITEA_PUSH).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-Gitea-Event": "push",
        "X-Gitea-Signature": hmac_sha256_hex(HOOK_SECRET, body),
    }
    with server.client() as http:
        response = http.post("/hooks/dev", content=body, headers=headers)
    assert response.status_code == 202
    assert server.controller.triggers == [("dev", "gitea push bffeb74224", "webhook:gitea")]


def test_wrong_secret_is_refused_and_nothing_leaks(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A push signed with the wrong secret: 401, no trigger, no secret or signature shown."""
    caplog.set_level(logging.DEBUG)
    body = json.dumps(GITHUB_PUSH).encode()
    sent = hmac_sha256_hex("wrong-secret", body)
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sent}"}
    with server.client() as http:
        response = http.post("/hooks/prod", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid signature"}
    assert server.controller.triggers == []
    for text in (response.text, caplog.text):
        assert HOOK_SECRET not in text
        assert sent not in text
        assert "wrong-secret" not in text
    assert "webhook prod: rejected" in caplog.text


def test_wrong_gitlab_token_is_refused_and_nothing_leaks(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A GitLab hook with a wrong token: 401, no trigger, the token appears nowhere."""
    caplog.set_level(logging.DEBUG)
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guessed-token-123"}
    with server.client() as http:
        response = http.post("/hooks/prod", json=GITLAB_PUSH, headers=headers)
    assert response.status_code == 401
    assert server.controller.triggers == []
    assert "guessed-token-123" not in response.text + caplog.text
    assert HOOK_SECRET not in response.text + caplog.text


def test_missing_signature_is_refused(server: Running) -> None:
    """A GitHub push without a signature header answers 401 and triggers nothing."""
    with server.client() as http:
        response = http.post("/hooks/prod", json=GITHUB_PUSH, headers={"X-GitHub-Event": "push"})
    assert response.status_code == 401
    assert server.controller.triggers == []


def test_push_to_another_branch_is_ignored(server: Running) -> None:
    """A signed push to a branch the environment does not watch answers 200 ignored."""
    body, headers = signed_github({**GITHUB_PUSH, "ref": "refs/heads/feature"})
    with server.client() as http:
        response = http.post("/hooks/prod", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ignored": "push to branch 'feature', not the watched 'main'"}
    assert server.controller.triggers == []


def test_ping_is_ignored(server: Running) -> None:
    """GitHub's ping (sent when the hook is created) answers 200 ignored."""
    body, headers = signed_github(GITHUB_PING, event="ping")
    with server.client() as http:
        response = http.post("/hooks/prod", content=body, headers=headers)
    assert response.status_code == 200
    assert "ignored" in response.json()
    assert server.controller.triggers == []


def test_unknown_environment_or_no_secret_is_404(server: Running) -> None:
    """A hook for an unknown environment, or one without a webhook secret, answers 404."""
    body, headers = signed_github(GITHUB_PUSH)
    with server.client() as http:
        assert http.post("/hooks/nope", content=body, headers=headers).status_code == 404
        assert http.post("/hooks/lab", content=body, headers=headers).status_code == 404
    assert server.controller.triggers == []


def test_not_a_webhook_is_400(server: Running) -> None:
    """A POST without any provider's event header answers 400."""
    with server.client() as http:
        response = http.post("/hooks/prod", json=GITHUB_PUSH)
    assert response.status_code == 400


def test_body_over_limit_with_content_length_is_413(server: Running) -> None:
    """A body over max_body announced by Content-Length answers 413 and triggers nothing."""
    payload = {**GITHUB_PUSH, "padding": "x" * (MAX_BODY * 2)}
    body, headers = signed_github(payload)
    with server.client() as http:
        response = http.post("/hooks/prod", content=body, headers=headers)
    assert response.status_code == 413
    assert server.controller.triggers == []


def test_chunked_body_over_limit_is_413(server: Running) -> None:
    """A chunked body (no Content-Length) that grows past max_body answers 413."""
    payload = {**GITHUB_PUSH, "padding": "x" * (MAX_BODY * 2)}
    body, headers = signed_github(payload)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    with server.client() as http:
        request = http.build_request("POST", "/hooks/prod", content=chunks(), headers=headers)
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = http.send(request)
    assert response.status_code == 413
    assert server.controller.triggers == []


def test_chunked_body_under_limit_is_accepted(server: Running) -> None:
    """A chunked body within max_body is read whole and its push triggers."""
    body, headers = signed_github(GITHUB_PUSH)
    with server.client() as http:
        response = http.post("/hooks/prod", content=iter([body[:100], body[100:]]), headers=headers)
    assert response.status_code == 202


def test_api_without_token_is_401(server: Running) -> None:
    """The operator API refuses a call without the bearer token (401), even from loopback."""
    with server.client() as http:
        response = http.post("/api/environments/prod/reconcile")
        wrong = http.post(
            "/api/environments/prod/reconcile", headers={"Authorization": "Bearer nope"}
        )
        status = http.get("/api/status")
    assert response.status_code == 401
    assert wrong.status_code == 401
    assert status.status_code == 401
    assert API_TOKEN not in response.text + wrong.text
    assert server.controller.triggers == []


def test_api_reconcile_with_token(server: Running) -> None:
    """With the bearer token, reconcile answers 202 and triggers as the token's identity
    (``api``, the settings' token) with the given reason."""
    with server.client() as http:
        response = http.post(
            "/api/environments/prod/reconcile",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            json={"reason": "hotfix"},
        )
    assert response.status_code == 202
    assert response.json() == {"triggered": True, "actor": "api"}
    assert server.controller.triggers == [("prod", "hotfix", "api")]


def test_api_refuses_an_actor_in_the_body(server: Running) -> None:
    """A body naming its own actor is refused with 400 naming the field: the actor is the
    authenticated caller, never a field of the request."""
    with server.client() as http:
        response = http.post(
            "/api/environments/prod/reconcile",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            json={"reason": "hotfix", "actor": "alice"},
        )
    assert response.status_code == 400
    assert "'actor'" in response.json()["error"]
    assert server.controller.triggers == []


def test_api_operate_with_token(server: Running) -> None:
    """Suspend/rollback with the token answer 200 with the controller's result."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with server.client() as http:
        suspend = http.post(
            "/api/environments/prod/suspend", headers=auth, json={"reason": "maintenance"}
        )
        rollback = http.post(
            "/api/environments/prod/rollback", headers=auth, json={"revision": "abc123"}
        )
    assert suspend.status_code == 200
    assert suspend.json() == {"done": "suspend", "environment": "prod", "actor": "api"}
    assert rollback.status_code == 200
    calls = server.controller.operations
    assert [(c["action"], c["reason"], c["revision"]) for c in calls] == [
        ("suspend", "maintenance", None),
        ("rollback", "", "abc123"),
    ]
    assert calls[0]["actor"] == "api"


def test_api_without_configured_token_accepts_loopback(start: Callable[..., Running]) -> None:
    """With no API token nor any token made, a loopback client may call the API (as
    ``local``) and read the status: the single-operator lab mode."""
    server = start(token=False)
    with server.client() as http:
        response = http.post("/api/environments/prod/reconcile")
        status = http.get("/api/status")
    assert response.status_code == 202
    assert server.controller.triggers == [("prod", "operator request", "local")]
    assert status.status_code == 200
    assert [row["environment"] for row in status.json()] == ["prod", "dev", "lab"]


def test_api_without_configured_token_refuses_other_clients(tmp_path: Path) -> None:
    """With no API token configured, a client from a non-loopback address gets 401.

    The request goes to the app in-process with a client address from the lab's subnet, so no
    packet is sent to any address but loopback."""
    import asyncio

    controller = RecordingController(environments())
    app = create_app(controller, Settings(max_body=MAX_BODY, environments=controller.envs,
                                          state_dir=tmp_path))

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.213.0.99", 40000))
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:9469") as http:
            return await http.post("/api/environments/prod/reconcile", json={})

    response = asyncio.run(call())
    assert response.status_code == 401
    assert controller.triggers == []


def test_loopback_addresses() -> None:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback count as loopback; others do not."""
    assert all(map(is_loopback, ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["10.0.0.1", "::ffff:10.0.0.1", "fd00::2", "", None]))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (LockHeld("prod is being reconciled by pid 42 since 12:00"), 409),
        (GitopsError("prod is already suspended"), 409),
        (UsageError("prod: no failed hosts to retry"), 400),
    ],
)
def test_operate_errors_map_to_status(server: Running, error: GitopsError, status: int) -> None:
    """A held lock or state conflict answers 409, a usage error 400, with the message."""
    server.controller.fail_with = error
    with server.client() as http:
        response = http.post(
            "/api/environments/prod/retry", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
    assert response.status_code == status
    assert response.json() == {"error": str(error)}


def test_api_unknown_environment_or_action_is_404(server: Running) -> None:
    """The API answers 404 for an unknown environment or action."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with server.client() as http:
        assert http.post("/api/environments/nope/reconcile", headers=auth).status_code == 404
        assert http.post("/api/environments/prod/explode", headers=auth).status_code == 404


def test_api_bad_body_is_400(server: Running) -> None:
    """An API body that is not a JSON object of strings answers 400."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with server.client() as http:
        for body in (b"not json", b"[]", b'{"reason": 5}', b'{"reason": "x", "force": true}'):
            response = http.post("/api/environments/prod/suspend", headers=auth, content=body)
            assert response.status_code == 400, body
    assert server.controller.operations == []


def test_status_with_token(server: Running) -> None:
    """GET /api/status with the token answers 200 with the controller's status rows."""
    with server.client() as http:
        response = http.get("/api/status", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200
    assert response.json()[0] == {"environment": "prod", "ready": True}


def test_port_in_use_is_a_usage_error(server: Running) -> None:
    """Starting a second server on a port already taken fails with a clear UsageError."""
    port = int(server.url.rpartition(":")[2])
    app = create_app(server.controller, Settings(max_body=MAX_BODY))
    with pytest.raises(UsageError, match=r"cannot listen on 127\.0\.0\.1"):
        start_in_thread(app, f"127.0.0.1:{port}")


def test_extra_routes_are_served(start: Callable[..., Running]) -> None:
    """Routes passed as extra_routes (the monitoring issue's) are served by the same app."""

    async def metrics(request: Request) -> Response:
        return PlainTextResponse("gitops_up 1\n")

    controller = RecordingController(environments())
    app = create_app(
        controller, Settings(max_body=MAX_BODY), extra_routes=[Route("/metrics", metrics)]
    )
    server, thread = start_in_thread(app, "127.0.0.1:0")
    try:
        response = httpx.get(f"http://127.0.0.1:{bound_port(server)}/metrics", timeout=10)
    finally:
        stop(server, thread)
    assert response.status_code == 200
    assert response.text == "gitops_up 1\n"


def test_serve_returns_when_stop_event_is_set() -> None:
    """serve() in a thread returns once its stop event is set (the daemon's shutdown)."""
    controller = RecordingController(environments())
    app = create_app(controller, Settings(max_body=MAX_BODY))
    stop_event = threading.Event()
    thread = threading.Thread(target=serve, args=(app, "127.0.0.1:0", stop_event), daemon=True)
    thread.start()
    stop_event.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
