"""A batch's shares across several controllers' workers on one real PostgreSQL
(``gitops.daemon.fanout``):
claims that one attempt wins, taken back from a dead worker, fenced by the holder's lease,
two controllers' queue workers applying the shares of one batch, and a share applied again
after a cut attempt counting everything as changed on its hosts (a first attempt: nothing).

No lab: the inventory's hosts are loopback addresses on a closed port, so each host's apply
ends at once as unreachable, a real result of the real apply worker; the controllers' queue
workers run in this process, each with its own state folder (as on two machines).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from builders import PROJECT, copy_sample, free_port, git_repo
from pgserver import PgServer
from polling import wait_for

from gitops.daemon import fanout
from gitops.daemon.fanout import Service, next_steps
from gitops.pipeline import apply, journal
from gitops.pipeline.reconcile import Target, declared
from gitops.record.lease import Leases
from gitops.record.store import Database
from gitops.settings import EnvironmentConfig, FanoutSettings, SecretRef, Settings

TTL = 30.0
HOSTS = [f"h{i}" for i in range(1, 5)]


@pytest.fixture()
def database(pg_server: PgServer, tmp_path: Path) -> Database:
    """A fresh PostgreSQL database of the session's cluster, migrated."""
    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    db = Database(tmp_path / "unused", pg_server.database(), SecretRef(file=secret))
    db.open().close()
    return db


def _repo(root: Path) -> Path:
    """The sample's deploys and an inventory of four loopback hosts nothing answers on."""
    repo = copy_sample(root / "repo")
    sample = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    port = free_port()
    inventory = {
        "settings": {"workers": 1, "fail_percent": 100},
        "groups": {"all": {"services": {"base": sample["groups"]["all"]["services"]["base"]}},
                   "edge": {}},
        "hosts": {h: {"address": f"127.0.0.{i}", "groups": ["edge"],
                      "ssh": {"port": port, "connect_timeout": 2, "user": "root"}}
                  for i, h in enumerate(HOSTS, 1)},
    }
    return git_repo(repo, {"inventories/lab.yml": yaml.safe_dump(inventory, sort_keys=False)},
                    "four hosts")


def _settings(database: Database, repo: Path, state: Path, name: str) -> Settings:
    return Settings(state_dir=state, database=database.url,
                    database_password=database.password, controller_name=name,
                    lease_ttl=TTL, fanout=FanoutSettings(remote=True, concurrency=1),
                    environments=[EnvironmentConfig(name="lab", repo=str(repo), watch=False)])


def _expired(database: Database, share: int) -> None:
    """Wait until the claim on ``share`` (a dead worker's, of 1 s) has expired."""
    def expired() -> bool:
        with database.open() as store:
            (row,) = store.shares([share])
        return row.expires_in is not None and row.expires_in <= 0

    wait_for(expired, 30, f"the claim on share {share} to expire")


@pytest.fixture()
def services(database: Database, tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    repo = _repo(tmp_path)
    started: list[Service] = []

    def start(name: str) -> Service:
        service = Service(_settings(database, repo, tmp_path / f"state-{name}", name), name)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(30)



def test_two_controllers_workers_apply_the_shares_of_one_batch_each_host_once(
        database: Database, services: Callable[[str], Service], tmp_path: Path) -> None:
    """The holder of the lease splits a batch of four hosts into one share per controller;
    the queue workers of the two controllers apply them, each host in one share, once,
    and the holder gets every host's result in the inventory's order."""
    a = services("a")
    services("b")
    leases = Leases(database, "a", TTL)
    token = leases.try_acquire("lab")
    assert token is not None
    leases.start(on_lost=lambda _: None, on_request=lambda _: None)  # renewed, as a daemon's

    def workers() -> bool:
        with database.open() as store:
            return store.queue_workers(3 * fanout.HEARTBEAT) == 2

    wait_for(workers, 30, "both queue workers")
    target = Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                    state_dir=a.settings.state_dir, database=database)
    _, state = declared(target)
    lines: list[str] = []
    try:
        _, report = apply.apply(state, timeout=120, on_progress=lines.append,
                                spread=a.spread("lab", lambda: leases.token("lab")))
    finally:
        leases.stop(release=True)
    assert [h.host for h in report.hosts] == HOSTS
    assert {h.status for h in report.hosts} == {"unreachable"}
    with database.open() as store:
        rows = store.shares(list(range(1, 10)))
    assert [r.state for r in rows] == ["done", "done"]
    assert sorted(h for r in rows for h in r.hosts) == HOSTS  # every host in one share
    assert [r.attempt for r in rows] == [1, 1]  # each applied once
    assert {r.token for r in rows} == {token}
    assert {r.worker for r in rows} <= {"a", "b"}
    assert any("2 shares for 2 controllers' workers" in line for line in lines), lines


def test_with_one_controller_the_batch_stays_in_its_own_workers(
        database: Database, services: Callable[[str], Service], tmp_path: Path) -> None:
    """One controller's queue worker alone: nothing is queued, the batch is applied here."""
    a = services("a")
    leases = Leases(database, "a", TTL)
    assert leases.try_acquire("lab") is not None
    target = Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                    state_dir=a.settings.state_dir, database=database)
    _, state = declared(target)
    _, report = apply.apply(state, timeout=120,
                            spread=a.spread("lab", lambda: leases.token("lab")))
    assert [h.host for h in report.hosts] == HOSTS
    with database.open() as store:
        assert store.shares(list(range(1, 10))) == []


def test_a_dead_workers_share_is_taken_back_and_its_stale_attempt_refused(
        database: Database) -> None:
    """A share claimed by a worker that stopped renewing is taken back once the claim
    expired and claimed again; the dead attempt can neither renew nor record a result."""
    with database.open() as store:
        token = store.acquire_lease("lab", "a", TTL)
        assert token is not None
        share = store.add_share("lab", token, ["h1", "h2"])
        first = store.claim_share(share, "dead", 1)
        assert first is not None and first[0] == 1
        assert store.claim_share(share, "b", TTL) is None  # one attempt at a time
        (row,) = store.shares([share])
        assert next_steps([row], holding=True, start_timeout=60)[0][1] == "wait"
        _expired(database, share)
        (row,) = store.shares([share])
        assert next_steps([row], holding=True, start_timeout=60)[0][1] == "requeue"
        assert store.requeue_share(share) is not None
        second = store.claim_share(share, "b", TTL)
        assert second is not None and second[0] == 2
        assert store.renew_share(share, 1, TTL) is None
        assert store.finish_share(share, 1, result="{}") is False
        assert store.finish_share(share, 2, result='{"from": "b"}') is True
        (row,) = store.shares([share])
    assert (row.state, row.worker, row.attempt, row.result) == ("done", "b", 2,
                                                                 '{"from": "b"}')


def test_a_share_cannot_be_claimed_or_renewed_once_its_holders_lease_is_gone(
        database: Database) -> None:
    """The lease that asked for a share was released (or taken over): no worker starts it,
    and one applying it can no longer renew its claim (it stops)."""
    with database.open() as store:
        token = store.acquire_lease("lab", "a", TTL)
        assert token is not None
        running = store.add_share("lab", token, ["h1"])
        waiting = store.add_share("lab", token, ["h2"])
        claimed = store.claim_share(running, "b", TTL)
        assert claimed is not None and claimed[1] > TTL - 5  # the lease's time left
        assert store.renew_share(running, 1, TTL) is not None
        store.release_lease("lab", "a", token)
        assert store.renew_share(running, 1, TTL) is None
        assert store.claim_share(waiting, "b", TTL) is None


def test_a_share_applied_again_after_a_cut_attempt_counts_everything_as_changed_there(
        database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A share whose first attempt's controller died is applied again by another controller,
    which has no journal of that attempt: the queue task journals its hosts as cut elsewhere
    (everything pending, so each restart runs once); a share's first attempt marks nothing.
    The apply's progress lines go to the applying controller's log, named by share."""
    caplog.set_level(logging.INFO, logger="gitops.daemon.fanout")
    b = Service(_settings(database, _repo(tmp_path), tmp_path / "state-b", "b"), "b")
    folder = b.settings.state_dir / "journal" / "lab"
    target = Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                    state_dir=tmp_path / "state-a", database=database)
    _, state = declared(target)
    sha = Path(state.root).name
    with database.open() as store:
        token = store.acquire_lease("lab", "a", TTL)
        assert token is not None
        first = store.add_share("lab", token, ["h1", "h2"])
        again = store.add_share("lab", token, ["h3", "h4"])
        assert store.claim_share(again, "dead", 1) is not None  # attempt 1, then it dies
    jobs = {share: fanout.ShareJob.of(share, "lab", sha, state.limit(set(hosts)), dry=False,
                                      journal=True, timeout=120)
            for share, hosts in ((first, {"h1", "h2"}), (again, {"h3", "h4"}))}
    b._task_body(**jobs[first].args())
    assert journal.interrupted(folder) == set()  # a first attempt forces nothing
    said = [r.getMessage() for r in caplog.records if r.name == "gitops.daemon.fanout"]
    assert f"lab share {first}: connected to 0/2 hosts" in said, said
    _expired(database, again)
    with database.open() as store:
        assert store.requeue_share(again) is not None  # the holder takes the claim back
    b._task_body(**jobs[again].args())
    with database.open() as store:
        rows = store.shares([first, again])
    assert [(r.state, r.attempt, r.worker) for r in rows] == [("done", 1, "b"),
                                                              ("done", 2, "b")]
    # unreachable, so not completed: the mark stays for b's next apply of these hosts
    assert journal.interrupted(folder) == {"h3", "h4"}
    assert journal.pending(folder, "h3") == {journal.ANY}


def test_the_holder_says_a_share_applied_again_counts_everything_as_changed(
        database: Database, services: Callable[[str], Service], tmp_path: Path) -> None:
    """The holder takes back the share of a worker that died mid-apply, its job is retried
    and applied again (attempt 2): the run's progress says what depends on any operation runs
    again there, and the hosts are journaled so on the controller that applied it."""
    a = services("a")
    target = Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                    state_dir=a.settings.state_dir, database=database)
    _, state = declared(target)
    with database.open() as store:
        token = store.acquire_lease("lab", "a", TTL)
        assert token is not None
        share = store.add_share("lab", token, ["h1", "h2"])
        assert store.claim_share(share, "dead", 1) is not None
    part = state.limit({"h1", "h2"})
    job = fanout.ShareJob.of(share, "lab", Path(state.root).name, part, dry=False,
                             journal=True, timeout=120)
    with database.open() as store:  # its job, which finds the share claimed by the dead one
        store.set_share_job(share, a.defer(job))
    _expired(database, share)
    lines: list[str] = []
    (result,) = a.spread("lab", lambda: token)._collect([job], {share: part}, token, 120,
                                                         lines.append)
    assert result.apply is not None and [h.host for h in result.apply.hosts] == ["h1", "h2"]
    # running, or already done when the apply ended between two polls (a warm worker's can)
    assert any(line.startswith((f"share {share}: running by a (attempt 2); ",
                                f"share {share}: done by a (attempt 2); "))
               and line.endswith("; an interrupted apply of it may have changed anything: "
                                 "what depends on any operation runs again")
               for line in lines), lines
    assert journal.interrupted(a.settings.state_dir / "journal" / "lab") == {"h1", "h2"}


def test_the_holder_says_a_share_applied_again_even_when_it_ended_between_two_looks(
        database: Database, services: Callable[[str], Service], tmp_path: Path) -> None:
    """A second attempt so short that the holder first sees it done still comes with the
    note that what depends on any operation runs again there."""
    a = services("a")
    target = Target(repo=str(tmp_path / "repo"), branch="main", environment="lab",
                    state_dir=a.settings.state_dir, database=database)
    _, state = declared(target)
    with database.open() as store:
        token = store.acquire_lease("lab", "a", TTL)
        assert token is not None
        share = store.add_share("lab", token, ["h1", "h2"])
        assert store.claim_share(share, "dead", 1) is not None
    _expired(database, share)
    with database.open() as store:
        attempt = store.requeue_share(share, worker="a", ttl=TTL)
    assert attempt == 2
    part = state.limit({"h1", "h2"})
    job = fanout.ShareJob.of(share, "lab", Path(state.root).name, part, dry=False,
                             journal=True, timeout=120)
    a.run_claimed(job, attempt, TTL, part)  # over before the holder looks
    lines: list[str] = []
    a.spread("lab", lambda: token)._collect([job], {share: part}, token, 120, lines.append)
    assert lines == [f"share {share}: done by a (attempt 2); an interrupted apply of it may "
                     "have changed anything: what depends on any operation runs again"]
