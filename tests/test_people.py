"""People and roles: tokens (shown once, kept as digests, expiring, revocable), roles per
team decided by the Casbin policy, the actor always the authenticated caller, loopback no
identity once tokens exist, and the append-only audit trail. Against the real app (httpx's
ASGI transport, in process) and the real record (SQLite; PostgreSQL for the trigger)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from builders import daemon_app
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Route
from test_server import RecordingController

from gitops.daemon.roles import ROLES, Grant, Roles
from gitops.daemon.tokens import digest
from gitops.record.store import Database, Store
from gitops.settings import EnvironmentConfig, SecretRef, Settings
from gitops.web.access import REFUSALS_PER_MINUTE

BASE = "http://127.0.0.1:9469"
JSON = {"Content-Type": "application/json"}
SECRETS = {"admin1": "s-admin", "viewer1": "s-viewer", "payops": "s-payops",
           "backer": "s-backer", "robot": "s-robot", "old": "s-old", "gone": "s-gone"}


@dataclass
class PromotingController(RecordingController):
    """A controller that also promotes (so the app serves ``/promote`` and the pipeline)."""

    promotions: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)

    def promote(self, environment: str, *, revision: str, actor: str, reason: str,
                force: bool = False) -> dict[str, Any]:
        self.promotions.append({"environment": environment, "actor": actor})
        return {"sha": revision, "promote_from": "staging", "actor": actor}

    def pipeline(self) -> list[dict[str, Any]]:
        return []

    def approve(self, environment: str, *, revision: str, actor: str, role: str,
                reason: str) -> dict[str, Any]:
        self.approvals.append({"environment": environment, "actor": actor, "role": role})
        return {"sha": revision, "approved_by": actor}
    def rollback_plan(self, environment: str, *, revision: str | None = None
                      ) -> dict[str, Any]:
        self.plans.append(environment)
        return {"environment": environment, "to": {"sha": revision or "abc"}, "hosts": []}


def envs() -> list[EnvironmentConfig]:
    hook = SecretRef(env="TEST_GITOPS_HOOK_SECRET")
    return [EnvironmentConfig(name="pay-prod", repo="/srv/state", team="payments",
                              webhook_secret=hook, promote_from="staging"),
            EnvironmentConfig(name="staging", repo="/srv/state", team="payments"),
            EnvironmentConfig(name="search-prod", repo="/srv/state", team="search")]


def make_tokens(state: Path) -> None:
    """admin1 (admin, all), viewer1 (viewer), payops (operator of payments), backer
    (rollback of payments), robot (operator, on behalf), old (expired), gone (revoked)."""
    with Store(state) as store:
        for name, role, team, extra in (
                ("admin1", "admin", "*", {}), ("viewer1", "viewer", "*", {}),
                ("payops", "operator", "payments", {}), ("backer", "rollback", "payments", {}),
                ("robot", "operator", "*", {"on_behalf": True}),
                ("old", "admin", "*", {"expires_at": datetime.now(UTC) - timedelta(days=1)}),
                ("gone", "admin", "*", {})):
            store.add_token(name, digest(SECRETS[name]), role=role, team=team,
                            created_by="test", **{"expires_at": None, **extra})
        store.revoke_token("gone")


@pytest.fixture(autouse=True)
def _hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GITOPS_HOOK_SECRET", "hook-secret")


@pytest.fixture
def app(tmp_path: Path) -> tuple[Any, PromotingController, Path]:
    state = tmp_path / "state"
    make_tokens(state)
    controller = PromotingController(envs())
    settings = Settings(state_dir=state, environments=controller.envs,
                        teams=["payments", "search"])
    return daemon_app(controller, settings, state), controller, state


def send(app: Any, method: str, path: str, token: str | None = None, *,
         client: str = "127.0.0.1", body: Any = None) -> httpx.Response:
    headers = dict(JSON)
    if token is not None:
        headers["Authorization"] = f"Bearer {SECRETS.get(token, token)}"

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            return await http.request(method, path, headers=headers,
                                      content=json.dumps(body if body is not None else {})
                                      if method != "GET" else None)

    return asyncio.run(go())


def audit(state: Path, **filters: Any) -> list[Any]:
    with Store(state, readonly=True) as store:
        return store.audit_trail(**filters)


# -- every route --------------------------------------------------------------------------

PARAMS = {"environment": "pay-prod", "id": "INC-pay-prod-1", "what": "annotate", "number": "1",
          "run_id": "1", "preview_id": "1", "name": "page.js"}

EXEMPT = {
    ("GET", "/healthz"): "liveness for probes: no record, no action",
    ("POST", "/hooks/{environment}"): "signed by the provider: its own check below",
    ("POST", "/api/session"): "signing in is how a browser presents a token",
    ("DELETE", "/api/session"): "signing out forgets only the caller's own cookie",
}


def walk(app: Any) -> list[tuple[str, str, str, Route]]:
    """(method, route path, concrete path, route) for every route of the app."""
    out = []
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path
        for key, value in PARAMS.items():
            path = path.replace(f"{{{key}}}", value).replace(f"{{{key}:str}}", value) \
                .replace(f"{{{key}:int}}", value)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            out.append((method, route.path, path, route))
    return out


def test_every_route_refuses_anonymous_and_underprivileged_callers(app: Any) -> None:
    """Walking every route of the daemon's app: each one that changes something names its
    permission and refuses an anonymous caller (401) and a viewer (403 naming the
    permission), with nothing reaching the controller; each reading route refuses an
    anonymous caller, even from loopback, once tokens exist (401), and lets a viewer read."""
    web, controller, state = app
    routes = walk(web)
    assert {(m, p) for m, p, _, _ in routes} >= set(EXEMPT)
    mutating = 0
    for method, template, path, route in routes:
        if (method, template) in EXEMPT:
            continue
        anonymous = send(web, method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        needs = getattr(route.endpoint, "permission", None)
        if method == "GET" and needs is not None:  # a read that needs more than "read"
            viewer = send(web, method, path, "viewer1")
            assert viewer.status_code == 403 and f"'{needs}'" in viewer.json()["error"]
            continue
        if method == "GET":
            if template == "/static/{name}":
                continue  # page.js is the page's; page.css and signin.js are public
            viewer = send(web, method, path, "viewer1")
            assert viewer.status_code not in (401, 403), (method, path, viewer.text)
            continue
        mutating += 1
        permission = getattr(route.endpoint, "permission", None)
        assert permission in ROLES["admin"], (method, path, "names no permission")
        viewer = send(web, method, path, "viewer1", body={"reason": "r", "revision": "abc"})
        assert viewer.status_code == 403, (method, path, viewer.text)
        assert f"'{permission}'" in viewer.json()["error"]
    assert mutating >= 10  # reconcile, 5 operations, promote, approve, two post-mortem routes
    assert controller.triggers == controller.operations == controller.promotions == []
    assert controller.approvals == []
    assert controller.plans == []
    refusals = audit(state)
    assert {r.outcome for r in refusals} == {"refused 401", "refused 403"}
    assert send(web, "POST", "/hooks/pay-prod").status_code in (400, 401)  # not signed
    assert controller.triggers == []
    assert send(web, "GET", "/healthz").status_code == 200


# -- tokens and roles ------------------------------------------------------------------------


def test_expired_revoked_and_unknown_tokens_get_401_saying_why(app: Any) -> None:
    """An expired, a revoked, an unknown and a malformed token: 401, one clear line."""
    web, _, _ = app
    expired = send(web, "GET", "/api/status", "old")
    revoked = send(web, "GET", "/api/status", "gone")
    unknown = send(web, "GET", "/api/status", "no-such-token")
    assert [r.status_code for r in (expired, revoked, unknown)] == [401, 401, 401]
    assert "token 'old' expired at" in expired.json()["error"]
    assert "token 'gone' was revoked" in revoked.json()["error"]
    assert unknown.json()["error"] == "unknown API token"
    assert send(web, "GET", "/api/status", "s-viewer").status_code == 200


def test_roles_are_per_team(app: Any) -> None:
    """The payments operator suspends payments' environments and gets 403 on search's; the
    rollback role rolls back payments' and nothing else; the actor is the token's name."""
    web, controller, state = app
    assert send(web, "POST", "/api/environments/pay-prod/suspend", "payops",
                body={"reason": "freeze"}).status_code == 200
    other = send(web, "POST", "/api/environments/search-prod/suspend", "payops",
                 body={"reason": "freeze"})
    assert other.status_code == 403
    assert other.json()["error"] == ("permission 'suspend' needed on search-prod (team "
                                     "search): payops does not have it")
    assert send(web, "POST", "/api/environments/pay-prod/rollback", "backer",
                body={"reason": "bad"}).status_code == 200
    assert send(web, "POST", "/api/environments/pay-prod/suspend", "backer",
                body={"reason": "x"}).status_code == 403
    assert send(web, "POST", "/api/environments/search-prod/rollback", "backer",
                body={}).status_code == 403
    assert [(o["action"], o["environment"], o["actor"]) for o in controller.operations] == [
        ("suspend", "pay-prod", "payops"), ("rollback", "pay-prod", "backer")]
    done = [(r.actor, r.role, r.action, r.environment, r.outcome)
            for r in reversed(audit(state)) if r.outcome == "ok"]
    assert done == [("payops", "operator", "suspend", "pay-prod", "ok"),
                    ("backer", "rollback", "rollback", "pay-prod", "ok")]


def test_the_session_says_what_the_caller_may_do_per_environment(app: Any) -> None:
    """``GET /api/session`` answers, per environment, the permissions the caller's roles
    allow there: decided by the gate from the token, whatever the request asks for."""
    web, _, _ = app

    def may(token: str) -> dict[str, list[str]]:
        answer = send(web, "GET", "/api/session?role=admin&may=forget", token)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["may"])

    operate = ["read", "reconcile", "retry", "suspend", "resume", "promote", "unquarantine",
               "postmortem", "approve"]
    assert may("payops") == {"pay-prod": operate, "staging": operate, "search-prod": []}
    assert may("backer") == {"pay-prod": ["read", "rollback"], "staging": ["read", "rollback"],
                             "search-prod": []}
    assert may("viewer1") == {env: ["read"] for env in ("pay-prod", "search-prod", "staging")}
    assert may("admin1")["search-prod"] == list(ROLES["admin"])
    assert send(web, "GET", "/api/session").status_code == 401


def test_the_rollback_plan_needs_the_rollback_permission_and_a_sha(app: Any) -> None:
    """The rollback plan is for who may roll back there: 403 naming ``rollback`` for the
    payments operator and for search's environment, 400 for a revision that is no sha."""
    web, controller, _ = app
    url = "/api/environments/pay-prod/rollback/plan"
    assert send(web, "GET", url, "backer").json()["to"] == {"sha": "abc"}
    assert send(web, "GET", url + "?revision=0123abcd", "backer").json()["to"] == {
        "sha": "0123abcd"}
    refused = send(web, "GET", url, "payops")
    assert refused.status_code == 403 and "'rollback'" in refused.json()["error"]
    assert send(web, "GET", "/api/environments/search-prod/rollback/plan",
                "backer").status_code == 403
    bad = send(web, "GET", url + "?revision=HEAD~1", "backer")
    assert bad.status_code == 400 and "not a commit sha" in bad.json()["error"]
    assert send(web, "GET", url + "?rev=1", "backer").status_code == 400
    assert send(web, "GET", "/api/environments/nowhere/rollback/plan",
                "admin1").status_code == 404
    assert controller.plans == ["pay-prod", "pay-prod"]


@given(revision=st.text(max_size=60))
@hypothesis.settings(max_examples=100, deadline=None, suppress_health_check=[
    hypothesis.HealthCheck.function_scoped_fixture])  # the app is only read: shared is fine
def test_any_rollback_plan_revision_is_a_plan_or_a_400(app: Any, revision: str) -> None:
    """Whatever ``?revision=`` holds: the plan of that sha, or 400 quoting it; never 500."""
    from urllib.parse import urlencode

    web, _, _ = app
    answer = send(web, "GET", "/api/environments/pay-prod/rollback/plan?"
                  + urlencode({"revision": revision}), "backer")
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert "is not a commit sha" in answer.json()["error"]
    else:
        assert answer.json()["to"]["sha"] in ("abc", revision.lower())


def test_an_actor_in_the_body_is_refused_unless_the_token_acts_on_behalf(app: Any) -> None:
    """``actor`` in a body: 400 naming the field; a robot made --on-behalf is recorded as
    ``robot (for bob)``."""
    web, controller, state = app
    forged = send(web, "POST", "/api/environments/pay-prod/reconcile", "payops",
                  body={"actor": "bob"})
    assert forged.status_code == 400 and "field 'actor'" in forged.json()["error"]
    robot = send(web, "POST", "/api/environments/pay-prod/reconcile", "robot",
                 body={"actor": "bob", "reason": "deploy 42"})
    assert robot.status_code == 202 and robot.json()["actor"] == "robot (for bob)"
    assert controller.triggers == [("pay-prod", "deploy 42", "robot (for bob)")]
    assert audit(state, action="reconcile")[0].actor == "robot (for bob)"


def test_loopback_is_no_identity_once_tokens_exist(tmp_path: Path) -> None:
    """No token and no api_token: loopback acts as ``local``. A token made: loopback needs
    one too. ``trust_loopback = false`` refuses loopback even with no token; ``true`` keeps
    it trusted beside tokens."""
    state = tmp_path / "state"
    controller = PromotingController(envs())

    def app(**options: Any) -> Any:
        s = Settings(state_dir=state, environments=controller.envs,
                     teams=["payments", "search"], **options)
        return daemon_app(controller, s, state)

    assert send(app(), "POST", "/api/environments/staging/reconcile").status_code == 202
    assert controller.triggers[-1][2] == "local"
    assert send(app(trust_loopback=False), "GET", "/api/status").status_code == 401
    with Store(state) as store:
        store.add_token("ci", digest("s-ci"), role="viewer", team="*", created_by="t",
                        expires_at=None)
    assert send(app(), "GET", "/api/status").status_code == 401
    assert send(app(), "GET", "/api/status", "s-ci").status_code == 200
    assert send(app(trust_loopback=True), "GET", "/api/status").status_code == 200
    assert send(app(trust_loopback=True), "GET", "/api/status",
                client="10.0.0.7").status_code == 401


def test_grants_in_the_settings_add_roles(tmp_path: Path) -> None:
    """A ``[[grants]]`` entry gives a token another role for a team's environments."""
    state = tmp_path / "state"
    with Store(state) as store:
        store.add_token("ann", digest("s-ann"), role="viewer", team="*", created_by="t",
                        expires_at=None)
    controller = PromotingController(envs())
    s = Settings(state_dir=state, environments=controller.envs, teams=["payments", "search"],
                 grants=[{"subject": "ann", "role": "operator", "team": "search"}])
    web = daemon_app(controller, s, state)
    assert send(web, "POST", "/api/environments/search-prod/resume", "s-ann").status_code == 200
    assert send(web, "POST", "/api/environments/pay-prod/resume", "s-ann").status_code == 403


def test_the_policy_reads_as_argo_cds() -> None:
    """The roles as a table: every role reads; rollback only rolls back; admin does all;
    a team's grant covers its environments, ``*`` every one."""
    roles = Roles([Grant("ann", "operator", "payments"), Grant("bob", "rollback", "*"),
                   Grant("root", "admin", "*")])
    table = {
        ("ann", "suspend", "payments"): "operator", ("ann", "suspend", "search"): None,
        ("ann", "rollback", "payments"): None, ("ann", "read", None): "operator",
        ("bob", "rollback", "search"): "rollback", ("bob", "reconcile", "search"): None,
        ("bob", "read", ""): "rollback", ("root", "forget", ""): "admin",
        ("root", "tokens", "search"): "admin", ("eve", "read", None): None,
    }
    assert {key: roles.allows(*key) for key in table} == table
    assert "g, ann, role:operator, payments" in roles.policy_csv()
    assert "p, role:rollback, rollback" in roles.policy_csv()


# -- the audit trail -------------------------------------------------------------------------


def test_refusals_are_audited_within_a_budget(app: Any) -> None:
    """A caller hammering with a wrong token: the first refusals of a minute are audited,
    the rest not (the trail is not flooded); unknown routes are not audited at all."""
    web, _, state = app
    for _ in range(REFUSALS_PER_MINUTE + 15):
        send(web, "GET", "/api/status", "wrong", client="192.0.2.9")
    assert send(web, "GET", "/wp-login.php", client="192.0.2.9").status_code == 404
    rows = audit(state)
    assert len(rows) == REFUSALS_PER_MINUTE
    assert {(r.actor, r.address, r.outcome) for r in rows} == {
        ("?", "192.0.2.9", "refused 401")}


def test_audit_api_filters(app: Any) -> None:
    """``GET /api/audit`` filters by actor, environment, action and since; a viewer reads
    it; a bad filter is 400."""
    web, _, _ = app
    send(web, "POST", "/api/environments/pay-prod/suspend", "payops", body={"reason": "a"})
    send(web, "POST", "/api/environments/pay-prod/resume", "admin1", body={"reason": "b"})
    got = send(web, "GET", "/api/audit?actor=payops&environment=pay-prod&action=suspend",
               "viewer1")
    assert got.status_code == 200
    assert [(r["actor"], r["action"], r["reason"], r["role"]) for r in got.json()] == [
        ("payops", "suspend", "a", "operator")]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert send(web, "GET", f"/api/audit?since={later.replace('+', '%2B')}",
                "viewer1").json() == []
    assert send(web, "GET", "/api/audit?since=yesterday", "viewer1").status_code == 400
    assert send(web, "GET", "/api/audit?who=x", "viewer1").status_code == 400


def test_the_audit_trail_refuses_update_and_delete(store_backend: Database) -> None:
    """The audit table is append-only in SQLite and PostgreSQL: a trigger refuses UPDATE
    and DELETE, even to someone holding the database connection."""
    with store_backend.open() as store:
        store.audit(actor="ann", role="admin", action="forget", outcome="ok")
        for sql in ("UPDATE audit SET actor = 'eve'", "DELETE FROM audit"):
            with pytest.raises(Exception, match="append-only"):
                store.db.execute(sql)
        assert [r.actor for r in store.audit_trail()] == ["ann"]


# -- the CLI -------------------------------------------------------------------------------


def gitops(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    return subprocess.run([sys.executable, "-m", "gitops", *args], capture_output=True,
                          text=True, timeout=120, env={**base, **(env or {})}, cwd=cwd)


def test_tokens_cli_shows_once_keeps_a_digest_and_revokes(tmp_path: Path) -> None:
    """``tokens create`` prints the token once; the record keeps only its SHA-256; ``list``
    shows no secret; ``revoke`` ends it; each step is in ``gitops audit``."""
    state = tmp_path / "state"
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{state}"\nteams = ["payments"]\n')
    env = {"GITOPS_CONFIG": str(config)}
    made = gitops("tokens", "create", "--name", "ci", "--role", "operator", "--team",
                  "payments", "--expires", "90d", env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("gitops_") and "expires" in made.stderr
    with sqlite3.connect(state / "gitops.db") as db:
        dumped = "\n".join(db.iterdump())
    assert secret not in dumped and digest(secret) in dumped
    listed = gitops("tokens", "list", "--json", env=env)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["team"], r["state"]) for r in rows] == [
        ("ci", "operator", "payments", "live")]
    assert secret not in listed.stdout and "digest" not in listed.stdout
    again = gitops("tokens", "create", "--name", "ci", "--role", "viewer", env=env)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert gitops("tokens", "revoke", "ci", env=env).returncode == 0
    assert json.loads(gitops("tokens", "list", "--json", env=env).stdout)[0][
        "state"] == "revoked"
    trail = gitops("audit", "--action", "tokens", "--json", env=env)
    assert [r["target"] for r in json.loads(trail.stdout)] == ["revoke ci", "create ci"]


def test_the_cli_sends_the_persons_token_and_exits_2_when_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sends ``GITOPS_TOKEN`` (else ``~/.config/gitops/token``, refused unless
    mode 600); a 403 from the daemon is exit 2 with the daemon's message."""
    from gitops.web.server import bound_port, start_in_thread, stop

    state = tmp_path / "state"
    make_tokens(state)
    controller = PromotingController(envs())
    settings = Settings(state_dir=state, environments=controller.envs,
                        teams=["payments", "search"], listen="127.0.0.1:0")
    server, thread = start_in_thread(daemon_app(controller, settings, state), "127.0.0.1:0")
    try:
        port = bound_port(server)
        config = tmp_path / "gitops.toml"
        config.write_text(f'state_dir = "{state}"\nlisten = "127.0.0.1:{port}"\n'
                          'environment = "search-prod"\n')
        env = {"GITOPS_CONFIG": str(config), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
        refused = gitops("suspend", "--reason", "x", env={**env, "GITOPS_TOKEN": "s-payops"})
        assert refused.returncode == 2, refused.stderr
        assert "permission 'suspend' needed on search-prod" in refused.stderr
        assert "Traceback" not in refused.stderr
        token_file = tmp_path / "cfg" / "gitops" / "token"
        token_file.parent.mkdir(parents=True)
        token_file.write_text("s-admin\n")
        token_file.chmod(0o644)
        loose = gitops("suspend", "--reason", "x", env=env)
        assert loose.returncode == 2 and "chmod 600" in loose.stderr
        token_file.chmod(0o600)
        done = gitops("suspend", "--reason", "freeze", env=env)
        assert done.returncode == 0, done.stderr
        assert "suspended by admin1" in done.stdout
    finally:
        stop(server, thread)
    assert controller.operations[-1]["actor"] == "admin1"


# -- parsing, fuzzed -------------------------------------------------------------------------


@given(st.text(max_size=30))
@hypothesis.settings(max_examples=300, deadline=None)
def test_lifetimes_and_names_are_parsed_or_refused_in_one_line(text: str) -> None:
    """Any ``--expires`` and ``--name``: a lifetime / the name, or one ``UsageError`` line
    that quotes it; never another exception."""
    from gitops.daemon.tokens import check_name, parse_lifetime
    from gitops.errors import UsageError

    for parse in (parse_lifetime, check_name):
        try:
            parse(text)
        except UsageError as exc:
            assert "\n" not in str(exc).replace(repr(text), "")


def test_a_record_that_cannot_be_read_answers_503_naming_it(
        app: tuple[Any, PromotingController, Path]) -> None:
    """The record of tokens left at an older schema (a newer gitops read it before any
    writer migrated it): a token's request is 503 saying the daemon's log has the reason
    (no path for a caller not yet known), never a 500; once migrated the token works again."""
    application, _, state = app
    with sqlite3.connect(state / "gitops.db") as db:
        newest = db.execute("SELECT * FROM schema_migrations ORDER BY version DESC").fetchone()
        db.execute("DELETE FROM schema_migrations WHERE version = ?", newest[:1])
    answer = send(application, "GET", "/api/status", "viewer1")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "the record cannot be read now; the daemon's log says why"
    with sqlite3.connect(state / "gitops.db") as db:  # as the writer's migration leaves it
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", newest)
    assert send(application, "GET", "/api/status", "viewer1").status_code == 200
