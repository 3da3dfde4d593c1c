"""What a crash or a failing record leaves behind is recovered: runs and commit statuses.

Found by ``bench/faults.py``. No lab: a run cut by ``kill -9`` leaves exactly an unfinished
row in the store, and a record the disk refuses is played by a real SQLite trigger that fails
the write. Commit statuses go to a local stand-in for GitHub's "Create a commit status" API
that checks the request against its documented form.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from builders import empty_repo

from gitops.daemon import notify
from gitops.daemon.loop import Daemon
from gitops.errors import LockHeld
from gitops.pipeline.reconcile import (
    Cut,
    Request,
    Target,
    environment_lock,
    recover_unfinished,
    run,
)
from gitops.record.store import Store
from gitops.records import Revision, RunKind
from gitops.settings import CommitStatusConfig, EnvironmentConfig, SecretRef, Settings

TOKEN = "faults-test-token"
STATUS_PATH = re.compile(r"^/gh/repos/o/r/statuses/([0-9a-f]{40})$")


class GitHub:
    """``POST /repos/{owner}/{repo}/statuses/{sha}``: Bearer token, JSON state; 201."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        github = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                match = STATUS_PATH.match(self.path)
                ok = (match is not None and self.headers["Authorization"] == f"Bearer {TOKEN}"
                      and self.headers["Accept"] == "application/vnd.github+json"
                      and body.get("state") in ("pending", "success", "failure", "error"))
                if ok and match:
                    github.statuses.append((match.group(1), body["state"]))
                self.send_response(201 if ok else 422)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gh"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def states(self, sha: str) -> list[str]:
        return [state for s, state in self.statuses if s == sha]


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHub]:
    monkeypatch.setenv("FAULTS_TEST_TOKEN", TOKEN)
    server = GitHub()
    yield server
    server.server.shutdown()


def _cut_run(state_dir: Path, sha: str, environment: str = "lab",
             kind: RunKind = "reconcile") -> int:
    """What a ``kill -9`` of the process running a reconcile of ``sha`` leaves in the store."""
    revision = Revision(sha=sha, branch="main", author="T", committed_at=datetime.now(UTC),
                        message="cut")
    with Store(state_dir) as store:
        return store.start_run(environment, kind, revision, actor="test")


def _result(state_dir: Path, run_id: int) -> str | None:
    with Store(state_dir) as store:
        detail = store.run(run_id)
        assert detail is not None
        return detail.run.result


def _daemon(tmp_path: Path, repo: Path, github: GitHub) -> Daemon:
    settings = Settings(state_dir=tmp_path / "state", environments=[EnvironmentConfig(
        name="lab", repo=str(repo), watch=False, interval=3600, commit_status=[
            CommitStatusConfig(provider="github", api_url=github.url, repository="o/r",
                               token=SecretRef(env="FAULTS_TEST_TOKEN"))])])
    return Daemon(settings)


def test_a_cli_run_cut_by_kill_9_is_recorded_interrupted_by_the_next_run(tmp_path: Path) -> None:
    """A run whose process was killed is not left running until a daemon starts: the next
    run of the environment, from the CLI too, records it interrupted."""
    repo, sha = empty_repo(tmp_path)
    state = tmp_path / "state"
    cut = _cut_run(state, sha)
    said: list[str] = []
    outcome = run(Target(repo=str(repo), branch="main", environment="lab", state_dir=state),
                  Request(), said.append)
    assert outcome.result == "invalid"  # the new run itself ran and ended
    assert _result(state, cut) == "interrupted"
    assert any(f"run {cut} was cut" in line for line in said)


def test_a_commit_whose_run_was_killed_gets_a_final_status_when_the_daemon_starts(
        tmp_path: Path, github: GitHub) -> None:
    """The commit a killed daemon had marked pending is marked error at the next start,
    not left pending (its run is recorded interrupted)."""
    repo, _head = empty_repo(tmp_path)
    cut_sha = "c" * 40
    cut = _cut_run(tmp_path / "state", cut_sha)
    d = _daemon(tmp_path, repo, github)
    d.start()
    try:
        deadline = time.monotonic() + 30
        while not github.states(cut_sha) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        d.stop(30)
    assert github.states(cut_sha) == ["error"]
    assert _result(tmp_path / "state", cut) == "interrupted"


def test_a_run_the_record_refuses_to_finish_still_ends_its_commit_status(
        tmp_path: Path, github: GitHub) -> None:
    """When the store cannot finish a run (a full disk), the commit still gets a final
    status, and the next run records the unfinished run interrupted."""
    repo, head = empty_repo(tmp_path)
    state = tmp_path / "state"
    with Store(state) as store:  # the record refuses to finish any run, as a full disk would
        store.db.execute("CREATE TRIGGER refuse BEFORE UPDATE OF finished_at ON runs "
                         "BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END")
    d = _daemon(tmp_path, repo, github)
    with pytest.raises(Exception, match="disk is full"):
        d.cycle(d.envs["lab"], None)
    assert github.states(head) == ["pending", "error"]
    with Store(state) as store:
        store.db.execute("DROP TRIGGER refuse")
        unfinished = store.history("lab")[0]
    assert unfinished.result is None
    d.cycle(d.envs["lab"], None)  # space freed: the next run
    assert _result(state, unfinished.id) == "interrupted"


def _target(tmp_path: Path) -> Target:
    return Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                  state_dir=tmp_path / "state")


def test_recovery_records_the_cut_runs_of_one_environment_with_their_commits(
        tmp_path: Path) -> None:
    """Recovery records every unfinished run of the environment interrupted, says so, and
    names each one's kind and commit; another environment's run is left alone."""
    state = tmp_path / "state"
    first, second = _cut_run(state, "a" * 40), _cut_run(state, "b" * 40, kind="verify")
    other = _cut_run(state, "c" * 40, environment="staging")
    said: list[str] = []
    with Store(state) as store:
        cuts = recover_unfinished(store, _target(tmp_path), said.append)
    assert cuts == [Cut(first, "reconcile", "a" * 40), Cut(second, "verify", "b" * 40)]
    assert [_result(state, r) for r in (first, second, other)] == ["interrupted",
                                                                  "interrupted", None]
    assert said == [f"run {first} was cut before its end: recorded as interrupted",
                    f"run {second} was cut before its end: recorded as interrupted"]


def test_recovery_leaves_a_run_in_progress_alone(tmp_path: Path) -> None:
    """While a run holds the environment lock its unfinished row is not a cut run: recovery
    refuses (LockHeld) and the row stays unfinished."""
    state = tmp_path / "state"
    running = _cut_run(state, "a" * 40)
    target = _target(tmp_path)
    with (environment_lock(target, "reconcile"), Store(state) as store,
          pytest.raises(LockHeld)):
        recover_unfinished(store, target, lambda _: None)
    assert _result(state, running) is None


def test_recovery_under_a_taken_lease_names_whom_the_run_was_left_by(tmp_path: Path) -> None:
    """A controller that took the lease (it keeps every other run away) recovers without the
    lock and says which controller left the run."""
    state = tmp_path / "state"
    left = _cut_run(state, "a" * 40)
    target = _target(tmp_path)
    said: list[str] = []
    with environment_lock(target, "reconcile"), Store(state) as store:
        cuts = recover_unfinished(store, target, said.append, held=True, by="the last holder")
    assert [c.run_id for c in cuts] == [left] and _result(state, left) == "interrupted"
    assert said == [f"run {left} was left unfinished by the last holder: recorded as interrupted"]


def _restarted(tmp_path: Path, repo: Path, github: GitHub, sha: str, count: int) -> list[str]:
    """The statuses of ``sha`` once a daemon started again on the state folder sent ``count``."""
    d = _daemon(tmp_path, repo, github)
    d.start()
    try:
        deadline = time.monotonic() + 30
        while len(github.states(sha)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        d.stop(30)
    return github.states(sha)


def test_a_run_recorded_but_not_reported_gets_its_end_at_the_next_start(
        tmp_path: Path, github: GitHub) -> None:
    """A daemon killed after a run's record is finished but before its commit's end is sent:
    the next start sends that run's end (here a failure), not leaving the commit pending."""
    repo, head = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo, github)

    def killed(outcome: object) -> tuple[str, str]:
        raise KeyboardInterrupt  # the process stops here, as a kill -9 would stop it

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(notify, "commit_state_for", killed)
        d.cycle(d.envs["lab"], None)
    assert github.states(head) == ["pending"]
    assert _restarted(tmp_path, repo, github, head, 2) == ["pending", "failure"]


def test_a_commit_marked_pending_before_its_run_started_gets_an_end_at_the_next_start(
        tmp_path: Path, github: GitHub) -> None:
    """A daemon killed between a commit's "pending" and its run's first record: the next
    start sends "error" for it (there is no run to recover), before reconciling it again."""
    repo, head = empty_repo(tmp_path)
    d = _daemon(tmp_path, repo, github)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr("gitops.daemon.loop.run", killed)
        d.cycle(d.envs["lab"], None)
    assert github.states(head) == ["pending"]
    with Store(tmp_path / "state") as store:
        assert store.history("lab") == []
    assert _restarted(tmp_path, repo, github, head, 2)[:2] == ["pending", "error"]


def test_a_cut_apply_forgets_what_the_hosts_were_converged_to(tmp_path: Path) -> None:
    """An apply cut after it changed a host (during its verify) leaves that host's verified
    fingerprints in the record: recovery forgets them, so the next changed-only reconcile
    applies every service instead of skipping one the cut run changed; a cut verify (it
    changes nothing) forgets nothing."""
    state = tmp_path / "state"
    with Store(state) as store:
        store.set_converged("lab", "lab-1", {"probe": "f1", "base": "f2"})
    _cut_run(state, "b" * 40, kind="verify")
    with Store(state) as store:
        recover_unfinished(store, _target(tmp_path), lambda _: None)
        assert store.converged("lab") == {"lab-1": {"probe": "f1", "base": "f2"}}
    _cut_run(state, "a" * 40)
    said: list[str] = []
    with Store(state) as store:
        recover_unfinished(store, _target(tmp_path), said.append)
        assert store.converged("lab") == {}
    assert said[-1] == ("a cut apply may have changed what was verified: every service is "
                        "applied next")
