"""What a rollback would change, shown before it is asked: from Git and the record, no host.

Against a real Git repository (the sample's deploys, two revisions) and a real record; the
daemon is built, not started (its API and record only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from builders import commit, copy_sample, git_repo, record_verified_run, sample_inventory

from gitops.daemon.loop import Daemon
from gitops.daemon.rollback_plan import changes
from gitops.errors import UsageError
from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline.targets import TargetRefused
from gitops.settings import EnvironmentConfig, Settings


def two_revisions(root: Path, environments: dict[str, list[str]]) -> tuple[Path, str, str]:
    """``root/repo``: the sample's deploys and one inventory per environment (its hosts),
    the app saying "v1", then a commit where it says "v2": (repo, first, second)."""
    repo = copy_sample(root / "repo")
    git_repo(repo, {f"inventories/{env}.yml": sample_inventory(hosts, "v1")
                    for env, hosts in environments.items()}, "app says v1")
    first = commit(repo, "app says v1", allow_empty=True)
    for env, hosts in environments.items():
        (repo / f"inventories/{env}.yml").write_text(sample_inventory(hosts, "v2"))
    return repo, first, commit(repo, "app says v2")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Daemon, str, str]:
    """A daemon over pay-prod (pay-1, pay-2) whose record has v1 then v2 applied and
    verified: (daemon, first, second)."""
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    repo, first, second = two_revisions(tmp_path, {"pay-prod": ["pay-1", "pay-2"]})
    state = tmp_path / "state"
    record_verified_run(state, first, "pay-prod")
    record_verified_run(state, second, "pay-prod")
    settings = Settings(state_dir=state, environments=[
        EnvironmentConfig(name="pay-prod", repo=str(repo), watch=False)])
    return Daemon(settings), first, second


def test_the_plan_goes_back_to_the_last_verified_revision_and_says_what_differs(
        daemon: tuple[Daemon, str, str]) -> None:
    """Without a revision: from the applied one back to the newest verified before it, per
    host the app's message v2 -> v1, and the file that differs; the rollback then holds
    the very revision shown."""
    d, first, second = daemon
    plan = d.rollback_plan("pay-prod")
    assert plan["from"]["sha"] == second and plan["to"]["sha"] == first
    assert plan["to"]["message"] == "app says v1" and plan["now_error"] == ""
    assert [h["host"] for h in plan["hosts"]] == ["pay-1", "pay-2"]
    for host in plan["hosts"]:
        assert host["declared"] == "both"
        assert host["services"] == [{"service": "app", "change": "changed", "files": False,
                                     "params": [{"name": "message", "now": '"v2"',
                                                 "then": '"v1"'}]}]
    assert "inventories/pay-prod.yml" in plan["files"]
    held = d.operate("pay-prod", "rollback", actor="user:alice", reason="v2 is bad",
                     revision=plan["to"]["sha"])
    assert held["held_sha"] == first


def test_a_plan_to_a_revision_never_verified_or_to_nothing_is_refused(
        daemon: tuple[Daemon, str, str], tmp_path: Path) -> None:
    """A revision that was never verified there is refused as the rollback itself would
    be; an environment with one verified revision has nothing to go back to."""
    d, first, second = daemon
    assert d.rollback_plan("pay-prod", revision=second[:12])["same"] is True
    repo = Path(d.envs["pay-prod"].config.repo)
    (repo / "notes.txt").write_text("never applied\n")
    third = commit(repo, "notes")
    with pytest.raises(TargetRefused, match="never verified"):
        d.rollback_plan("pay-prod", revision=third)
    repo, first, _ = two_revisions(tmp_path / "one", {"solo": ["s-1"]})
    state = tmp_path / "one" / "state"
    record_verified_run(state, first, "solo")  # its only verified revision, applied
    solo = Daemon(Settings(state_dir=state, environments=[
        EnvironmentConfig(name="solo", repo=str(repo), watch=False)]))
    with pytest.raises(UsageError, match="no earlier verified revision"):
        solo.rollback_plan("solo")


def _host(name: str, **services: dict[str, Any]) -> DeclaredHost:
    return DeclaredHost.model_construct(name=name, services=services)


def _state(*hosts: DeclaredHost, digests: dict[str, str] | None = None,
           redact: tuple[str, ...] = ()) -> DeclaredState:
    return DeclaredState.model_construct(hosts=hosts, service_digests=digests or {},
                                         redact=redact)


@pytest.mark.parametrize(("now", "then", "expected"), [
    pytest.param(_state(_host("a", app={"port": 1})), _state(_host("a", app={"port": 1})),
                 [{"host": "a", "declared": "both", "services": []}], id="nothing-differs"),
    pytest.param(_state(_host("a", app={})), _state(_host("a", app={}, web={})),
                 [{"host": "a", "declared": "both", "services": [
                     {"service": "web", "change": "added", "params": [], "files": False}]}],
                 id="service-declared-at-target-only"),
    pytest.param(_state(_host("a", app={}, web={})), _state(_host("a", app={})),
                 [{"host": "a", "declared": "both", "services": [
                     {"service": "web", "change": "removed", "params": [], "files": False}]}],
                 id="service-no-longer-declared"),
    pytest.param(_state(_host("a", app={}), digests={"app": "x"}),
                 _state(_host("a", app={}), digests={"app": "y"}),
                 [{"host": "a", "declared": "both", "services": [
                     {"service": "app", "change": "changed", "params": [], "files": True}]}],
                 id="files-of-the-service-differ"),
    pytest.param(_state(_host("a", db={"password": "hunter2-now"}), redact=("hunter2-now",)),
                 _state(_host("a", db={"password": "hunter2-then"}), redact=("hunter2-then",)),
                 [{"host": "a", "declared": "both", "services": [
                     {"service": "db", "change": "changed", "files": False, "params": [
                         {"name": "password", "now": "(secret)", "then": "(secret)"}]}]}],
                 id="a-secret-is-never-shown"),
    pytest.param(_state(_host("a", app={}), _host("b", app={})), _state(_host("c", app={})),
                 [{"host": "c", "declared": "then", "services": [
                     {"service": "app", "change": "added", "params": [], "files": False}]},
                  {"host": "a", "declared": "now", "services": [
                      {"service": "app", "change": "removed", "params": [], "files": False}]},
                  {"host": "b", "declared": "now", "services": [
                      {"service": "app", "change": "removed", "params": [], "files": False}]}],
                 id="hosts-at-one-revision-only"),
    pytest.param(None, _state(_host("a", app={"port": 1})),
                 [{"host": "a", "declared": "then", "services": [
                     {"service": "app", "change": "added", "params": [], "files": False}]}],
                 id="applied-revision-does-not-load"),
])
def test_changes_per_host_and_service(now: DeclaredState | None, then: DeclaredState,
                                      expected: list[dict[str, Any]]) -> None:
    """What going back to ``then`` changes, host by host and service by service."""
    assert changes(now, then) == expected
