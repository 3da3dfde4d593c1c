"""Approvals (``require_approval``): the decisions as tables (``gitops.daemon.approval``), the
record's approvals (SQLite and PostgreSQL), and the real Daemon on a real Git repository (its
one host unreachable on loopback, so an approved run ends fast and is recorded): a revision
waiting for approval starts no run, the status, the API, the pipeline and the page say so,
and an operator of the owning team's approval (API, CLI, and the page in a real browser
signed in through the real OpenID provider, ``tests/oidcsite.py``) lets exactly that
revision apply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from builders import commit_file, daemon_app, git, git_repo
from clitools import gitops
from hypothesis import strategies as st
from oidcsite import ACCOUNTS, audit, card, get, oidc_site, post, sign_in_as
from test_csrf_browser import browser  # noqa: F401  (the fixture)
from test_notify import HOOK_SECRET, Receiver, hook

from gitops.daemon import approval
from gitops.daemon.approval import Approval, ApprovalInput, Gated
from gitops.daemon.loop import Daemon
from gitops.daemon.policy import Cycle, RunOrder
from gitops.daemon.promotion import links
from gitops.daemon.tokens import digest
from gitops.record.approvals import ApprovalRefused
from gitops.record.store import Database, Store
from gitops.settings import EnvironmentConfig, GrantConfig, Settings
from gitops.web.page import page_data

A, B, C = "a" * 40, "b" * 40, "c" * 40


def order(sha: str = B, kind: str = "reconcile", reason: str = "new commit") -> RunOrder:
    return RunOrder(kind=kind, revision=sha, reason=reason, actor="gitops-daemon")  # type: ignore[arg-type]


def given(required: bool = True, approved: dict[str, Approval] | None = None,
          verified: tuple[str, ...] = (), applied: str | None = A,
          team: str = "payments") -> ApprovalInput:
    return ApprovalInput(required, approved or {}, frozenset(verified), applied, team)


ALICE = Approval("user:alice", "CAB-12 signed off")

NEEDS = [
    ("not required: a new revision applies", B, given(required=False), False),
    ("required: a new revision waits", B, given(), True),
    ("required, approved: it applies", B, given(approved={B: ALICE}), False),
    ("another revision's approval is not this one's", C, given(approved={B: ALICE}), True),
    ("the applied revision (a retry, a drift correction) needs none", A, given(), False),
    ("a revision verified here (a rollback's target) needs none", C, given(verified=(C,)),
     False),
    ("a first revision ever waits", B, given(applied=None), True),
]


@pytest.mark.parametrize(("case", "sha", "inputs", "expected"), NEEDS,
                         ids=[c[0] for c in NEEDS])
def test_needs_approval(case: str, sha: str, inputs: ApprovalInput, expected: bool) -> None:
    """Whether a revision may apply yet, per row."""
    assert approval.needs_approval(sha, inputs) is expected


WAITING_B = ("waiting for approval of bbbbbbbbbb by an operator of team payments "
             "(gitops approve -e ENV bbbbbbbbbb --reason WHY)")

GATE = [
    ("nothing would run: nothing changes", Cycle(None, why="up to date"), None, given(),
     Gated(Cycle(None, why="up to date"))),
    ("a new revision waits, no run, the status says which",
     Cycle(order()), order(), given(), Gated(Cycle(None, why=WAITING_B), waiting=B)),
    ("outside the window it waits for approval first (approved before the window opens)",
     Cycle(None, why="window"), order(), given(),
     Gated(Cycle(None, why=WAITING_B), waiting=B)),
    ("approved: it runs, its reason says who approved it and why",
     Cycle(order()), order(), given(approved={B: ALICE}),
     Gated(Cycle(order(reason="new commit; approved by user:alice: CAB-12 signed off")))),
    ("approved but outside the window: the window's wait stays",
     Cycle(None, why="window"), order(), given(approved={B: ALICE}),
     Gated(Cycle(None, why="window"))),
    ("a rollback to a verified revision runs without approval",
     Cycle(order(C, "rollback")), order(C, "rollback"), given(verified=(C,)),
     Gated(Cycle(order(C, "rollback")))),
    ("not required: as decided",
     Cycle(order()), order(), given(required=False), Gated(Cycle(order()))),
    ("a hold released by the waiting commit is still released",
     Cycle(order(), release_hold=True), order(), given(),
     Gated(Cycle(None, why=WAITING_B, release_hold=True), waiting=B)),
]


@pytest.mark.parametrize(("case", "cycle", "wanted", "inputs", "expected"), GATE,
                         ids=[c[0] for c in GATE])
def test_gate(case: str, cycle: Cycle, wanted: RunOrder | None, inputs: ApprovalInput,
              expected: Gated) -> None:
    """What a cycle does once approvals are asked, per row."""
    assert approval.gate(cycle, wanted, inputs) == expected


REFUSALS = [
    ("abcdef1", "ok", True, None),
    (B, "ok", True, None),
    ("abcdef1", "ok", False, "prod does not require approval (require_approval)"),
    ("abc", "ok", True, "'abc' is not a commit sha: 7 to 64 lower-case hex digits"),
    ("main", "ok", True, "'main' is not a commit sha: 7 to 64 lower-case hex digits"),
    ("abcdef1", " ", True, "an approval needs a reason: who approved what, and why, is "
                           "recorded"),
]


@pytest.mark.parametrize(("sha", "reason", "required", "refused"), REFUSALS)
def test_approval_refusal(sha: str, reason: str, required: bool, refused: str | None) -> None:
    """Malformed approvals are refused before the record is asked."""
    assert approval.approval_refusal(sha, reason, required=required,
                                     environment="prod") == refused


def test_the_record_keeps_what_waits_and_who_approved_it(store_backend: Database) -> None:
    """The newest revision waiting is the one to approve; an approval of another (or of
    none waiting) is refused naming the one waiting; a newer revision overtakes an older
    one, and the approval is kept with who, the role and why."""
    with store_backend.open() as store:
        with pytest.raises(ApprovalRefused, match="no revision is waiting for approval"):
            store.approve("prod", B[:7], actor="x", role="operator", reason="r")
        assert store.request_approval("prod", B)
        assert store.request_approval("prod", B)  # again: still waiting, since unchanged
        first = store.pending_approval("prod")
        assert first is not None and first.sha == B
        assert store.request_approval("prod", C)  # a newer revision came
        with pytest.raises(ApprovalRefused, match=f"{B[:7]} is not the revision waiting for "
                                                  f"approval; {C[:10]} is"):
            store.approve("prod", B[:7], actor="x", role="operator", reason="r")
        row = store.approve("prod", C[:8], actor="user:alice", role="operator",
                            reason="CAB-12")
        assert (row.sha, row.approved_by, row.role, row.reason) == (
            C, "user:alice", "operator", "CAB-12")
        assert store.pending_approval("prod") is None
        assert not store.request_approval("prod", C)  # approved already
        assert [a.sha for a in store.approvals("prod")] == [C]
        assert store.approvals("other") == []


# -- the daemon ----------------------------------------------------------------------------

INVENTORY = ("settings:\n  ssh:\n    port: 9\n    connect_timeout: 2\ngroups:\n  web: {}\n"
             "hosts:\n  pay-1:\n    address: 127.0.0.1\n    groups: [web]\n")


def _repo(tmp_path: Path) -> Path:
    return git_repo(tmp_path / "repo", {"inventories/pay-prod.yml": INVENTORY})


def _fields(repo: Path) -> dict[str, Any]:
    """The settings' teams and environments: pay-prod, owned by payments, requires approval."""
    return {"teams": ["payments", "search"], "environments": [EnvironmentConfig(
        name="pay-prod", repo=str(repo), watch=False, interval=7200, jitter=0,
        team="payments", require_approval=True)]}


def _settings(tmp_path: Path, repo: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", **_fields(repo))


def _runs(d: Daemon) -> list[dict[str, Any]]:
    with Store(d.settings.state_dir) as store:
        return [r.as_dict() for r in store.history("pay-prod", limit=20)]


def _reconciling(d: Daemon) -> tuple[str, str] | None:
    with Store(d.settings.state_dir) as store:
        row = store.environment_status("pay-prod")
        found = row.condition("Reconciling") if row is not None else None
    return (found.reason, found.message) if found is not None else None


def test_a_revision_waiting_for_approval_applies_nothing_until_approved(
        tmp_path: Path) -> None:
    """The head waits: no run is recorded (no worker, no host touched), the status, the
    API's status, the pipeline, the page and `gitops status` say "waiting for approval of
    <sha>"; an approval of it lets the next cycle run it, its reason naming who approved;
    a newer commit waits for its own approval."""
    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    d = Daemon(_settings(tmp_path, repo))
    env = d.envs["pay-prod"]

    d.cycle(env, None)
    assert _runs(d) == [] and env.running is None
    waiting = (f"waiting for approval of {head[:10]} by an operator of team payments "
               f"(gitops approve -e ENV {head[:10]} --reason WHY)")
    assert _reconciling(d) == ("WaitingForApproval", waiting)
    d.cycle(env, None)  # again (a poll, an operator's "reconcile now"): still nothing
    assert _runs(d) == []
    status = next(r for r in d.status() if r["host"] == "")  # GET /api/status
    assert status["waiting_for_approval"] == head
    assert {"type": "Reconciling", "status": "False", "reason": "WaitingForApproval",
            "message": waiting} in status["conditions"]
    assert {p["environment"]: p["waiting"] for p in d.pipeline()} == {"pay-prod": waiting}
    with Store(d.settings.state_dir) as store:
        page = page_data(store, chain=links(d.settings.environments))
    assert page["environments"][0]["awaiting_approval"] == head
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:9"\n'
                      'teams = ["payments"]\n[[environments]]\nname = "pay-prod"\n'
                      f'repo = "{repo}"\nteam = "payments"\nrequire_approval = true\n')
    shown = gitops("status", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert waiting in shown.stdout

    stale = gitops("approve", "-e", "pay-prod", "1234567", "--reason", "ok", "--config",
                   str(config))
    assert stale.returncode == 2
    assert stale.stderr.strip() == (f"error: pay-prod: 1234567 is not the revision waiting "
                                    f"for approval; {head[:10]} is")
    approved = gitops("approve", "-e", "pay-prod", head[:10], "--reason", "CAB-12 signed off",
                      "--config", str(config))
    assert approved.returncode == 0, approved.stderr
    assert f"pay-prod: {head[:10]} approved by " in approved.stdout

    d.cycle(env, None)
    runs = _runs(d)
    assert [(r["kind"], r["sha"]) for r in runs] == [("reconcile", head)]
    assert runs[0]["reason"].endswith(": CAB-12 signed off")
    assert "; approved by " in runs[0]["reason"]
    assert _reconciling(d) is None or _reconciling(d)[0] != "WaitingForApproval"  # type: ignore[index]
    with Store(d.settings.state_dir) as store:
        trail = store.audit_trail(action="approve")
    assert [(a.environment, a.target, a.reason, a.role) for a in trail] == [
        ("pay-prod", head, "CAB-12 signed off", "local")]

    newer = commit_file(repo, "README", "a newer revision\n")
    d.cycle(env, None)
    assert len(_runs(d)) == 1  # the newer one waits for its own approval
    assert _reconciling(d) == ("WaitingForApproval", waiting.replace(head[:10], newer[:10]))


def test_the_owning_team_hears_once_that_a_revision_waits_for_approval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notifier of payments asking for ``approval`` hears that the head waits, once (the
    documented webhook format, the status's message): not again on the next cycle nor from
    a daemon restarted on the same record; search's notifier hears nothing; a newer commit
    is told again."""
    receiver = Receiver()
    try:
        repo = _repo(tmp_path)
        head = git(repo, "rev-parse", "HEAD")
        url = f"{receiver.base}/hooks/{HOOK_SECRET}"
        settings = Settings(state_dir=tmp_path / "state", **_fields(repo), notifiers=[
            hook(tmp_path, monkeypatch, url, events=["approval"], teams=["payments"]),
            hook(tmp_path, monkeypatch, url, events=["approval"], teams=["search"])])
        d = Daemon(settings)
        d.cycle(d.envs["pay-prod"], None)
        d.cycle(d.envs["pay-prod"], None)
        again = Daemon(settings)  # a restart: the record already shows it waiting
        again.cycle(again.envs["pay-prod"], None)
        newer = commit_file(repo, "README", "a newer revision\n")
        again.cycle(again.envs["pay-prod"], None)
        told = [(r.body["kind"], r.body["environment"], r.body["revision"]["sha"])
                for r in receiver.requests]
        assert told == [("approval", "pay-prod", head), ("approval", "pay-prod", newer)]
        assert receiver.problems == []
        assert receiver.requests[0].body["summary"] == (
            f"waiting for approval of {head[:10]} by an operator of team payments "
            f"(gitops approve -e ENV {head[:10]} --reason WHY)")
        assert _runs(again) == []
    finally:
        receiver.close()


def test_a_rollback_to_a_verified_revision_needs_no_approval(tmp_path: Path) -> None:
    """An operator's rollback holds a revision verified here: the cycle runs it at once,
    though the environment requires approval (its newer head still waits)."""
    from gitops.records import Revision

    repo = _repo(tmp_path)
    first = git(repo, "rev-parse", "HEAD")
    d = Daemon(_settings(tmp_path, repo))
    env = d.envs["pay-prod"]
    commit_file(repo, "README", "second\n")
    with Store(d.settings.state_dir) as store:
        revision = Revision(sha=first, branch="main", author="T",
                            committed_at=store.clock(), message="one")
        store.record_verified("pay-prod", revision, 1)
    d.operate("pay-prod", "rollback", actor="ops", reason="bad release", revision=first)
    pending, env.pending = env.pending, None
    d.cycle(env, pending)
    assert [(r["kind"], r["sha"]) for r in _runs(d) if not r["event"]] == [
        ("rollback", first)]


# -- the API, through the gate --------------------------------------------------------------

SECRETS = {"payops": "s-payops", "searchops": "s-searchops", "viewer1": "s-viewer",
           "admin1": "s-admin"}


def _tokens(state: Path) -> None:
    with Store(state) as store:
        for name, role, team in (("payops", "operator", "payments"),
                                 ("searchops", "operator", "search"),
                                 ("viewer1", "viewer", "*"), ("admin1", "admin", "*")):
            store.add_token(name, digest(SECRETS[name]), role=role, team=team,
                            created_by="test", expires_at=None)


def _send(app: Any, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {SECRETS[token]}"}

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:9469") as http:
            return await http.request(method, path, headers=headers,
                                      content=None if body is None else json.dumps(body))

    return asyncio.run(go())


def test_only_an_operator_of_the_owning_team_approves_over_the_api(tmp_path: Path) -> None:
    """POST approve: a viewer and search's operator get 403 naming 'approve' (nothing
    approved, nothing run); a stale sha 409; payments' operator 200, recorded with the
    token's name (never a body's), the role and the reason, in the approvals and the audit
    trail, and the environment woken to apply it. Bad requests: one line, 404 or 400."""
    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    settings = _settings(tmp_path, repo)
    _tokens(settings.state_dir)
    d = Daemon(settings)
    env = d.envs["pay-prod"]
    d.cycle(env, None)
    web = daemon_app(d, settings, settings.state_dir)
    url = "/api/environments/pay-prod/approve"
    body = {"revision": head, "reason": "CAB-12 signed off"}

    seen = _send(web, "GET", "/api/environments/pay-prod/approval", "viewer1").json()
    assert seen == {"environment": "pay-prod", "required": True, "team": "payments",
                    "waiting": head, "may_approve": False}
    assert _send(web, "GET", "/api/environments/pay-prod/approval",
                 "payops").json()["may_approve"] is True
    for who in ("viewer1", "searchops"):
        refused = _send(web, "POST", url, who, body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == (f"permission 'approve' needed on pay-prod (team "
                                           f"payments): {who} does not have it")
    stale = _send(web, "POST", url, "payops", {"revision": "1234567", "reason": "r"})
    assert stale.status_code == 409
    assert stale.json() == {"error": f"pay-prod: 1234567 is not the revision waiting for "
                                     f"approval; {head[:10]} is"}
    named = _send(web, "POST", url, "payops", {**body, "actor": "mallory"})
    assert named.status_code == 400 and "field 'actor'" in named.json()["error"]
    assert env.pending is None and _runs(d) == []

    ok = _send(web, "POST", url, "payops", body)
    assert ok.status_code == 200, ok.text
    assert (ok.json()["sha"], ok.json()["approved_by"], ok.json()["role"]) == (
        head, "payops", "operator")
    assert env.pending is not None  # woken: the apply is triggered
    again = _send(web, "POST", url, "payops", body)
    assert again.status_code == 409  # approved already: nothing waits
    pending, env.pending = env.pending, None
    d.cycle(env, pending)
    runs = _runs(d)
    assert [(r["kind"], r["sha"]) for r in runs] == [("reconcile", head)]
    assert runs[0]["reason"].endswith("; approved by payops: CAB-12 signed off")
    with Store(settings.state_dir) as store:
        trail = store.audit_trail(action="approve")
    assert [(a.actor, a.role, a.outcome, a.target) for a in trail] == [
        ("payops", "operator", "failed 409", head), ("payops", "operator", "ok", head),
        ("payops", "operator", "failed 400", ""), ("payops", "operator", "failed 409",
                                                   "1234567"),
        ("searchops", "", "refused 403", ""), ("viewer1", "", "refused 403", "")]
    for path, sent, status, says in (
            ("/api/environments/nosuch/approve", body, 404, "unknown environment"),
            (url, {"revision": "main~1", "reason": "r"}, 400,
             "'main~1' is not a commit sha: 7 to 64 lower-case hex digits"),
            (url, {"revision": head}, 400, "an approval needs a reason"),
            (url, {"revision": 7, "reason": "r"}, 400, "'revision' must be a string"),
            (url, {"revision": head, "reason": "a\nb"}, 400, "'reason'"),
            (url, [head], 400, "the body must be a JSON object")):
        answer = _send(web, "POST", path, "admin1", sent)
        assert answer.status_code == status, (sent, answer.text)
        assert says in answer.json()["error"] and "\n" not in answer.json()["error"]


PEOPLE = {**ACCOUNTS, "sam": {"password": "sam-pw", "email": "sam@example.org",
                              "groups": ["search-ops"]}}
GRANTS = [GrantConfig(subject="group:payments-ops", role="operator", team="payments"),
          GrantConfig(subject="group:search-ops", role="operator", team="search")]


def test_only_the_owning_team_approves_from_the_page_signed_in_through_the_provider(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        browser: Any) -> None:  # noqa: F811
    """In a real browser signed in through the real OpenID provider, over the real Daemon:
    pay-prod (team payments) requires approval, so a cycle applies nothing and its card says
    "waiting for approval". bob (a viewer) and sam (search-ops, operator of search) see no
    Approve button and a POST forged from their session gets 403 naming 'approve'. alice
    (payments-ops, operator of payments) approves from the page with a reason; the approval
    and ``gitops audit`` name user:alice; the next cycle runs that revision, and a newer
    commit waits for its own approval, on the page too."""
    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    fields = {**_fields(repo), "grants": GRANTS}
    d = Daemon(Settings(state_dir=tmp_path / "state", **fields))
    env = d.envs["pay-prod"]
    approve = "/api/environments/pay-prod/approve"

    with oidc_site(tmp_path, monkeypatch, d, accounts=PEOPLE, **fields) as site:
        d.cycle(env, None)
        assert _runs(d) == [] and env.running is None
        for login in ("bob", "sam"):
            p = sign_in_as(browser, site, login, ready="[data-testid=approval]")
            pay = card(p, "pay-prod")
            pay.locator(".badge", has_text="waiting for approval").wait_for()
            assert head[:10] in pay.locator("[data-testid=approval]").inner_text()
            assert get(p, "/api/environments/pay-prod/approval")["body"]["may_approve"] is False
            p.wait_for_load_state("networkidle")  # the page has asked the same
            assert pay.locator("button", has_text="Approve").count() == 0
            status, error = post(p, approve, {"revision": head, "reason": "forged"})
            assert (status, error) == (403, f"permission 'approve' needed on pay-prod (team "
                                            f"payments): user:{login} does not have it")
            p.context.close()
        with Store(site.settings.state_dir) as store:
            assert store.approvals("pay-prod") == []
        assert env.pending is None and _runs(d) == []

        p = sign_in_as(browser, site, "alice", ready="[data-testid=approval]")
        note = card(p, "pay-prod").locator("[data-testid=approval]")
        note.locator("button", has_text="Approve").wait_for()
        note.locator("input").fill("CAB-12 signed off")
        note.locator("button", has_text="Approve").click()
        note.locator(".approval-answer", has_text="approved by user:alice; applying").wait_for()
        with Store(site.settings.state_dir) as store:
            (done,) = store.approvals("pay-prod")
        assert (done.sha, done.approved_by, done.role, done.reason) == (
            head, "user:alice", "operator", "CAB-12 signed off")
        assert [(r["actor"], r["role"], r["target"], r["reason"], r["outcome"])
                for r in audit(site.settings.state_dir) if r["action"] == "approve"] == [
            ("user:bob", "", "", "", "refused 403"), ("user:sam", "", "", "", "refused 403"),
            ("user:alice", "operator", head, "CAB-12 signed off", "ok")]

        assert env.pending is not None  # woken by the approval
        pending, env.pending = env.pending, None
        d.cycle(env, pending)
        runs = _runs(d)
        assert [(r["kind"], r["sha"]) for r in runs] == [("reconcile", head)]
        assert runs[0]["reason"].endswith("; approved by user:alice: CAB-12 signed off")

        newer = commit_file(repo, "README", "a newer revision\n")
        d.cycle(env, None)
        assert len(_runs(d)) == 1  # the newer one waits for its own approval
        assert _reconciling(d) == ("WaitingForApproval", (
            f"waiting for approval of {newer[:10]} by an operator of team payments "
            f"(gitops approve -e ENV {newer[:10]} --reason WHY)"))
        p.reload()
        note.locator("code", has_text=newer[:10]).wait_for()
        note.locator("button", has_text="Approve").wait_for()
        p.context.close()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The daemon's app over a real Daemon whose environment has nothing waiting."""
    tmp_path = tmp_path_factory.mktemp("approve-fuzz")
    settings = _settings(tmp_path, _repo(tmp_path))
    _tokens(settings.state_dir)
    return daemon_app(Daemon(settings), settings, settings.state_dir)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["revision", "reason", "actor", "force", "x"]) | st.text(max_size=8),
        inner, max_size=4), max_leaves=8))
def test_any_approve_body_is_answered_never_with_a_500(fuzz_app: Any, body: Any) -> None:
    """Fuzzed JSON bodies to approve: a 4xx with one line (nothing waits here, so nothing
    is ever approved), never a 500 or a traceback."""
    answer = _send(fuzz_app, "POST", "/api/environments/pay-prod/approve", "payops", body)
    assert 400 <= answer.status_code < 500, answer.text
    assert "\n" not in answer.json()["error"]
