"""End to end: two ``gitops run`` processes on one real PostgreSQL share a lab environment;
the holder is killed with SIGKILL mid-apply and the other takes over within ``lease_ttl``.

One lab host (the session's first), a lease_ttl of 8 s; each controller has its own state
folder, as on two machines.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from builders import free_port
from pgserver import PgServer
from polling import wait_for
from statelab import StateRepo, make_state_repo

from gitops.lab import LabInfo
from gitops.record.store import Database
from gitops.settings import SecretRef

pytestmark = pytest.mark.lab

TTL = 8


class Controller:
    """One ``gitops run`` subprocess of the shared settings (its own state folder)."""

    def __init__(self, name: str, repo: StateRepo, root: Path, url: str, secret: Path) -> None:
        self.name = name
        self.port = free_port()
        self.config = root / f"gitops-{name}.toml"
        self.config.write_text(
            f'state_dir = "{root / ("state-" + name)}"\n'
            f'listen = "127.0.0.1:{self.port}"\n'
            f'database = "{url}"\n'
            f'database_password = {{file = "{secret}"}}\n'
            f'controller_name = "{name}"\n'
            f"lease_ttl = {TTL}\n"
            "[[environments]]\n"
            'name = "lab"\n'
            f'repo = "{repo.path}"\n'
            "interval = 2\n"
            "drift_interval = 3600\n"
        )
        self.log = root / f"controller-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
            env={**os.environ, "GITOPS_CONFIG": str(self.config)})
        wait_for(lambda: self.health() is not None, 30, f"{self.name}'s health")

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=5) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    def holds(self) -> bool:
        health = self.health()
        return health is not None and "lab" in health["holds"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop (SIGTERM lets the batch in progress finish; SIGKILL after 120 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def test_a_killed_holder_is_replaced_within_the_lease_ttl(
        lab: LabInfo, pg_server: PgServer, tmp_path: Path) -> None:
    """SIGKILL of the controller applying a commit: the other takes the environment within
    lease_ttl, records the cut run interrupted and applies and verifies the commit; the
    two never ran the environment at the same time."""
    repo = make_state_repo(tmp_path, lab, hosts=1)
    host = lab.hosts[0].name
    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    url = pg_server.database()
    database = Database(tmp_path / "unused", url, SecretRef(file=secret))
    a = Controller("a", repo, tmp_path, url, secret)
    b = Controller("b", repo, tmp_path, url, secret)
    try:
        a.start()
        wait_for(a.holds, 3 * TTL, "a holding lab")
        b.start()

        def history() -> list[Any]:
            with database.open() as store:
                return store.history("lab", limit=100)

        first = subprocess.check_output(["git", "-C", str(repo.path), "rev-parse", "HEAD"],
                                        text=True).strip()
        wait_for(lambda: any(r.sha == first and r.result == "succeeded" for r in history()),
                 600, "a's first rollout")
        motd = repo.path / "deploys/base/templates/motd.j2"
        motd.write_text(motd.read_text() + "\n  taken over\n")
        sha = repo.commit("motd: a line for the takeover")
        cut = wait_for(lambda: next((r for r in history() if r.sha == sha
                                     and r.result is None), None), 60, "a applying")
        holder, survivor = (a, b) if a.holds() else (b, a)
        assert holder.holds() and not survivor.holds()
        holder.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(survivor.holds, TTL + 3, "the survivor taking lab within the lease ttl")
        took = time.monotonic() - killed
        wait_for(lambda: any(r.sha == sha and r.result == "succeeded" and r.id > cut.id
                             for r in history()), 300, "b applying the commit")
        runs = {r.id: r for r in history()}
        assert runs[cut.id].result == "interrupted"
        assert "taken over" in repo.ssh(host, "cat /etc/motd")
        ordered = sorted((r for r in runs.values() if not r.event and r.finished_at),
                         key=lambda r: r.started_at)
        for before, after in itertools.pairwise(ordered):
            if before.id != cut.id:  # the cut run's end is when b recorded it
                assert after.started_at >= before.finished_at, (before, after)
        print(f"takeover after SIGKILL: {took:.1f} s (lease_ttl {TTL} s)")
    finally:
        a.stop()
        b.stop()
