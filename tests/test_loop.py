"""The daemon's decisions without hosts: coalescing, backoff, jitter, when a cycle runs nothing."""

from __future__ import annotations

import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from gitops.errors import UsageError
from gitops.loop import Daemon
from gitops.records import (
    ApplyReport,
    HostApply,
    Plan,
    Ref,
    Revision,
    RunRow,
    StatusRow,
    VerifyReport,
)
from gitops.settings import EnvironmentConfig, Settings
from gitops.store import ENVIRONMENT, Condition, Store

PROJECT = Path(__file__).resolve().parent.parent


def _repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.invalid"],
                 ["config", "user.name", "T"], ["commit", "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    sha = subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True)
    return repo, sha.strip()


def _daemon(tmp_path: Path, repo: Path, rand: float = 0.5, **env: object) -> Daemon:
    settings = Settings(state_dir=tmp_path / "state", environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False, **env)])  # type: ignore[arg-type]
    return Daemon(settings, rand=lambda: rand)


def _record_success(state_dir: Path, sha: str) -> None:
    revision = Revision(sha=sha, branch="main", author="T", committed_at=datetime.now(UTC),
                        message="one")
    with Store(state_dir) as store:
        run_id = store.start_run("lab", "reconcile", revision, actor="test")
        store.finish_run(run_id, "succeeded", plan=Plan(hosts=()),
                         apply=ApplyReport(hosts=(HostApply(host="h1", status="ok"),)),
                         verify=VerifyReport(results=()))
        store.set_status("lab", ENVIRONMENT, [Condition("Ready", "True", "Ok", "")],
                         applied=revision.ref, attempted=revision.ref)


def test_triggers_coalesce_into_one_pending_reconcile(tmp_path: Path) -> None:
    """A second trigger while one is pending is coalesced, not queued."""
    repo, _ = _repo(tmp_path)
    d = _daemon(tmp_path, repo)
    assert d.trigger("lab", reason="push", actor="webhook:github") is True
    assert d.trigger("lab", reason="push", actor="webhook:github") is False
    assert d.health()["environments"]["lab"]["pending"] is True


def test_unknown_environment_is_a_usage_error(tmp_path: Path) -> None:
    """Asking for an environment the daemon does not watch names it in a usage error."""
    repo, _ = _repo(tmp_path)
    with pytest.raises(UsageError, match="unknown environment 'prod'"):
        _daemon(tmp_path, repo).trigger("prod", reason="x", actor="y")


def test_backoff_doubles_up_to_the_cap(tmp_path: Path) -> None:
    """Temporary failures back off exponentially (full jitter) and never past retry_max."""
    repo, _ = _repo(tmp_path)
    d = _daemon(tmp_path, repo, rand=1.0, retry_base=2, retry_max=20)
    env = d.envs["lab"]
    delays = [d._backoff(env) for _ in range(6)]
    assert delays == [2, 4, 8, 16, 20, 20]
    low = _daemon(tmp_path, repo, rand=0.0, retry_base=2, retry_max=20)
    assert low._backoff(low.envs["lab"]) == 1  # never below half the base


def test_poll_interval_jitter_stays_in_bounds(tmp_path: Path) -> None:
    """Each poll waits interval x [1 - jitter, 1 + jitter]."""
    repo, _ = _repo(tmp_path)
    cfg = EnvironmentConfig(name="lab", repo=str(repo), interval=60, jitter=0.1)
    assert _daemon(tmp_path, repo, rand=0.0)._jitter(60, cfg) == pytest.approx(54)
    assert _daemon(tmp_path, repo, rand=1.0)._jitter(60, cfg) == pytest.approx(66)


def test_a_cycle_with_no_new_commit_runs_nothing(tmp_path: Path) -> None:
    """When the head is already applied, a poll records no run (so it opens no SSH)."""
    repo, sha = _repo(tmp_path)
    d = _daemon(tmp_path, repo)
    _record_success(tmp_path / "state", sha)
    with Store(tmp_path / "state") as store:
        before = len(store.history("lab"))
    delay = d._cycle(d.envs["lab"], None)
    assert 54 <= delay <= 66
    with Store(tmp_path / "state") as store:
        assert len(store.history("lab")) == before


def test_a_stalled_commit_is_not_retried_until_a_new_one(tmp_path: Path) -> None:
    """After a permanent failure (Stalled) of the head, polls leave it alone."""
    _, sha = _repo(tmp_path)
    status = StatusRow("lab", ENVIRONMENT, (Condition("Stalled", "True", "ValidationFailed", ""),),
                       None, Ref("main", sha), None, datetime.now(UTC))

    def run(sha: str, result: str) -> RunRow:
        return RunRow(1, "lab", "reconcile", "t", "", sha, "main", None, None, None,
                      datetime.now(UTC), datetime.now(UTC), result, None, ())

    last = [run("0" * 40, "succeeded")]
    assert Daemon._needs_run(sha, last, status) is False
    assert Daemon._needs_run("f" * 40, last, status) is True
    assert Daemon._needs_run(sha, [run(sha, "interrupted")], None) is True


def test_suspended_environment_applies_nothing(tmp_path: Path) -> None:
    """A suspended environment's cycle runs nothing even for a new commit."""
    repo, _ = _repo(tmp_path)
    d = _daemon(tmp_path, repo)
    d.operate("lab", "suspend", actor="alice", reason="freeze")
    d.envs["lab"].pending = None
    d._cycle(d.envs["lab"], ("operator", "alice"))
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
    from gitops import source

    repo, first = _repo(tmp_path)
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
    from gitops import control

    repo, first = _repo(tmp_path)
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
