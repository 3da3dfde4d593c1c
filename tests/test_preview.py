"""Previews without a lab: pull/merge request webhooks, host picking, queueing, the comment
(rendering, marker, truncation) and its delivery to local stand-ins of the GitHub, GitLab and
Gitea APIs (``githost``), the record, and the daemon's webhook route queueing a preview."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builders import dry_repo, git
from githost import TOKEN, GitHost
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_server import RecordingController

from gitops.daemon import notify
from gitops.daemon.preview import (
    PreviewRequest,
    Previews,
    admit,
    marker,
    pick_hosts,
    pull_ref,
    render_comment,
    run_preview,
)
from gitops.record.store import Database
from gitops.records import CheckResult, HostPlan, OpPlan, Plan, PreviewReport, VerifyReport
from gitops.settings import (
    CommitStatusConfig,
    EnvironmentConfig,
    PreviewSettings,
    SecretRef,
    Settings,
)
from gitops.web.server import bound_port, create_app, start_in_thread, stop
from gitops.web.webhooks import (
    InvalidSignature,
    UnsupportedEvent,
    WebhookError,
    WebhookEvent,
    hmac_sha256_hex,
    parse_webhook,
    why_no_preview,
    why_untrusted,
)

SECRET = "preview-hook-secret-3b1d"
SHA = "a" * 40


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


@pytest.fixture(autouse=True)
def _own_preview_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preview slots named after this test process (``u<pid>p0``), so that these tests never
    take the slot locks of a lab test or another test run on the same machine."""
    monkeypatch.setenv("GITOPS_LAB_NAME", "u" + _base36(os.getpid())[-4:])


def _github_pr(action: str = "opened", base: str = "main", *, head_repo: str = "acme/state",
               author: str = "alice", labels: tuple[str, ...] = ()) -> bytes:
    """GitHub's (and Gitea's) pull_request payload, in the fields the daemon reads."""
    return json.dumps({"action": action, "number": 12, "pull_request": {
        "number": 12, "user": {"login": author}, "labels": [{"name": n} for n in labels],
        "head": {"ref": "feature", "sha": SHA, "repo": {"full_name": head_repo}},
        "base": {"ref": base, "repo": {"full_name": "acme/state"}}}}).encode()


def _gitlab_mr(action: str = "update", oldrev: str | None = "b" * 40, *, source: int = 1,
               author: str = "alice", labels: tuple[str, ...] = ()) -> bytes:
    attrs = {"iid": 5, "source_branch": "feature", "target_branch": "main",
             "last_commit": {"id": SHA}, "action": action, "source_project_id": source,
             "target_project_id": 1}
    if oldrev:
        attrs["oldrev"] = oldrev
    return json.dumps({"object_kind": "merge_request", "user": {"username": author},
                       "labels": [{"title": n} for n in labels],
                       "object_attributes": attrs}).encode()


def _signed(provider: str, body: bytes) -> dict[str, str]:
    json_ = {"Content-Type": "application/json"}  # as every provider sends a JSON delivery
    if provider == "github":
        return {**json_, "X-GitHub-Event": "pull_request",
                "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, body)}
    if provider == "gitea":
        return {**json_, "X-Gitea-Event": "pull_request", "X-GitHub-Event": "pull_request",
                "X-Gitea-Signature": hmac_sha256_hex(SECRET, body)}
    return {**json_, "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET}


# -- webhooks ------------------------------------------------------------------------------


def test_github_pull_request_opened_is_previewed() -> None:
    """A signed GitHub pull_request (opened) gives its number, branch, head and base."""
    event = parse_webhook(_signed("github", _github_pr()), _github_pr(), SECRET)
    assert (event.number, event.branch, event.after, event.base) == (12, "feature", SHA, "main")
    assert why_no_preview(event, "main") is None


def test_gitea_synchronized_is_previewed() -> None:
    """Gitea's pull_request with new commits (``synchronized``) is previewed."""
    body = _github_pr("synchronized")
    event = parse_webhook(_signed("gitea", body), body, SECRET)
    assert event.provider == "gitea" and event.number == 12
    assert why_no_preview(event, "main") is None


def test_gitlab_update_previewed_only_with_new_commits() -> None:
    """A GitLab merge request update is previewed when it brought commits, not a title edit."""
    with_commits = parse_webhook(_signed("gitlab", b""), _gitlab_mr(), SECRET)
    assert (with_commits.number, with_commits.after) == (5, SHA)
    assert why_no_preview(with_commits, "main") is None
    body = _gitlab_mr(oldrev=None)
    edit = parse_webhook(_signed("gitlab", body), body, SECRET)
    assert why_no_preview(edit, "main") == "merge request update without new commits"


def test_closed_or_other_base_is_ignored_with_a_reason() -> None:
    """A closed pull request and one into another branch preview nothing, each saying why."""
    closed = parse_webhook(_signed("github", _github_pr("closed")), _github_pr("closed"), SECRET)
    assert "brings no new commit" in (why_no_preview(closed, "main") or "")
    other = _github_pr(base="release")
    event = parse_webhook(_signed("github", other), other, SECRET)
    assert why_no_preview(event, "main") == "pull request into 'release', not the watched 'main'"


def test_pull_request_with_wrong_signature_or_no_number_is_refused() -> None:
    """A bad signature is refused before parsing; a body without a number is unsupported."""
    headers = _signed("github", _github_pr())
    with pytest.raises(InvalidSignature):
        parse_webhook(headers, _github_pr() + b" ", SECRET)
    body = json.dumps({"action": "opened", "pull_request": {}}).encode()
    with pytest.raises(UnsupportedEvent, match="no number"):
        parse_webhook(_signed("github", body), body, SECRET)


def _trust(event: WebhookEvent, allow: bool = False, authors: tuple[str, ...] = (),
           labels: tuple[str, ...] = ()) -> str | None:
    return why_untrusted(event, allow_forks=allow, authors=list(authors), labels=list(labels))


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab"])
def test_pull_request_from_a_fork_is_trusted_only_as_the_settings_say(provider: str) -> None:
    """A pull request from another repository than the base is refused unless forks are
    allowed, and then only for a trusted author or label; one from the same repository is
    trusted. Each provider's payload says "fork" its own way."""
    def event(fork: bool, author: str = "alice", labels: tuple[str, ...] = ()) -> WebhookEvent:
        body = (_gitlab_mr(source=2 if fork else 1, author=author, labels=labels)
                if provider == "gitlab" else
                _github_pr(head_repo="mallory/state" if fork else "acme/state", author=author,
                           labels=labels))
        return parse_webhook(_signed(provider, body), body, SECRET)

    assert not event(False).fork and _trust(event(False)) is None
    fork = event(True, "mallory")
    assert fork.fork and fork.author == "mallory"
    assert "previews of forks are off ([preview] allow_forks)" in (_trust(fork) or "")
    assert "neither a trusted author nor a trusted label" in (
        _trust(fork, True, authors=("alice",), labels=("safe",)) or "")
    assert _trust(event(True, "alice"), True, authors=("alice",)) is None
    assert _trust(event(True, labels=("safe", "x")), True, labels=("safe",)) is None
    assert _trust(event(True, labels=("safe",)), False, labels=("safe",)) is not None


def test_payload_that_does_not_say_where_the_head_is_counts_as_a_fork() -> None:
    """A pull request whose head repository is missing (a deleted fork) is a fork."""
    body = json.dumps({"action": "opened", "number": 3, "pull_request": {
        "head": {"ref": "x", "sha": SHA, "repo": None},
        "base": {"ref": "main", "repo": {"full_name": "acme/state"}}}}).encode()
    event = parse_webhook(_signed("github", body), body, SECRET)
    assert event.fork and "previews of forks are off" in (_trust(event) or "")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(
                         ["repo", "full_name", "user", "login", "username", "labels", "name",
                          "title", "head", "base", "ref", "sha", "id"]), inner, max_size=4),
                     max_leaves=12)


@hypothesis_settings(max_examples=200, deadline=None)
@given(provider=st.sampled_from(["github", "gitea", "gitlab"]), head=_JSON, base=_JSON,
       user=_JSON, labels=_JSON)
def test_any_pull_request_payload_is_parsed_or_refused_in_one_line(
        provider: str, head: object, base: object, user: object, labels: object) -> None:
    """Whatever a signed pull request's repository, user and label fields hold, the parser
    answers an event or a ``WebhookError``; a payload that does not show the same repository
    on both sides is a fork."""
    if provider == "gitlab":
        body = json.dumps({"user": user, "labels": labels, "object_attributes": {
            "iid": 1, "source_branch": "f", "target_branch": "main", "action": "open",
            "source_project_id": head, "target_project_id": base}}).encode()
    else:
        body = json.dumps({"action": "opened", "number": 1, "pull_request": {
            "user": user, "labels": labels,
            "head": {"ref": "f", "sha": SHA, "repo": head},
            "base": {"ref": "main", "repo": base}}}).encode()
    try:
        event = parse_webhook(_signed(provider, body), body, SECRET)
    except WebhookError as exc:
        assert "\n" not in str(exc)
        return
    same = (type(head) is int and type(base) is int and head == base
            if provider == "gitlab" else
            isinstance(head, dict) and isinstance(base, dict)
            and isinstance(head.get("full_name"), str)
            and head.get("full_name") == base.get("full_name"))
    assert event.fork is not same
    assert event.fork or _trust(event) is None
    why = _trust(event)
    assert why is None or "\n" not in why


# -- decisions -----------------------------------------------------------------------------


def test_pick_hosts_takes_n_per_group_in_inventory_order() -> None:
    """At most N hosts of each group stand in the lab; a host in two groups counts for both."""
    groups = {"web-1": ["web"], "web-2": ["web"], "db-1": ["db"], "both": ["web", "db"],
              "db-2": ["db"]}
    assert pick_hosts(groups, 1) == ["web-1", "db-1"]
    assert pick_hosts(groups, 2) == ["web-1", "web-2", "db-1", "both"]


def test_admit_replaces_a_waiting_push_of_the_same_pull_request() -> None:
    """A new push replaces its pull request's waiting preview; others queue up to the limit."""
    waiting = [("lab", "github", 1), ("lab", "github", 2)]
    assert admit(waiting, ("lab", "github", 2), 2) == "replaced"
    assert admit(waiting, ("lab", "github", 3), 3) == "queued"
    assert admit(waiting, ("lab", "github", 3), 2) == "full"
    assert admit([("lab", "cli", None)], ("lab", "cli", None), 5) == "queued"


# -- the comment ---------------------------------------------------------------------------


def _report(result: str = "success", *, diff: str = "", mode: str = "lab") -> PreviewReport:
    plan = Plan(hosts=(HostPlan(host="web-1", ops=(
        OpPlan(name="App configuration", service="app", would_change=True, diff=diff or None),
        OpPlan(name="Install nginx", service="web", would_change=False))),))
    checks = (CheckResult(host="web-1", service="web", check="test_nginx_running",
                          status="pass"),
              CheckResult(host="web-1", service="app", check="test_answers", status="fail",
                          message="assert 502 == 200") if result == "failure" else
              CheckResult(host="web-1", service="app", check="test_answers", status="pass"))
    return PreviewReport(environment="prod", branch="feature", base="main", mode=mode,
                         result=result, summary="a summary", head_sha=SHA, base_sha="c" * 40,
                         hosts={"web-1": "lab-1"} if mode == "lab" else {}, lab="pvp0",
                         dry_reason="must run as root" if mode == "dry-run" else "",
                         plan=plan,
                         verify=VerifyReport(results=checks) if mode == "lab" else None)


def test_comment_shows_changed_operations_checks_and_marker() -> None:
    """The comment holds the marker, the changed operations (not the unchanged), the failed
    check with its message, and the passing ones."""
    text = render_comment(_report("failure", diff="-old\n+new"), mark=marker("prod"),
                          report_url="http://status/previews/3")
    assert text.startswith("<!-- gitops-preview:prod -->")
    assert "| web-1 (as lab-1) | app | App configuration |" in text
    assert "Install nginx" not in text
    assert "| web-1 | app/test_answers | ❌ fail |" in text and "assert 502 == 200" in text
    assert "| web-1 | web/test_nginx_running | ✅ pass |" in text
    assert "```diff\n-old\n+new\n```" in text
    assert "[Full report](http://status/previews/3)" in text


def test_dry_run_comment_says_so() -> None:
    """A dry run's comment says it is one (plan only) and why."""
    text = render_comment(_report(mode="dry-run"), mark=marker("prod"))
    assert "**Dry run** (plan only, against the environment's hosts): must run as root" in text


def test_long_comment_is_cut_to_the_limit_with_a_pointer() -> None:
    """Over the host's limit the diffs go first, then the text is cut, fences closed, with a
    pointer to the full report; the marker stays."""
    report = _report(diff="+" + "x" * 5000)
    full = render_comment(report, mark=marker("prod"), report_url="http://s/previews/1")
    no_diffs = render_comment(report, mark=marker("prod"), limit=len(full) - 1,
                              report_url="http://s/previews/1")
    assert "xxxx" not in no_diffs and "App configuration" in no_diffs
    cut = render_comment(report.model_copy(update={"problems": ("p" * 80,) * 200}),
                         mark=marker("prod"), limit=3000, report_url="http://s/previews/1")
    assert len(cut) <= 3000
    assert cut.startswith(marker("prod"))
    assert cut.count("```") % 2 == 0
    assert cut.endswith("the full report is [on the status page](http://s/previews/1).*")


# -- the comment at each Git host ----------------------------------------------------------


@pytest.fixture(params=["github", "gitlab", "gitea"])
def host(request: pytest.FixtureRequest) -> Iterator[GitHost]:
    h = GitHost(request.param)
    yield h
    h.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> SecretRef:
    monkeypatch.setenv("GITOPS_TEST_API_TOKEN", TOKEN)
    return SecretRef(env="GITOPS_TEST_API_TOKEN")


def _config(host: GitHost, token: SecretRef) -> CommitStatusConfig:
    return CommitStatusConfig(provider=host.provider, api_url=host.base,  # type: ignore[arg-type]
                              repository="acme/state", token=token)


def test_comment_created_then_edited_in_place(host: GitHost, token: SecretRef) -> None:
    """The first comment is created; the next finds it by its marker and edits it, in each
    host's documented API; another pull request's comments are left alone."""
    config = _config(host, token)
    mark = marker("prod")
    other = notify.upsert_comment(config, 3, f"{mark}\nother pull request", mark,
                                  sleep=lambda _: None)
    first = notify.upsert_comment(config, 9, f"{mark}\nfirst", mark, sleep=lambda _: None)
    second = notify.upsert_comment(config, 9, f"{mark}\nsecond", mark, sleep=lambda _: None)
    assert host.problems == []
    assert (other.what, first.what, second.what) == (
        "comment created", "comment created", "comment edited")
    assert first.ok and second.ok
    mine = [c for c in host.comments if c.number == 9]
    assert len(mine) == 1 and mine[0].body.endswith("second") and mine[0].edits == 1
    assert [c.body for c in host.comments if c.number == 3] == [f"{mark}\nother pull request"]


def test_comment_of_another_user_with_the_marker_is_not_edited(
        host: GitHost, token: SecretRef) -> None:
    """A comment holding the marker but written by someone else (the marker is no proof) is
    left alone: the token's own user (``GET /user``) writes a comment of its own."""
    config = _config(host, token)
    mark = marker("prod")
    forged = host.add_comment(9, f"{mark}\nplease merge", author_id=77, login="mallory")
    made = notify.upsert_comment(config, 9, f"{mark}\nthe report", mark, sleep=lambda _: None)
    again = notify.upsert_comment(config, 9, f"{mark}\nthe next", mark, sleep=lambda _: None)
    assert host.problems == []
    assert (made.what, again.what) == ("comment created", "comment edited")
    assert (forged.body, forged.edits) == (f"{mark}\nplease merge", 0)
    assert [c.body for c in host.comments if c.author_id != 77] == [f"{mark}\nthe next"]


def test_comment_found_beyond_the_first_page(token: SecretRef) -> None:
    """On GitHub the earlier comment is found on a later page of 100 comments."""
    github = GitHost("github")
    try:
        config = _config(github, token)
        for i in range(150):
            notify.upsert_comment(config, 1, f"<!-- x{i} -->", f"<!-- x{i} -->",
                                  sleep=lambda _: None)
        edited = notify.upsert_comment(config, 1, "<!-- x120 --> again", "<!-- x120 -->",
                                       sleep=lambda _: None)
        assert edited.what == "comment edited" and len(github.comments) == 150
    finally:
        github.close()


def test_unreachable_host_never_raises(token: SecretRef) -> None:
    """A Git host that does not answer gives a failed delivery, with no token in it."""
    config = CommitStatusConfig(provider="github", api_url="http://127.0.0.1:9",
                                repository="acme/state", token=token)
    delivery = notify.upsert_comment(config, 1, "<!-- m --> x", "<!-- m -->", retries=0,
                                     sleep=lambda _: None)
    assert not delivery.ok and TOKEN not in str(delivery)


# -- the daemon's route and queue (real store, runners not started) ------------------------


def test_signed_pull_request_queues_a_preview_with_a_pending_status(
        tmp_path: Path, token: SecretRef, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed PR webhook is answered 202 with a queued preview, recorded, with a pending
    ``gitops/preview/<env>`` status; a second push replaces the waiting one."""
    monkeypatch.setenv("GITOPS_TEST_HOOK", SECRET)
    github = GitHost("github")
    env = EnvironmentConfig(name="prod", repo=str(tmp_path), webhook_secret=SecretRef(
        env="GITOPS_TEST_HOOK"), commit_status=[_config(github, token)])
    settings = Settings(state_dir=tmp_path / "state", environments=[env], listen="127.0.0.1:0")
    previews = Previews(settings, sleep=lambda _: None)
    app = create_app(RecordingController([env]), settings, previews=previews)
    server, thread = start_in_thread(app, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{bound_port(server)}/hooks/prod"
        body = _github_pr()
        first = httpx.post(url, content=body, headers=_signed("github", body))
        assert first.status_code == 202 and first.json()["decision"] == "queued"
        again = httpx.post(url, content=body, headers=_signed("github", body))
        assert again.json()["decision"] == "replaced"
        closed = _github_pr("closed")
        ignored = httpx.post(url, content=closed, headers=_signed("github", closed))
        assert ignored.status_code == 200 and "ignored" in ignored.json()
    finally:
        stop(server, thread)
        github.close()
    assert github.problems == []
    assert [(s["context"], s["state"], s["sha"]) for s in github.statuses] == [
        ("gitops/preview/prod", "pending", SHA)] * 2
    with Database(settings.state_dir).open(readonly=True) as store:
        rows = store.previews()
    assert [(r.state, r.number, r.branch) for r in rows] == [
        ("queued", 12, "feature"), ("superseded", 12, "feature")]


@pytest.mark.parametrize("allow", [False, True])
def test_fork_pull_request_is_refused_unless_trusted(
        tmp_path: Path, token: SecretRef, monkeypatch: pytest.MonkeyPatch, allow: bool) -> None:
    """A signed pull request from a fork is refused with 403 and one line, said as the
    commit's preview status, and nothing is queued; with forks allowed, a trusted author's
    and a trusted label's are queued (202), another author's still refused."""
    monkeypatch.setenv("GITOPS_TEST_HOOK", SECRET)
    github = GitHost("github")
    env = EnvironmentConfig(name="prod", repo=str(tmp_path), webhook_secret=SecretRef(
        env="GITOPS_TEST_HOOK"), commit_status=[_config(github, token)])
    settings = Settings(state_dir=tmp_path / "state", environments=[env], listen="127.0.0.1:0",
                        preview=PreviewSettings(allow_forks=allow, trusted_authors=["alice"],
                                                trusted_labels=["safe-to-preview"]))
    previews = Previews(settings, sleep=lambda _: None)
    app = create_app(RecordingController([env]), settings, previews=previews)
    server, thread = start_in_thread(app, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{bound_port(server)}/hooks/prod"

        def send(body: bytes) -> httpx.Response:
            return httpx.post(url, content=body, headers=_signed("github", body))

        mallory = send(_github_pr(head_repo="mallory/state", author="mallory"))
        alice = send(_github_pr(head_repo="alice/state", author="alice"))
        labelled = send(_github_pr(head_repo="bob/state", author="bob",
                                   labels=("safe-to-preview",)))
    finally:
        stop(server, thread)
        github.close()
    assert mallory.status_code == 403, mallory.text
    refused = mallory.json()["refused"]
    assert refused.startswith("pull request #12 from fork 'mallory/state'")
    assert (alice.status_code, labelled.status_code) == ((202, 202) if allow else (403, 403))
    assert github.problems == []
    first = github.statuses[0]
    assert (first["state"], first["context"]) == ("error", "gitops/preview/prod")
    assert first["description"].startswith("not previewed: pull request #12 from fork")
    if allow:
        with Database(settings.state_dir).open(readonly=True) as store:
            assert len(store.previews()) == 2  # alice's, then bob's replacing it
    else:
        assert not (settings.state_dir / "gitops.db").exists()


def test_previews_cut_by_a_crash_are_marked_interrupted(tmp_path: Path) -> None:
    """At start-up, previews left queued or running are recorded interrupted, not lost."""
    settings = Settings(state_dir=tmp_path / "state",
                        environments=[EnvironmentConfig(name="prod", repo=str(tmp_path))])
    with Database(settings.state_dir).open() as store:
        left = store.start_preview("prod", provider="github", number=4, branch="b",
                                   base="main", head_sha=SHA)
        store.preview_running(left, "pvp0")
    Previews(settings).recover()
    with Database(settings.state_dir).open(readonly=True) as store:
        row = store.preview(left)
    assert row is not None and row.state == "interrupted" and row.lab == "pvp0"


def test_daemon_without_labs_previews_as_a_dry_run(
        tmp_path: Path, token: SecretRef, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that cannot run labs plans the change against the environment's own hosts
    and says it is a dry run, in the commit status and in the comment; the environment
    requires approval, so the comment says the change, merged, waits for one there."""
    github = GitHost("github")
    repo = dry_repo(tmp_path)
    sha = git(repo, "rev-parse", "HEAD")
    env = EnvironmentConfig(name="prod", repo=str(repo), commit_status=[_config(github, token)],
                            team="payments", require_approval=True)
    settings = Settings(state_dir=tmp_path / "state", environments=[env], teams=["payments"])
    previews = Previews(settings, sleep=lambda _: None)
    previews.can_lab = False  # as for a daemon not root, or without systemd-nspawn
    previews.start()
    try:
        previews.request(env, provider="github", number=3, branch="feature", base="main",
                         head_sha=sha)
        assert github.wait(lambda g: g.comments, 120), github.requests
    finally:
        previews.stop(60)
        github.close()
    assert github.problems == []
    final = github.statuses[-1]
    assert final["context"] == "gitops/preview/prod" and final["state"] == "failure"
    assert final["description"].endswith("(dry run)")
    assert "plan failed on web-1" in final["description"]
    body = github.comments[0].body
    assert "**Dry run** (plan only, against the environment's hosts)" in body
    assert ("> ⏸ **Waiting for approval** once merged: Once merged into `main`, this change "
            "waits for approval on `prod` by an operator of team payments (`gitops approve`) "
            "before it is applied there.") in body
    with Database(settings.state_dir).open(readonly=True) as store:
        [row] = store.previews()
        full = store.preview(row.id)
    assert (row.state, row.mode, row.lab) == ("finished", "dry-run", None)
    assert full is not None and full.report is not None
    assert "waits for approval on `prod`" in full.report.approval  # the page's report too


def test_preview_past_its_time_limit_is_an_error(tmp_path: Path) -> None:
    """A preview whose time limit runs out stops at the next stage and reports an error."""
    repo = dry_repo(tmp_path)
    settings = Settings(state_dir=tmp_path / "state",
                        environments=[EnvironmentConfig(name="prod", repo=str(repo))])
    request = PreviewRequest(environment="prod", inventory="prod", repo=str(repo),
                             branch="feature", base="main")
    report = run_preview(request, settings, lab_name=None, timeout=0.001)
    assert report.result == "error"
    assert report.summary == "the preview's time limit ran out before the change's load"


def test_previews_are_recorded_in_each_store(store_backend: Database) -> None:
    """A preview is recorded queued, running on its lab, then finished with its report,
    on SQLite and PostgreSQL alike; the list leaves the report out."""
    with store_backend.open() as store:
        pid = store.start_preview("prod", provider="gitlab", number=8, branch="b",
                                  base="main", head_sha=None)
        store.preview_running(pid, "pvp0")
        store.finish_preview(pid, _report("failure"))
        [listed] = store.previews("prod")
        full = store.preview(pid)
    assert (listed.state, listed.result, listed.mode, listed.report) == (
        "finished", "failure", "lab", None)
    assert full is not None and full.report == _report("failure")
    assert full.head_sha == SHA and full.lab == "pvp0"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitops", "preview", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_preview_of_an_invalid_change_exits_2_and_boots_no_lab(tmp_path: Path) -> None:
    """`gitops preview` of a branch with an invalid declaration lists the problem at its file
    and line and exits 2, before any lab boots; a missing branch exits 1; no traceback."""
    repo = dry_repo(tmp_path)
    inventory = (repo / "inventories/prod.yml").read_text()
    (repo / "inventories/prod.yml").write_text(inventory.replace("port: 8000", "port: many"))
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.invalid", "commit", "-qam", "x")
    state = str(tmp_path / "state")
    bad = _cli("--branch", "feature", "--repo", str(repo), "-e", "prod", "--state-dir", state)
    assert bad.returncode == 2, bad.stderr
    assert "inventories/prod.yml:" in bad.stdout and "port" in bad.stdout
    assert "preview #1: failure: invalid declaration: 2 problem(s)" in bad.stdout
    assert f"Commit `{git(repo, 'rev-parse', 'HEAD')[:10]}`" in bad.stdout
    missing = _cli("--branch", "nosuch", "--repo", str(repo), "-e", "prod", "--state-dir", state)
    assert missing.returncode == 1
    assert "no branch 'nosuch'" in missing.stdout
    assert "Traceback" not in bad.stderr + missing.stderr


def test_status_page_lists_previews_and_serves_the_full_report(tmp_path: Path) -> None:
    """The page's data lists the previews with their result; ``/previews/<id>`` (the link of
    a cut comment) shows the whole report, HTML escaped."""
    from starlette.applications import Starlette

    from gitops.web import page

    state = tmp_path / "state"
    with Database(state).open() as store:
        pid = store.start_preview("prod", provider="github", number=2, branch="feature",
                                  base="main", head_sha=SHA)
        store.finish_preview(pid, _report("failure", diff="-<b>old</b>\n+new"))
    with Database(state).open(readonly=True) as store:
        listed = page.page_data(store)["previews"]
    assert [(p["id"], p["result"], p["number"]) for p in listed] == [(pid, "failure", 2)]
    server, thread = start_in_thread(Starlette(routes=page.routes(state, None)), "127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{bound_port(server)}"
        answer = httpx.get(f"{base}/previews/{pid}")
        missing = httpx.get(f"{base}/previews/999")
    finally:
        stop(server, thread)
    assert answer.status_code == 200
    assert "| web-1 | app/test_answers | ❌ fail |" in answer.text
    assert "-&lt;b&gt;old&lt;/b&gt;" in answer.text and "<b>old" not in answer.text
    assert missing.status_code == 404


@pytest.mark.parametrize(("provider", "number", "ref"), [
    ("github", 7, "refs/pull/7/head"),
    ("gitea", 7, "refs/pull/7/head"),
    ("gitlab", 7, "refs/merge-requests/7/head"),
    ("cli", None, None),
])
def test_pull_ref_is_where_each_host_publishes_the_head(provider: str, number: int | None,
                                                        ref: str | None) -> None:
    """A pull request's head is fetched from the ref its host keeps in the base repository;
    a branch previewed by hand has none."""
    assert pull_ref(provider, number) == ref


@pytest.mark.parametrize(("provider", "ref"), [("github", "refs/pull/7/head"),
                                               ("gitlab", "refs/merge-requests/7/head")])
def test_a_pull_request_from_a_fork_is_previewed_at_its_own_commit(
        tmp_path: Path, provider: str, ref: str) -> None:
    """A pull request from a fork, whose branch has the name of another branch of the base
    repository, is previewed at the fork's commit: the one the host publishes under the pull
    request's ref in the base repository."""
    base = dry_repo(tmp_path)
    ours = git(base, "rev-parse", "feature")
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(base), str(fork))
    git(fork, "checkout", "-q", "feature")
    inventory = fork / "inventories/prod.yml"
    inventory.write_text(inventory.read_text().replace("port: 8000", "port: 8001"))
    git(fork, "-c", "user.name=F", "-c", "user.email=f@example.invalid", "commit", "-qam",
        "the fork's change")
    theirs = git(fork, "rev-parse", "HEAD")
    git(fork, "push", "-q", str(base), f"HEAD:{ref}")  # what the host does on a pull request
    assert git(base, "rev-parse", "feature") == ours != theirs
    settings = Settings(state_dir=tmp_path / "state",
                        environments=[EnvironmentConfig(name="prod", repo=str(base))])
    request = PreviewRequest(environment="prod", inventory="prod", repo=str(base),
                             branch="feature", base="main", head_sha=theirs,
                             provider=provider, number=7)
    report = run_preview(request, settings, lab_name=None)
    assert report.result != "error" and "plan" in report.stages, report.summary
    assert report.head_sha == theirs and report.base_sha == git(base, "rev-parse", "main")
    assert (tmp_path / "state" / "snapshots" / theirs).is_dir()  # the fork's files, planned
