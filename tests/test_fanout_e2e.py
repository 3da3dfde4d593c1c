"""End to end: two controllers on one real PostgreSQL, ``[fanout] remote = true``, apply the
shares of one environment's batch on the session's lab hosts (``gitops.daemon.fanout``).

The two daemons run in this process, each with its own state folder (as on two machines) and
its own queue worker; the inventory asks one apply worker per controller, so the holder
splits the 3 hosts into 2 shares, and the record (kept by the holder) has every host once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pgserver import PgServer
from polling import wait_for
from statelab import StateRepo, make_state_repo

from gitops.daemon import fanout
from gitops.daemon.loop import Daemon
from gitops.lab import LabInfo
from gitops.record.store import Database
from gitops.settings import EnvironmentConfig, FanoutSettings, SecretRef, Settings

pytestmark = pytest.mark.lab

TTL = 30.0



@pytest.fixture()
def setting_up(lab: LabInfo, pg_server: PgServer, tmp_path: Path
               ) -> Iterator[tuple[StateRepo, Database, list[Daemon]]]:
    repo = make_state_repo(tmp_path, lab)
    inventory = repo.inventory()
    inventory["settings"]["workers"] = 1  # per controller: 2 controllers, 2 shares
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    repo.commit("one apply worker per controller")
    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    database = Database(tmp_path / "unused", pg_server.database(), SecretRef(file=secret))
    database.open().close()
    daemons = [Daemon(Settings(
        state_dir=tmp_path / f"state-{name}", database=database.url,
        database_password=database.password, controller_name=name, lease_ttl=TTL,
        fanout=FanoutSettings(remote=True, concurrency=1),
        environments=[EnvironmentConfig(name="lab", repo=str(repo.path), watch=False,
                                        interval=3600, drift_interval=3600)]))
        for name in ("a", "b")]
    for daemon in daemons:
        daemon.start()
    try:
        yield repo, database, daemons
    finally:
        for daemon in daemons:
            daemon.stop(60)


def test_two_controllers_workers_apply_one_batch_each_host_once_recorded_by_the_holder(
        setting_up: tuple[StateRepo, Database, list[Daemon]]) -> None:
    """A new commit: the holder queues 2 shares of the 3 hosts, the two controllers' workers
    apply them (each host in one share, one attempt), and the holder records and verifies
    the whole batch: every host applied once at the commit, its change on every host."""
    repo, database, daemons = setting_up

    def store_call(fn: Callable[[Any], Any]) -> Any:
        with database.open() as store:
            return fn(store)

    wait_for(lambda: store_call(lambda s: s.queue_workers(3 * fanout.HEARTBEAT)) == 2, 30,
             "both controllers' queue workers")
    first = wait_for(lambda: next((r for r in store_call(lambda s: s.history("lab")) if r.result),
                               None), 600, "the first rollout")
    assert first.result == "succeeded", (first.error, [
        (h.host, h.apply_status, h.error, h.verify_status)
        for h in store_call(lambda s: s.host_results(first.id))])
    holder = next(d for d in daemons if d.leases is not None and d.leases.holds("lab"))
    before = {r.id for r in store_call(lambda s: s.shares(list(range(1, 200))))}
    motd = repo.path / "deploys/base/templates/motd.j2"
    motd.write_text(motd.read_text() + "\n  applied through the fan-out\n")
    sha = repo.commit("motd: a line for the fan-out")
    assert holder.trigger("lab", reason="fan-out", actor="api:test")
    run = wait_for(lambda: next((r for r in store_call(lambda s: s.history("lab"))
                              if r.sha == sha and r.result), None), 300, "the commit's run")
    assert run.result == "succeeded", run.error
    rows = [r for r in store_call(lambda s: s.shares(list(range(1, 200)))) if r.id not in before]
    names = [h.name for h in repo.lab.hosts]
    assert [r.state for r in rows] == ["done", "done"]
    assert sorted(h for r in rows for h in r.hosts) == sorted(names)  # each host in one share
    assert [r.attempt for r in rows] == [1, 1]  # each share applied once
    assert {r.worker for r in rows} <= {"a", "b"}
    results = store_call(lambda s: s.host_results(run.id))
    assert sorted(h.host for h in results) == sorted(names)  # one row per host: once each
    assert {h.apply_status for h in results} == {"ok"}
    status = {r.host: r for r in store_call(lambda s: s.status("lab")) if r.host}
    assert {h: (r.last_applied.sha if r.last_applied else None) for h, r in status.items()} \
        == dict.fromkeys(names, sha)
    for host in names:
        assert "applied through the fan-out" in repo.ssh(host, "cat /etc/motd")
