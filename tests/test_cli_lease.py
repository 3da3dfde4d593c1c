"""``gitops reconcile --once`` against a PostgreSQL record takes the environment's lease for
its run (``lease.hold``): refused, naming the holder, while a live controller holds it;
run once the holder lets it go within ``--lease-timeout``; the lease given back at its end.

No hosts: the inventory declares none, so the run applies nothing and needs no SSH; the
holder is a lease taken in this process, as a running daemon takes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import git_repo
from pgserver import PgServer

from gitops.record.lease import Leases
from gitops.record.store import Database
from gitops.settings import SecretRef

TTL = 30.0


@pytest.fixture()
def setup(pg_server: PgServer, tmp_path: Path) -> tuple[Database, Path, Path]:
    """A fresh database, a repository of no host, and a settings file naming both."""
    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    url = pg_server.database()
    database = Database(tmp_path / "unused", url, SecretRef(file=secret))
    database.open().close()
    repo = git_repo(tmp_path / "repo", {"inventories/lab.yml": "hosts: {}\n"}, "no hosts")
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nrepo = "{repo}"\n'
                      f'database = "{url}"\ndatabase_password = {{file = "{secret}"}}\n'
                      f"lease_ttl = {TTL}\n")
    return database, repo, config


def _reconcile(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitops", "reconcile", "--once", "-e", "lab",
                           *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GITOPS_CONFIG": str(config)})


def test_a_manual_reconcile_is_refused_while_a_controller_holds_the_environment(
        setup: tuple[Database, Path, Path]) -> None:
    """A daemon holds lab: reconcile --once applies nothing, exits 1 and names the holder."""
    database, _, config = setup
    daemon = Leases(database, "controller-a", TTL)
    assert daemon.try_acquire("lab") is not None
    proc = _reconcile(config)
    assert proc.returncode == 1, proc.stderr
    assert "held by controller 'controller-a'" in proc.stderr
    assert "--lease-timeout" in proc.stderr and "Traceback" not in proc.stderr
    with database.open() as store:
        assert store.history("lab") == []  # nothing ran
        (lease,) = store.leases()
    assert lease.holder == "controller-a" and lease.live


def test_a_manual_reconcile_waits_for_the_lease_runs_under_it_and_gives_it_back(
        setup: tuple[Database, Path, Path]) -> None:
    """With --lease-timeout, reconcile --once waits while the holder finishes, then runs
    holding the lease itself (a new token), and releases it at its end: the daemon takes
    it back at once."""
    database, _, config = setup
    daemon = Leases(database, "controller-a", TTL)
    token = daemon.try_acquire("lab")
    assert token is not None
    threading.Timer(2.0, daemon.release_all).start()
    started = time.monotonic()
    proc = _reconcile(config, "--lease-timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 2.0
    with database.open() as store:
        (run,) = store.history("lab")
        (lease,) = store.leases()
    assert run.result == "succeeded"
    assert lease.holder.startswith("cli:") and lease.token == token + 1
    assert not lease.live  # given back
    assert daemon.try_acquire("lab") == token + 2
