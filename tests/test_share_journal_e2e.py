"""End to end: a share cut between a change and its restart, applied again by another controller.

One lab host with the sample's base and app, the app's configuration change notifying its
restart (``_if=``).
Controller a's apply is killed (``kill -9``) once the new configuration is written and before
the restart (a pause in the deploy, on while a file is on the host); its journal is on its own
machine. Controller b then applies the share as its second attempt (the holder's own re-apply
after a's claim lapsed, on a real PostgreSQL), with no journal of a's: the restart must run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import PgServer
from polling import wait_for
from statelab import StateRepo, make_state_repo, set_app_message

from gitops.daemon.fanout import Service, ShareJob
from gitops.lab import LabInfo
from gitops.lab.hostsource import LAB
from gitops.pipeline import journal
from gitops.pipeline.reconcile import Target, declared
from gitops.record.store import Database
from gitops.records import WorkerResult
from gitops.settings import EnvironmentConfig, SecretRef, Settings

pytestmark = pytest.mark.lab

HOST = "lab-1"
PAUSE_FILE = "/etc/gitops-test-pause"
PAUSE = (f"server.shell(name='Pause when {PAUSE_FILE} exists (test)',\n"
         f"             commands=['if [ -e {PAUSE_FILE} ]; then sleep 300; fi'])\n")
RESTART = "app | Restart app (code, configuration or unit changed)"


def _served(repo: StateRepo) -> str:
    return repo.ssh(HOST, "curl -sS --max-time 5 http://127.0.0.1:8000/", check=False)


def _cut_between_change_and_restart(repo: StateRepo, message: str) -> None:
    """Controller a applies ``message`` and dies once it is written, before the restart."""
    repo.ssh(HOST, f"touch {PAUSE_FILE}")
    set_app_message(repo, message)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitops", "reconcile", "--once", "--repo", str(repo.path),
         "--state-dir", str(repo.state_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: message in repo.ssh(HOST, "cat /etc/app/config.json", check=False),
                 240, "the new configuration on the host")
        wait_for(lambda: repo.ssh(HOST, "pgrep -f '^sleep 300'", check=False).strip(), 60,
                 "the apply inside the pause (the restart has not run)")
        assert proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    repo.ssh(HOST, f"rm -f {PAUSE_FILE}; pkill -f '^sleep 300' || true")
    assert message not in _served(repo)


def test_a_share_cut_on_its_controller_is_restarted_by_the_next_attempt_elsewhere(
        lab: LabInfo, pg_server: PgServer, tmp_path: Path) -> None:
    """The share's second attempt, on another controller without the first one's journal,
    restarts the app (what depends on the written configuration) and changes nothing else;
    the host's journal there is gone once that apply completed."""
    repo = make_state_repo(tmp_path, lab, hosts=1, services=("base", "app"))
    deploy = repo.path / "deploys/app/deploy.py"
    marker = "systemd.daemon_reload("
    deploy.write_text(deploy.read_text().replace(marker, PAUSE + marker, 1))
    set_app_message(repo, "Hello 0")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    _cut_between_change_and_restart(repo, "Hello 1")

    secret = tmp_path / "db-password"
    secret.write_text(pg_server.password + "\n")
    database = Database(tmp_path / "unused", pg_server.database(), SecretRef(file=secret))
    state_b = tmp_path / "state-b"
    b = Service(Settings(state_dir=state_b, database=database.url,
                         database_password=database.password, controller_name="b",
                         lease_ttl=30, environments=[EnvironmentConfig(
                             name="lab", repo=str(repo.path), watch=False)]), "b")
    _, state = declared(Target(repo=str(repo.path), branch="main", environment="lab",
                               state_dir=state_b, database=database, lab=LAB))
    with database.open() as store:
        token = store.acquire_lease("lab", "b", 300)
        assert token is not None
        share = store.add_share("lab", token, [HOST])
        assert store.claim_share(share, "a", 1) is not None  # a's attempt; a dies
        attempt = wait_for(lambda: store.requeue_share(share, worker="b", ttl=30), 30,
                           "a's claim to expire")  # then the holder's own re-apply
    assert attempt == 2
    job = ShareJob.of(share, "lab", Path(state.root).name, state, dry=False, journal=True,
                      timeout=600)
    b.run_claimed(job, attempt, 300, state)
    with database.open() as store:
        (row,) = store.shares([share])
    assert row.state == "done", row.error
    report = WorkerResult.model_validate_json(row.result or "").apply
    assert report is not None
    (host,) = report.hosts
    status = {op.name: op.status for op in host.ops}
    assert status[RESTART] == "changed", status
    for name in ("app | App code", "app | App configuration", "app | systemd unit app.service"):
        assert status[name] == "unchanged", status  # nothing to do: still nothing done
    assert "Hello 1" in _served(repo)
    assert journal.interrupted(state_b / "journal" / "lab") == set()
