"""Notifications and commit statuses against a local HTTP receiver that enforces each format.

The real services are unreachable here, so the receiver below plays GitHub, GitLab, Gitea,
Slack and a generic webhook on 127.0.0.1: it records every request and checks it against the
provider's documented request format (path, auth header form, allowed fields and ``state``
values), answering as the provider documents (201 with a status object, Slack's ``ok``) or with
the provider's validation error. Every test asserts that no request broke a format.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from builders import free_port

from gitops.daemon.notify import (
    CommitStatusConfig,
    Delivery,
    Event,
    NotifierConfig,
    commit_state_for,
    event_from_outcome,
    notify,
    set_commit_status,
)
from gitops.pipeline.reconcile import Outcome
from gitops.records import ApplyReport, HostApply, Revision
from gitops.settings import SecretRef

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
TOKEN = "ghp_TOPSECRETtoken0123456789"
HOOK_SECRET = "XyZsecretHookPath42"

# -- the receiver ------------------------------------------------------------------------

STATUS_PATHS = {
    "github": re.compile(r"^/github/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"),
    "gitlab": re.compile(r"^/gitlab/api/v4/projects/([^/]+)/statuses/([0-9a-f]{40})$"),
    "gitea": re.compile(r"^/gitea/api/v1/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"),
}
STATES = {
    # GitHub REST "Create a commit status": state is one of error, failure, pending, success.
    "github": {"error", "failure", "pending", "success"},
    # GitLab "Set the pipeline status of a commit".
    "gitlab": {"pending", "running", "success", "failed", "canceled", "skipped"},
    # Gitea CreateStatusOption / CommitStatusState.
    "gitea": {"pending", "success", "error", "failure", "warning"},
}
FIELDS = {
    "github": {"state", "target_url", "description", "context"},
    "gitlab": {"state", "ref", "name", "context", "target_url", "description", "coverage",
               "pipeline_id"},
    "gitea": {"state", "target_url", "description", "context"},
}
SLACK_PATH = re.compile(r"^/slack/services/T[0-9A-Z]+/B[0-9A-Z]+/[A-Za-z0-9]+$")
SLACK_KEYS = {"text", "blocks", "attachments", "thread_ts", "mrkdwn", "username", "icon_emoji",
              "icon_url", "channel", "unfurl_links", "unfurl_media"}
WEBHOOK_KEYS = {"schema", "kind", "environment", "revision", "summary", "failed_hosts", "run_id",
                "timestamp", "severity", "text", "page_url"}
KINDS = {"failure", "recovery", "drift", "rollback", "quarantine", "success", "approval"}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int
    """0: close the connection without an answer."""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Records requests, checks them against each documented format, answers like the service."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.problems: list[str] = []
        self.script: deque[Reply] = deque()
        """Replies forced before any checking, in order (to make the receiver fail)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # each check returns problems; an empty list means the request follows the documentation

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(Received(h.command, h.path, headers, body))
        reply = self.script.popleft() if self.script else self.route(h.path, headers, body)
        if reply.status == 0:  # hang up without answering
            h.close_connection = True
            return
        h.send_response(reply.status)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(reply.body)))
        h.end_headers()
        h.wfile.write(reply.body)

    def route(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        for provider, pattern in STATUS_PATHS.items():
            match = pattern.match(path)
            if match:
                return self.commit_status(provider, match, headers, body)
        if path.startswith("/slack/"):
            return self.slack(path, headers, body)
        if path == f"/hooks/{HOOK_SECRET}":
            return self.webhook(headers, body)
        if path.startswith("/echo/"):  # a receiver that repeats the URL in its error page
            return Reply(404, f"no such hook: {self.base}{path}".encode())
        self.problems.append(f"unexpected path {path}")
        return Reply(404, b"not found")

    def _fail(self, problem: str, reply: Reply) -> Reply:
        self.problems.append(problem)
        return reply

    def commit_status(self, provider: str, match: re.Match[str], headers: dict[str, str],
                      body: Any) -> Reply:
        if not headers.get("user-agent"):
            self.problems.append(f"{provider}: no User-Agent")
        if headers.get("content-type") != "application/json":
            self.problems.append(f"{provider}: body is not JSON")
        if provider == "github":
            if headers.get("authorization") != f"Bearer {TOKEN}":
                return self._fail("github: auth", Reply(401, b'{"message":"Bad credentials"}'))
            if headers.get("accept") != "application/vnd.github+json":
                self.problems.append("github: Accept is not application/vnd.github+json")
        elif provider == "gitlab":
            if headers.get("private-token") != TOKEN:
                return self._fail("gitlab: auth", Reply(401, b'{"message":"401 Unauthorized"}'))
            project = urllib.parse.unquote(match.group(1))
            if not (project.isdigit() or "/" in project):
                self.problems.append(f"gitlab: project {project!r} is not an id or a path")
        elif headers.get("authorization") != f"token {TOKEN}":
            return self._fail("gitea: auth", Reply(401, b'{"message":"token is required"}'))
        if not isinstance(body, dict):
            return self._fail(f"{provider}: body not an object", Reply(400))
        extra = set(body) - FIELDS[provider]
        if extra:
            self.problems.append(f"{provider}: unknown fields {sorted(extra)}")
        if body.get("state") not in STATES[provider]:
            return self._fail(f"{provider}: state {body.get('state')!r}",
                              Reply(422 if provider != "gitlab" else 400,
                                    b'{"message":"Validation Failed"}'))
        for name in ("description", "context", "name", "target_url"):
            if name in body and not isinstance(body[name], str):
                self.problems.append(f"{provider}: {name} is not a string")
        if provider == "github" and len(body.get("description", "")) > 140:
            return self._fail("github: description too long", Reply(422))
        now = datetime.now(UTC).isoformat()
        state = body["state"]
        context = body.get("name") or body.get("context") or "default"
        if provider == "github":
            answer = {"url": f"{self.base}{match.group(0)}", "id": len(self.requests),
                      "node_id": "MDY6U3RhdHVzMQ==", "state": state,
                      "description": body.get("description"),
                      "target_url": body.get("target_url"), "context": context,
                      "created_at": now, "updated_at": now, "creator": {"login": "gitops"}}
        elif provider == "gitlab":
            answer = {"id": len(self.requests), "sha": match.group(2), "ref": None,
                      "status": state, "name": context, "target_url": body.get("target_url"),
                      "description": body.get("description"), "created_at": now,
                      "started_at": None, "finished_at": None, "allow_failure": False,
                      "author": {"username": "gitops"}}
        else:
            answer = {"id": len(self.requests), "status": state,
                      "target_url": body.get("target_url"),
                      "description": body.get("description"), "url": "", "context": context,
                      "creator": {"login": "gitops"}, "created_at": now, "updated_at": now}
        return Reply(201, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def slack(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        bad = Reply(400, b"invalid_payload", {"Content-Type": "text/plain"})
        if not SLACK_PATH.match(path):
            return self._fail(f"slack: path {path}", Reply(404, b"no_service"))
        if not headers.get("content-type", "").startswith("application/json"):
            return self._fail("slack: not JSON", bad)
        if not isinstance(body, dict) or set(body) - SLACK_KEYS:
            return self._fail(f"slack: keys {body}", bad)
        if not isinstance(body.get("text"), str) or not body["text"]:
            return self._fail("slack: no text (the notification fallback)", bad)
        texts = [body["text"]]
        blocks = body.get("blocks", [])
        if not isinstance(blocks, list) or len(blocks) > 50:
            return self._fail("slack: blocks", bad)
        for block in blocks:
            kind = block.get("type")
            if kind == "section":
                objects = [block.get("text")]
            elif kind == "context":
                objects = block.get("elements", [])
                if not 1 <= len(objects) <= 10:
                    return self._fail("slack: context elements", bad)
            else:
                return self._fail(f"slack: block type {kind!r}", bad)
            for obj in objects:
                if not isinstance(obj, dict) or obj.get("type") not in ("mrkdwn", "plain_text"):
                    return self._fail(f"slack: text object {obj!r}", bad)
                if not isinstance(obj.get("text"), str) or not 1 <= len(obj["text"]) <= 3000:
                    return self._fail("slack: text length", bad)
                texts.append(obj["text"])
        for text in texts:  # Slack: escape &, <, > (a raw < starts a link or mention)
            if "<" in text or ">" in text or re.search(r"&(?!amp;|lt;|gt;)", text):
                return self._fail(f"slack: unescaped control character in {text!r}", bad)
        return Reply(200, b"ok", {"Content-Type": "text/plain"})

    def webhook(self, headers: dict[str, str], body: Any) -> Reply:
        problems = []
        if headers.get("content-type") != "application/json":
            problems.append("webhook: not JSON")
        if not isinstance(body, dict) or set(body) != WEBHOOK_KEYS:
            problems.append(f"webhook: keys {sorted(body) if isinstance(body, dict) else body}")
        else:
            if body["schema"] != "gitops.notification/v1":
                problems.append("webhook: schema")
            if body["kind"] not in KINDS or headers.get("x-gitops-event") != body["kind"]:
                problems.append("webhook: kind")
            if not isinstance(body["environment"], str) or not body["environment"]:
                problems.append("webhook: environment")
            revision = body["revision"]
            if revision is not None and (
                set(revision) != {"sha", "author", "message"}
                or not re.fullmatch(r"[0-9a-f]{40}", revision["sha"])
            ):
                problems.append("webhook: revision")
            if not isinstance(body["summary"], str):
                problems.append("webhook: summary")
            if not (isinstance(body["failed_hosts"], list)
                    and all(isinstance(h, str) for h in body["failed_hosts"])):
                problems.append("webhook: failed_hosts")
            if body["run_id"] is not None and not isinstance(body["run_id"], int):
                problems.append("webhook: run_id")
            if datetime.fromisoformat(body["timestamp"]).tzinfo is None:
                problems.append("webhook: timestamp without offset")
        if problems:
            self.problems.extend(problems)
            return Reply(400, b"bad payload")
        return Reply(204)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, SecretRef]:
    monkeypatch.setenv("TEST_GIT_TOKEN", TOKEN)
    hook = tmp_path / "hook-url"
    return {"token": SecretRef(env="TEST_GIT_TOKEN"), "hook_file": SecretRef(file=hook)}


class Sleeps(list[float]):
    """An injected ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def status_config(provider: str, base: str, token: SecretRef) -> CommitStatusConfig:
    api = {"github": "/github", "gitlab": "/gitlab/api/v4", "gitea": "/gitea/api/v1"}[provider]
    repository = "group/sub/project" if provider == "gitlab" else "acme/infra"
    return CommitStatusConfig(provider=provider, api_url=base + api, repository=repository,
                              token=token, target_url="https://gitops.example.com/runs")


_hooks = itertools.count()


def hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, kind: str = "webhook",
         **kwargs: Any) -> NotifierConfig:
    name = f"TEST_HOOK_URL_{next(_hooks)}"
    monkeypatch.setenv(name, url)
    return NotifierConfig(type=kind, url=SecretRef(env=name), **kwargs)


def slack_url(base: str) -> str:
    return f"{base}/slack/services/T0001/B0002/{HOOK_SECRET}"


EVENT = Event(kind="failure", environment="prod", sha=SHA, author="Ann <ann@example.com>",
              message="nginx: listen on 8080", summary="verify failed: web1 port 80 <closed> & co",
              failed_hosts=("web2", "web1"), run_id=42)

# -- commit statuses ---------------------------------------------------------------------

MAPPED = {
    ("github", "success"): "success", ("github", "failure"): "failure",
    ("gitlab", "success"): "success", ("gitlab", "failure"): "failed",
    ("gitea", "success"): "success", ("gitea", "failure"): "failure",
    ("github", "error"): "error", ("gitlab", "error"): "failed", ("gitea", "error"): "error",
}


@pytest.mark.parametrize("final", ["success", "failure", "error"])
@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea"])
def test_pending_then_final_status_arrives_in_order(
    receiver: Receiver, secrets: dict[str, SecretRef], provider: str, final: Any,
) -> None:
    """Pending then success/failure/error reach each provider in order, in its own vocabulary."""
    config = status_config(provider, receiver.base, secrets["token"])
    first = set_commit_status(config, SHA, "pending", "reconciling", environment="prod")
    last = set_commit_status(config, SHA, final, "done", environment="prod")
    assert receiver.problems == []
    assert (first.ok, first.status, first.attempts) == (True, 201, 1)
    assert (last.ok, last.status, last.what, last.sha) == (True, 201, final, SHA)
    states = [r.body["state"] for r in receiver.requests]
    assert states == ["pending", MAPPED[(provider, final)]]
    names = {r.body.get("name") or r.body.get("context") for r in receiver.requests}
    assert names == {"gitops/prod"}
    assert {r.body["target_url"] for r in receiver.requests} == {"https://gitops.example.com/runs"}


def test_gitlab_project_path_is_url_encoded(receiver: Receiver,
                                            secrets: dict[str, SecretRef]) -> None:
    """A GitLab project given as group/project is sent as one URL-encoded path segment."""
    config = status_config("gitlab", receiver.base, secrets["token"])
    assert set_commit_status(config, SHA, "pending", "x").ok
    path = receiver.requests[0].path
    assert path == f"/gitlab/api/v4/projects/group%2Fsub%2Fproject/statuses/{SHA}"


def test_long_description_is_cut_to_githubs_limit(receiver: Receiver,
                                                  secrets: dict[str, SecretRef]) -> None:
    """A description longer than GitHub's 140 characters is shortened, not rejected."""
    config = status_config("github", receiver.base, secrets["token"])
    delivery = set_commit_status(config, SHA, "failure", "x" * 500)
    assert delivery.ok and receiver.problems == []
    assert len(receiver.requests[0].body["description"]) == 140


def test_commit_status_retried_after_server_errors(receiver: Receiver,
                                                   secrets: dict[str, SecretRef]) -> None:
    """A failure status meets two 502s, is retried with growing backoff, and is delivered."""
    receiver.script.extend([Reply(502), Reply(502)])
    sleeps = Sleeps()
    config = status_config("github", receiver.base, secrets["token"])
    delivery = set_commit_status(config, SHA, "failure", "verify failed", sleep=sleeps)
    assert (delivery.ok, delivery.status, delivery.attempts) == (True, 201, 3)
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps)
    assert [r.body for r in receiver.requests[:2]] == [receiver.requests[2].body] * 2


def test_dropped_connection_is_retried(receiver: Receiver,
                                       secrets: dict[str, SecretRef]) -> None:
    """A connection closed without an answer, then a 503, then success: delivered."""
    receiver.script.extend([Reply(0), Reply(503)])
    config = status_config("gitlab", receiver.base, secrets["token"])
    delivery = set_commit_status(config, SHA, "success", "ok", sleep=Sleeps())
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 3, 201)
    assert receiver.problems == []


def test_commit_status_host_down_returns_the_undelivered_status(
    secrets: dict[str, SecretRef], caplog: pytest.LogCaptureFixture,
) -> None:
    """With the Git host unreachable, the failed Delivery keeps sha and state for a later retry."""
    config = status_config("gitea", f"http://127.0.0.1:{free_port()}", secrets["token"])
    sleeps = Sleeps()
    with caplog.at_level(logging.WARNING, logger="gitops.daemon.notify"):
        delivery = set_commit_status(config, SHA, "failure", "x", retries=3, sleep=sleeps)
    assert (delivery.ok, delivery.status, delivery.attempts) == (False, None, 4)
    assert (delivery.what, delivery.sha, delivery.receiver) == ("failure", SHA, "gitea")
    assert delivery.description == "x"
    assert len(sleeps) == 3
    assert len(caplog.records) == 1 and "gitea[0]" in caplog.text


def test_rejected_commit_status_is_not_retried(receiver: Receiver,
                                               secrets: dict[str, SecretRef]) -> None:
    """A 4xx answer (here a bad token) is final: one attempt, no sleep, the error kept."""
    config = status_config("gitlab", receiver.base, SecretRef(env="TEST_NO_SUCH_TOKEN_SET"))
    assert not set_commit_status(config, SHA, "pending", "x").ok  # missing secret: not sent
    assert receiver.requests == []
    wrong = status_config("gitlab", receiver.base, SecretRef(file=_write(secrets, "wrong")))
    sleeps = Sleeps()
    delivery = set_commit_status(wrong, SHA, "pending", "x", sleep=sleeps)
    assert (delivery.ok, delivery.status, delivery.attempts, sleeps) == (False, 401, 1, [])
    assert "401" in (delivery.error or "")
    receiver.problems.clear()  # the receiver rightly refused the wrong token


def test_not_a_sha_is_refused_without_a_request(receiver: Receiver,
                                                secrets: dict[str, SecretRef]) -> None:
    """Something that is not a commit SHA is never put into a request path."""
    config = status_config("github", receiver.base, secrets["token"])
    delivery = set_commit_status(config, "../../admin", "success", "x")
    assert not delivery.ok and delivery.attempts == 0 and receiver.requests == []


# -- notifications -----------------------------------------------------------------------


def test_generic_webhook_payload(receiver: Receiver, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The generic webhook gets the documented gitops.notification/v1 JSON object."""
    config = hook(tmp_path, monkeypatch, f"{receiver.base}/hooks/{HOOK_SECRET}")
    [delivery] = notify([config], EVENT)
    assert receiver.problems == []
    assert (delivery.ok, delivery.status, delivery.receiver, delivery.index) == (
        True, 204, "webhook", 0)
    body = receiver.requests[0].body
    assert body["kind"] == "failure" and body["environment"] == "prod"
    assert body["revision"] == {"sha": SHA, "author": "Ann <ann@example.com>",
                                "message": "nginx: listen on 8080"}
    assert body["failed_hosts"] == ["web1", "web2"] and body["run_id"] == 42


def test_slack_payload(receiver: Receiver, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack gets text plus section and context blocks, with &, <, > escaped as Slack asks."""
    config = hook(tmp_path, monkeypatch, slack_url(receiver.base), kind="slack")
    [delivery] = notify([config], EVENT)
    assert receiver.problems == []
    assert (delivery.ok, delivery.status, delivery.receiver) == (True, 200, "slack")
    body = receiver.requests[0].body
    section = body["blocks"][0]["text"]["text"]
    assert "prod" in body["text"] and SHA[:10] in section and "web1, web2" in section
    assert "&lt;closed&gt; &amp; co" in section and "run 42" in json.dumps(body["blocks"][1])


def test_receivers_get_only_the_events_they_list(receiver: Receiver, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver listing only failure is not sent a success; the default is every kind."""
    only_failures = hook(tmp_path, monkeypatch, f"{receiver.base}/hooks/{HOOK_SECRET}",
                         events=["failure"])
    everything = hook(tmp_path, monkeypatch, slack_url(receiver.base), kind="slack")
    success = Event(kind="success", environment="prod", sha=SHA)
    deliveries = notify([only_failures, everything], success)
    assert [(d.receiver, d.index, d.ok) for d in deliveries] == [("slack", 1, True)]
    assert receiver.problems == []


def test_webhook_delivered_after_two_500s(receiver: Receiver, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver fails twice with 500, then accepts: delivered on the third attempt."""
    receiver.script.extend([Reply(500), Reply(500)])
    config = hook(tmp_path, monkeypatch, f"{receiver.base}/hooks/{HOOK_SECRET}")
    sleeps = Sleeps()
    [delivery] = notify([config], EVENT, sleep=sleeps)
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 3, 204)
    assert len(sleeps) == 2 and len(receiver.requests) == 3 and receiver.problems == []


def test_rate_limit_honours_retry_after(receiver: Receiver, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 is retried, waiting at least what Retry-After says."""
    receiver.script.append(Reply(429, b"rate_limited", {"Retry-After": "7"}))
    config = hook(tmp_path, monkeypatch, slack_url(receiver.base), kind="slack")
    sleeps = Sleeps()
    [delivery] = notify([config], EVENT, sleep=sleeps)
    assert delivery.ok and delivery.attempts == 2
    assert len(sleeps) == 1 and sleeps[0] >= 7


def test_400_is_not_retried(receiver: Receiver, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A 400 is final: one attempt, no sleep, and the answer's text in the error."""
    receiver.script.append(Reply(400, b"invalid_payload"))
    config = hook(tmp_path, monkeypatch, slack_url(receiver.base), kind="slack")
    sleeps = Sleeps()
    [delivery] = notify([config], EVENT, sleep=sleeps)
    assert (delivery.ok, delivery.status, delivery.attempts, sleeps) == (False, 400, 1, [])
    assert delivery.error == "HTTP 400: invalid_payload"


def test_persistent_5xx_gives_up_after_the_retries(receiver: Receiver, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that always answers 503 is tried 1 + retries times, then reported failed."""
    receiver.script.extend([Reply(503)] * 10)
    config = hook(tmp_path, monkeypatch, f"{receiver.base}/hooks/{HOOK_SECRET}")
    [delivery] = notify([config], EVENT, retries=2, sleep=Sleeps())
    assert (delivery.ok, delivery.status, delivery.attempts) == (False, 503, 3)


def test_receivers_down_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """All receivers unreachable: notify returns failures, logs one line each, never raises."""
    base = f"http://127.0.0.1:{free_port()}"
    configs = [hook(tmp_path, monkeypatch, f"{base}/hooks/{HOOK_SECRET}"),
               hook(tmp_path, monkeypatch, slack_url(base), kind="slack"),
               NotifierConfig(type="webhook", url=SecretRef(env="TEST_UNSET_HOOK_URL"))]
    with caplog.at_level(logging.WARNING, logger="gitops.daemon.notify"):
        deliveries = notify(configs, EVENT, retries=2, sleep=Sleeps())
    assert [(d.receiver, d.index, d.ok) for d in deliveries] == [
        ("webhook", 0, False), ("slack", 1, False), ("webhook", 2, False)]
    assert [d.attempts for d in deliveries] == [3, 3, 0]
    assert "TEST_UNSET_HOOK_URL" in (deliveries[2].error or "")
    assert len(caplog.records) == 3
    assert "webhook-1 (webhook)" in caplog.text and "slack-2 (slack)" in caplog.text


def test_secrets_never_in_logs_or_deliveries(receiver: Receiver, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             secrets: dict[str, SecretRef],
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Tokens and webhook URLs appear in no log line and no Delivery, even when echoed back."""
    down = f"http://127.0.0.1:{free_port()}"
    configs = [hook(tmp_path, monkeypatch, f"{receiver.base}/echo/{HOOK_SECRET}"),
               hook(tmp_path, monkeypatch, slack_url(down), kind="slack")]
    status = status_config("github", down, secrets["token"])
    gitlab = status_config("gitlab", receiver.base, secrets["token"])
    with caplog.at_level(logging.DEBUG, logger="gitops.daemon.notify"):
        deliveries = notify(configs, EVENT, retries=1, sleep=Sleeps())
        receiver.script.append(Reply(500, f"bad token {TOKEN}".encode()))
        deliveries.append(set_commit_status(status, SHA, "failure", "x", retries=1,
                                            sleep=Sleeps()))
        deliveries.append(set_commit_status(gitlab, SHA, "failure", "x", retries=0,
                                            sleep=Sleeps()))
    assert [d.ok for d in deliveries] == [False, False, False, False]
    assert "no such hook" in (deliveries[0].error or "")  # the echo came back, scrubbed
    assert "bad token ***" in (deliveries[3].error or "")
    shown = caplog.text + repr(deliveries) + " ".join(str(d) for d in deliveries)
    for secret in (TOKEN, HOOK_SECRET, "/echo/", "/services/T0001"):
        assert secret not in shown


# -- from a run's outcome ----------------------------------------------------------------


def test_event_and_state_from_an_outcome() -> None:
    """A failed run's outcome gives a failure status and an event with its commit and hosts."""
    revision = Revision(sha=SHA, branch="main", author="Ann", message="bump nginx\n\nbody",
                        committed_at=datetime(2024, 5, 1, tzinfo=UTC))
    apply = ApplyReport(hosts=(HostApply(host="web1", status="failed"),
                               HostApply(host="web2", status="ok")))
    outcome = Outcome(result="failed", run_id=7, revision=revision, apply=apply)
    assert commit_state_for(outcome) == ("failure", "apply failed on web1")
    event = event_from_outcome("failure", "prod", outcome)
    assert (event.sha, event.message, event.failed_hosts, event.run_id) == (
        SHA, "bump nginx", ("web1",), 7)
    assert commit_state_for(Outcome(result="succeeded"))[0] == "success"
    assert commit_state_for(Outcome(result="interrupted"))[0] == "error"


# -- helpers -----------------------------------------------------------------------------


def _write(secrets: dict[str, SecretRef], value: str) -> Path:
    path = secrets["hook_file"].file
    assert path is not None
    path.write_text(value + "\n")
    return path


def test_delivery_fields_are_plain() -> None:
    """A Delivery holds kind, index, status, attempts, ok and error: nothing else to leak."""
    assert set(Delivery.__dataclass_fields__) == {
        "receiver", "index", "ok", "status", "attempts", "error", "what", "sha", "description",
        "notifier", "environment"}
