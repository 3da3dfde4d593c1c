"""Several controllers on one real PostgreSQL: leases, their expiry and fencing, takeovers
that resume from the record, and requests routed to the holder (``gitops.record.lease``).

No hosts: the environments' inventories declare none, so a run applies nothing and needs no
SSH; the daemons run in this process, each with its own state folder (as on two machines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import commit, git_repo
from pgserver import PgServer
from polling import wait_for

from gitops.daemon.loop import Daemon
from gitops.record.lease import FENCE, Leases, surplus
from gitops.record.store import Database
from gitops.settings import EnvironmentConfig, SecretRef, Settings
from gitops.web.metrics import api_environments, render
from gitops.web.page import page_data

TTL = 5.0
"""Seconds: long enough that a loaded machine still renews in time, short for the takeovers."""


@pytest.fixture()
def database(pg_server: PgServer, tmp_path: Path) -> Database:
    """A fresh PostgreSQL database of the session's cluster."""
    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    db = Database(tmp_path / "unused", pg_server.database(), SecretRef(file=secret))
    db.open().close()  # migrated
    return db


def _leases(database: Database, name: str, ttl: float = TTL,
            clock: Callable[[], float] = time.monotonic) -> Leases:
    return Leases(database, name, ttl, clock=clock)



def test_two_controllers_never_both_hold_an_environment(database: Database) -> None:
    """Eight controllers racing for one environment: exactly one gets it, and the others
    still cannot while its lease lives."""
    contenders = [_leases(database, f"c{i}", ttl=60) for i in range(8)]
    barrier = threading.Barrier(len(contenders))
    won: list[str] = []

    def race(leases: Leases) -> None:
        barrier.wait()
        if leases.try_acquire("prod") is not None:
            won.append(leases.controller)

    threads = [threading.Thread(target=race, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    holders = [c for c in contenders if c.holds("prod")]
    assert [c.controller for c in holders] == won
    assert all(c.try_acquire("prod") is None for c in contenders if c.controller not in won)
    with database.open() as store:
        (lease,) = store.leases()
    assert lease.holder == won[0] and lease.live


def test_an_unrenewed_lease_expires_and_the_old_holder_learns_it_lost(
        database: Database) -> None:
    """A holder that stops renewing loses the environment after ``lease_ttl`` (by the
    database's clock) to another, with a new fencing token; its next renewal says so."""
    a, b = _leases(database, "a", ttl=1.0), _leases(database, "b", ttl=30)
    first = a.try_acquire("prod")
    assert first is not None and b.try_acquire("prod") is None
    second = wait_for(lambda: b.try_acquire("prod"), 30, "a's lease to expire")
    assert second > first
    assert a.renew() == ["prod"]  # the token is stale: taken over
    assert not a.holds("prod") and b.holds("prod")
    assert b.renew() == [] and b.holds("prod")


def test_a_holder_stops_acting_before_its_lease_can_be_taken(database: Database) -> None:
    """Cut off from the database, a holder stops claiming the environment at FENCE of the
    ttl after its last renewal was sent, while the database still refuses others until the
    whole ttl: the two never overlap."""
    now = [1000.0]
    a = _leases(database, "a", ttl=TTL, clock=lambda: now[0])
    b = _leases(database, "b", ttl=TTL)
    assert a.try_acquire("prod") is not None
    now[0] += FENCE * TTL - 0.01
    assert a.holds("prod")
    now[0] += 0.02
    assert not a.holds("prod")
    assert a.expire() == ["prod"]
    assert b.try_acquire("prod") is None  # the database's lease still lives
    wait_for(lambda: b.try_acquire("prod") is not None, 3 * TTL, "the takeover")


def test_a_released_lease_is_taken_at_once(database: Database) -> None:
    """A clean stop gives the environments up: another controller takes them at once."""
    a, b = _leases(database, "a", ttl=60), _leases(database, "b", ttl=60)
    assert a.try_acquire("prod") is not None
    a.release_all()
    assert b.try_acquire("prod") is not None


# -- daemons --------------------------------------------------------------------------------


def _repo(root: Path) -> Path:
    """A repository whose ``lab`` inventory declares no host: a run applies nothing."""
    return git_repo(root / "repo", {"inventories/lab.yml": "hosts: {}\n"}, "no hosts")


def _commit(repo: Path, text: str) -> str:
    (repo / "NOTES").write_text(text)
    return commit(repo, text)


def _settings(database: Database, repo: Path, state: Path, name: str,
              ttl: float) -> Settings:
    return Settings(state_dir=state, database=database.url,
                    database_password=database.password, controller_name=name,
                    lease_ttl=ttl, environments=[EnvironmentConfig(
                        name="lab", repo=str(repo), watch=False, interval=3600,
                        drift_interval=3600)])


@pytest.fixture()
def daemons(database: Database, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    repo = _repo(tmp_path)
    started: list[Daemon] = []

    def start(name: str, ttl: float = TTL) -> Daemon:
        daemon = Daemon(_settings(database, repo, tmp_path / f"state-{name}", name, ttl))
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(10)


def _runs(database: Database) -> list[Any]:
    with database.open() as store:
        return store.history("lab", limit=100)


def test_a_takeover_records_the_dead_holders_run_interrupted_and_runs_again(
        database: Database, daemons: Callable[..., Daemon]) -> None:
    """A controller that died mid-run left its run unfinished and its lease to expire: the
    next holder takes the environment within the ttl, records that run interrupted, and
    runs from the record (a new run of the branch head)."""
    dead = _leases(database, "dead")
    assert dead.try_acquire("lab") is not None
    with database.open() as store:
        left = store.start_run("lab", "reconcile", None, actor="gitops-daemon", reason="x")
    started = time.monotonic()
    daemon = daemons("b")
    wait_for(lambda: daemon.leases is not None and daemon.leases.holds("lab"), 3 * TTL,
             "the takeover")
    assert time.monotonic() - started < TTL + 2
    runs = wait_for(lambda: [r for r in _runs(database) if r.id > left and r.result], 30,
                    "the new holder's run")
    assert runs[0].result == "succeeded"
    (old,) = [r for r in _runs(database) if r.id == left]
    assert old.result == "interrupted"


def test_a_request_to_another_controller_is_run_by_the_holder(
        database: Database, daemons: Callable[..., Daemon]) -> None:
    """An operator's reconcile sent to a controller that does not hold the environment is
    run by the one that does; every controller's API, page and metrics name the holder."""
    a = daemons("a", ttl=60)  # no expiry meant here, however loaded the machine
    wait_for(lambda: a.leases is not None and a.leases.holds("lab"), 3 * TTL, "a holds lab")
    b = daemons("b", ttl=60)
    wait_for(lambda: any(r.result == "succeeded" for r in _runs(database)), 60, "a's first run")
    assert b.trigger("lab", reason="please", actor="api:test") is True
    run = wait_for(lambda: next((r for r in _runs(database) if r.actor == "api:test"
                              and r.result), None), 60, "the routed run")
    assert run.result == "succeeded" and run.reason == "please"
    for daemon in (a, b):
        (row,) = [r for r in daemon.status() if r["host"] == ""]
        assert row["controller"] == "a"
        assert daemon.health()["controller"] in ("a", "b")
    with database.open(readonly=True) as store:
        assert [e["controller"] for e in page_data(store)["environments"]] == ["a"]
        assert [e["controller"] for e in api_environments(store)] == ["a"]
        text = render(store).decode()
    assert 'gitops_environment_controller{controller="a",environment="lab"} 1.0' in text


def test_a_commit_is_applied_by_the_survivor_after_its_holder_stops(
        database: Database, daemons: Callable[..., Daemon], tmp_path: Path) -> None:
    """The holder stops (its leases released): the other controller takes the environment
    at once and applies the next commit."""
    a = daemons("a")
    wait_for(lambda: a.leases is not None and a.leases.holds("lab"), 3 * TTL, "a holds lab")
    b = daemons("b")
    a.stop(10)
    wait_for(lambda: b.leases is not None and b.leases.holds("lab"), TTL, "b takes lab")
    sha = _commit(tmp_path / "repo", "second")
    assert b.trigger("lab", reason="new commit", actor="api:test")
    wait_for(lambda: any(r.sha == sha and r.result == "succeeded" for r in _runs(database)), 20,
             "the commit applied by b")


# -- rebalancing: a controller holding more than its fair share gives the extra ones up ------


@pytest.mark.parametrize(("held", "environments", "controllers", "extra"), [
    (["a", "b", "c", "d", "e", "f"], 6, 3, ["c", "d", "e", "f"]),
    (["a", "b", "c", "d", "e", "f"], 6, 1, []),
    (["b", "a"], 6, 3, []),
    (["a", "b", "c"], 5, 2, []),   # ceil(5 / 2) = 3
    (["a", "b", "c"], 4, 2, ["c"]),
])
def test_a_controller_gives_up_what_exceeds_its_fair_share(
        held: list[str], environments: int, controllers: int, extra: list[str]) -> None:
    """The fair share is ceil(environments / running controllers); beyond it, the last held
    environments by name are given up."""
    assert surplus(held, environments, controllers) == extra


def test_after_a_restart_the_environments_are_shared_out_again(
        database: Database, tmp_path: Path) -> None:
    """One controller took all four environments while alone; once a second one runs, the
    first gives two up between runs and the second takes them: two each, none unheld."""
    repo = _repo(tmp_path)
    for name in ("e1", "e2", "e3", "e4"):
        (repo / "inventories" / f"{name}.yml").write_text("hosts: {}\n")
    _commit(repo, "four environments")

    def daemon(name: str) -> Daemon:
        return Daemon(Settings(
            state_dir=tmp_path / f"state-{name}", database=database.url,
            database_password=database.password, controller_name=name, lease_ttl=3.0,
            environments=[EnvironmentConfig(name=e, repo=str(repo), watch=False,
                                            interval=3600, drift_interval=3600)
                          for e in ("e1", "e2", "e3", "e4")]))

    a = daemon("a")
    a.start()
    b = daemon("b")
    try:
        assert a.leases is not None and b.leases is not None
        wait_for(lambda: len(a.leases.held()) == 4, 30, "a holding all four")
        b.start()
        wait_for(lambda: len(a.leases.held()) == 2 and len(b.leases.held()) == 2, 60,
                 "two environments each")
        assert set(a.leases.held()) | set(b.leases.held()) == {"e1", "e2", "e3", "e4"}
    finally:
        b.stop(10)
        a.stop(10)
