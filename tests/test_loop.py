"""The daemon carrying out its decisions without hosts: coalescing, retries, reports, refusals.

The decisions themselves are tables in ``test_policy.py``.
"""

from __future__ import annotations

import logging
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import commit_file, empty_repo
from pydantic import ValidationError

from gitops.daemon.loop import Daemon
from gitops.daemon.policy import Trigger
from gitops.errors import Suspended, UsageError
from gitops.pipeline import source
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    Plan,
    Revision,
    VerifyReport,
)
from gitops.settings import EnvironmentConfig, Settings

PROJECT = Path(__file__).resolve().parent.parent


def _daemon(tmp_path: Path, repo: Path, rand: float = 0.5, **env: object) -> Daemon:
    settings = Settings(state_dir=tmp_path / "state", environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False, **env)])  # type: ignore[arg-type]
    return Daemon(settings, rand=lambda: rand)


def _record_success(state_dir: Path, sha: str, env: str = "lab") -> None:
    revision = Revision(sha=sha, branch="main", author="T", committed_at=datetime.now(UTC),
                        message="one")
    with Store(state_dir) as store:
        run_id = store.start_run(env, "reconcile", revision, actor="test")
        store.finish_run(run_id, "succeeded", plan=Plan(hosts=()),
                         apply=ApplyReport(hosts=(HostApply(host="h1", status="ok"),)),
                         verify=VerifyReport(results=(
                             CheckResult(host="h1", service="app", check="up", status="pass"),)))
        store.set_status(env, ENVIRONMENT, [Condition("Ready", "True", "Ok", "")],
                         applied=revision.ref, attempted=revision.ref)
        store.set_status(env, "h1", [Condition("Ready", "True", "Ok", "")],
                         applied=revision.ref, attempted=revision.ref, verified=revision.ref)
        store.record_verified(env, revision, run_id)  # as reconcile does after such a run


def _record_failure(state_dir: Path, sha: str, env: str = "lab") -> None:
    """A reconcile of ``sha`` whose check failed on h1."""
    revision = Revision(sha=sha, branch="main", author="T", committed_at=datetime.now(UTC),
                        message="bad")
    with Store(state_dir) as store:
        run_id = store.start_run(env, "reconcile", revision, actor="test")
        store.finish_run(run_id, "failed", plan=Plan(hosts=()),
                         apply=ApplyReport(hosts=(HostApply(host="h1", status="ok"),)),
                         verify=VerifyReport(results=(
                             CheckResult(host="h1", service="app", check="up", status="fail",
                                         message="down"),)))


def test_triggers_coalesce_into_one_pending_reconcile(tmp_path: Path) -> None:
    """A second trigger while one is pending is coalesced, not queued."""
    repo, _ = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo)
    assert d.trigger("lab", reason="push", actor="webhook:github") is True
    assert d.trigger("lab", reason="push", actor="webhook:github") is False
    assert d.health()["environments"]["lab"]["pending"] is True


def test_unknown_environment_is_a_usage_error(tmp_path: Path) -> None:
    """Asking for an environment the daemon does not watch names it in a usage error."""
    repo, _ = empty_repo(tmp_path)
    with pytest.raises(UsageError, match="unknown environment 'prod'"):
        _daemon(tmp_path, repo).trigger("prod", reason="x", actor="y")


def test_a_cycle_with_no_new_commit_runs_nothing(tmp_path: Path) -> None:
    """When the head is already applied, a poll records no run (so it opens no SSH)."""
    repo, sha = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo)
    _record_success(tmp_path / "state", sha)
    with Store(tmp_path / "state") as store:
        before = len(store.history("lab"))
    delay = d.cycle(d.envs["lab"], None)
    assert 54 <= delay <= 66
    with Store(tmp_path / "state") as store:
        assert len(store.history("lab")) == before


def test_suspended_environment_applies_nothing(tmp_path: Path) -> None:
    """A suspended environment's cycle runs nothing even for a new commit."""
    repo, _ = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo)
    d.operate("lab", "suspend", actor="alice", reason="freeze")
    d.envs["lab"].pending = None
    d.cycle(d.envs["lab"], Trigger("operator", "alice"))
    with Store(tmp_path / "state") as store:
        kinds = [r["kind"] for r in store.history("lab")]
        controls = store.controls("lab")
    assert kinds == ["suspend"]
    assert controls["suspended"] == 1 and controls["actor"] == "alice"


def test_secrets_cannot_be_written_inline() -> None:
    """A webhook secret given as a plain string is refused: it must name an env var or file."""
    with pytest.raises(ValidationError):
        EnvironmentConfig(name="lab", repo="/srv/state", webhook_secret="hunter2")  # type: ignore[arg-type]


def test_example_settings_file_is_valid() -> None:
    """gitops.example.toml, as shipped, loads as daemon settings."""
    data = tomllib.loads((PROJECT / "gitops.example.toml").read_text())
    settings = Settings(**data)
    assert [e.name for e in settings.environments] == ["production"]


def test_force_push_is_recognised(tmp_path: Path) -> None:
    """A head that drops the applied commit is a force-push; a fast-forward is not."""
    from gitops.pipeline import source

    repo, first = empty_repo(tmp_path)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "two"], check=True)
    second = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
    source.fetch(str(repo), "main", tmp_path / "state")
    assert not source.rewrites_history(str(repo), tmp_path / "state", first, second)
    subprocess.run([*git, "reset", "-q", "--hard", first], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "rewritten"], check=True)
    rewritten = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
    source.fetch(str(repo), "main", tmp_path / "state")
    assert source.rewrites_history(str(repo), tmp_path / "state", second, rewritten)


def test_rollback_holds_the_last_verified_revision_before_the_applied_one(
    tmp_path: Path,
) -> None:
    """Without a revision, rollback holds the newest verified commit other than the applied
    one, as a full SHA, until a commit newer than the current head."""
    from gitops.daemon import control

    repo, first = empty_repo(tmp_path)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "two"], check=True)
    second = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
    state = tmp_path / "state"
    _record_success(state, first)
    _record_success(state, second)
    with Store(state) as store:
        held = control.hold_rollback(store, "lab", repo=str(repo), branch="main",
                                     state_dir=state, revision=None, actor="alice",
                                     reason="bad release")
        assert held["held_sha"] == first and held["held_head"] == second
        assert store.history("lab")[0]["kind"] == "rollback"
        pinned = control.hold_rollback(store, "lab", repo=str(repo), branch="main",
                                       state_dir=state, revision=second[:8], actor="alice",
                                       reason="")
        assert pinned["held_sha"] == second


def test_a_retry_asked_for_during_a_run_is_kept_for_the_next(tmp_path: Path) -> None:
    """An operator's retry while a run is in progress is not lost when that run ends."""
    repo, first = empty_repo(tmp_path)
    state = tmp_path / "state"
    _record_failure(state, first)
    commit_file(repo, "notes.txt", "a new commit to run\n")
    d = _daemon(tmp_path, repo)

    class RetryDuringRun(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "revision main@sha1:" in record.getMessage():  # the run has started
                d.operate("lab", "retry", actor="alice")

    handler, logger = RetryDuringRun(logging.INFO), logging.getLogger("gitops.daemon.loop")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        d.cycle(d.envs["lab"], None)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    with Store(state) as store:
        assert store.history("lab")[0]["kind"] == "reconcile"  # the run did happen
    assert d.envs["lab"].retry_hosts == {"h1"}
    assert d.envs["lab"].pending is not None  # and the next cycle comes at once


def test_incident_reports_use_each_environments_own_repository(tmp_path: Path) -> None:
    """A run of one environment leaves the other's incident reports (and their diffs) alone."""
    alpha, _ = empty_repo(tmp_path / "a")
    beta, _ = empty_repo(tmp_path / "b")
    good = commit_file(beta, "config.yml", "port: 1\n")
    bad = commit_file(beta, "config.yml", "port: 2\n")
    state = tmp_path / "state"
    source.fetch(str(beta), "main", state)
    source.fetch(str(alpha), "main", state)
    _record_success(state, good, env="beta")
    _record_failure(state, bad, env="beta")
    d = Daemon(Settings(state_dir=state, environments=[
        EnvironmentConfig(name="alpha", repo=str(alpha), watch=False),
        EnvironmentConfig(name="beta", repo=str(beta), watch=False)]))
    d.reporter.write_incidents(d.envs["beta"])
    [report] = (state / "reports").glob("INC-beta-*.md")
    written = report.read_text()
    assert "config.yml | 2 +-" in written
    before = report.stat().st_mtime_ns
    d.reporter.write_incidents(d.envs["alpha"])
    assert report.read_text() == written and report.stat().st_mtime_ns == before


def test_operator_trigger_of_a_suspended_environment_is_refused(tmp_path: Path) -> None:
    """Reconcile-now while suspended answers who suspended it, why and since when."""
    repo, _ = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo)
    d.operate("lab", "suspend", actor="alice", reason="change freeze")
    d.envs["lab"].pending = None
    with pytest.raises(Suspended, match=r"lab is suspended by alice since 20\d\d-.*: change "
                                        r"freeze; nothing is applied until it is resumed"):
        d.trigger("lab", reason="operator request", actor="bob")
    assert d.envs["lab"].pending is None
    assert d.trigger("lab", reason="push", actor="webhook:github") is True  # looks, applies none


def test_api_reconcile_of_a_suspended_environment_is_409(tmp_path: Path) -> None:
    """POST /api/environments/lab/reconcile while suspended: 409 with who, why and since."""
    import httpx

    from gitops.web.server import bound_port, create_app, start_in_thread, stop

    repo, _ = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo)
    d.operate("lab", "suspend", actor="alice", reason="change freeze")
    server, thread = start_in_thread(create_app(d, d.settings), "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{bound_port(server)}/api/environments/lab/reconcile"
        answer = httpx.post(url, json={"reason": "now please"}, timeout=10)
    finally:
        stop(server, thread)
    assert answer.status_code == 409
    assert answer.json()["error"].startswith("lab is suspended by alice since ")
    assert "change freeze" in answer.json()["error"]


def test_api_unquarantine_releases_the_head_and_the_next_cycle_applies_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /api/environments/lab/unquarantine (bearer token, ``revision``: a sha prefix,
    ``reason``) releases the quarantined head: the cycle that left it alone now reconciles
    it, as the operator's run with their reason. No token: 401; a sha not quarantined, an
    ambiguous or malformed one: 400 with one line; an unknown environment: 404; nothing
    changes on a refusal."""
    import httpx

    from gitops.settings import SecretRef
    from gitops.web.server import bound_port, create_app, start_in_thread, stop

    monkeypatch.setenv("TEST_GITOPS_API_TOKEN", "t0ken-for-the-test")
    repo, head = empty_repo(tmp_path)
    state = tmp_path / "state"
    _record_failure(state, head)  # the head's rollout failed (a host was down) ...
    with Store(state) as store:  # ... and was quarantined
        store.quarantine("lab", head, "verification failed on h1")
    d = Daemon(Settings(state_dir=state, api_token=SecretRef(env="TEST_GITOPS_API_TOKEN"),
                        environments=[EnvironmentConfig(name="lab", repo=str(repo),
                                                        watch=False)]),
               rand=lambda: 0.5)
    d.cycle(d.envs["lab"], None)
    with Store(state) as store:
        assert len(store.history("lab")) == 1  # quarantined: nothing ran
    server, thread = start_in_thread(create_app(d, d.settings), "127.0.0.1:0")
    url = f"http://127.0.0.1:{bound_port(server)}/api/environments"
    auth = {"Authorization": "Bearer t0ken-for-the-test"}
    release = {"revision": head[:8], "reason": "h1 was down, not the commit"}
    try:
        with httpx.Client(timeout=10) as http:
            anonymous = http.post(f"{url}/lab/unquarantine", json=release)
            refused = {
                "unknown": http.post(f"{url}/prod/unquarantine", json=release, headers=auth),
                "not quarantined": http.post(f"{url}/lab/unquarantine", headers=auth,
                                             json={**release, "revision": "1234567"}),
                "malformed": http.post(f"{url}/lab/unquarantine", headers=auth,
                                       json={**release, "revision": "HEAD\nx"}),
                "no revision": http.post(f"{url}/lab/unquarantine", headers=auth,
                                         json={"reason": "r"}),
                "no reason": http.post(f"{url}/lab/unquarantine", headers=auth,
                                       json={"revision": head}),
            }
            with Store(state) as store:
                assert [q.sha for q in store.quarantined("lab")] == [head]
            released = http.post(f"{url}/lab/unquarantine", json=release, headers=auth)
            twice = http.post(f"{url}/lab/unquarantine", json=release, headers=auth)
    finally:
        stop(server, thread)
    assert anonymous.status_code == 401
    assert {k: r.status_code for k, r in refused.items()} == {
        "unknown": 404, "not quarantined": 400, "malformed": 400, "no revision": 400,
        "no reason": 400}
    assert refused["not quarantined"].json()["error"] == (
        f"lab: 1234567 is not quarantined (quarantined there: {head[:10]})")
    assert refused["malformed"].json()["error"] == (
        "'HEAD\\nx' is not a commit sha: 7 to 40 hex digits")
    assert released.status_code == 200, released.text
    answer = released.json()
    assert (answer["sha"], answer["actor"], answer["reason"]) == (
        head, "api", "h1 was down, not the commit")  # the token's identity
    assert twice.status_code == 400 and "is not quarantined" in twice.json()["error"]
    pending = d.envs["lab"].pending
    assert pending is not None  # the daemon looks at once
    d.envs["lab"].pending = None
    d.cycle(d.envs["lab"], pending)
    with Store(state) as store:
        newest, event = store.history("lab")[:2]
        assert store.quarantined("lab") == []
    assert (event.kind, event.id, event.actor) == ("unquarantine", answer["event"], "api")
    assert (newest.kind, newest.sha, newest.actor, newest.event) == (
        "reconcile", head, "api", False)
    assert newest.reason == "released from quarantine by api: h1 was down, not the commit"
