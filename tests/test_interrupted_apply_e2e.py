"""End to end: a reconcile killed with ``kill -9`` between a change and the restart it needs.

The sample's base and app (web is not needed) on two hosts; the app's deploy gets a pause
between writing its configuration and restarting on that change (a file on the host turns it
on), so the kill lands at that moment every time. lab-1 logs in as root, lab-2 as the lab's
sudo user with ``_sudo: true``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_for
from statelab import StateRepo, git, make_state_repo, set_app_message
from test_daemon_e2e import TOKEN, Daemon

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

PAUSE_FILE = "/etc/gitops-test-pause"
PAUSE = (f"server.shell(name='Pause when {PAUSE_FILE} exists (test)',\n"
         f"             commands=['if [ -e {PAUSE_FILE} ]; then sleep 300; fi'])\n")
HOSTS = ("lab-1", "lab-2")


def _served(repo: StateRepo, host: str) -> str:
    return repo.ssh(host, "curl -sS --max-time 5 http://127.0.0.1:8000/")


def _config(repo: StateRepo, host: str) -> str:
    return repo.ssh(host, "cat /etc/app/config.json", check=False)


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    repo = make_state_repo(tmp_path_factory.mktemp("interrupted"), lab, hosts=len(HOSTS),
                           services=("base", "app"), sudo_hosts=("lab-2",))
    deploy = repo.path / "deploys/app/deploy.py"
    text = deploy.read_text()
    marker = "systemd.daemon_reload("
    deploy.write_text(text.replace(marker, PAUSE + marker, 1))
    set_app_message(repo, "Hello 0")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    return repo


def _verified(daemon: Daemon, sha: str) -> bool:
    status = daemon.status_now()
    return all(((status.get(h) or {}).get("last_verified_revision") or "").endswith(sha)
               for h in HOSTS)



def _kill_between_change_and_restart(repo: StateRepo, message: str) -> None:
    """Commit ``message``, reconcile, kill -9 once every host has the new configuration and
    the app has not been restarted with it."""
    for host in HOSTS:
        repo.ssh(host, f"touch {PAUSE_FILE}")
    set_app_message(repo, message)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitops", "reconcile", "--once", "--repo", str(repo.path),
         "--state-dir", str(repo.state_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: all(message in _config(repo, h) for h in HOSTS), 240,
                 "the new configuration on every host")
        wait_for(lambda: all(repo.ssh(h, "pgrep -f '^sleep 300'", check=False).strip()
                             for h in HOSTS), 60,
                 "every host inside the pause (the restart has not run)")
        assert proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for host in HOSTS:
        repo.ssh(host, f"rm -f {PAUSE_FILE}; pkill -f '^sleep 300' || true")
        assert message not in _served(repo, host)  # written, not restarted: the crash's state


def test_kill_9_between_a_change_and_its_restart_is_completed_next_run(
    repo: StateRepo,
) -> None:
    """After a kill -9 that left a new configuration written but the app not restarted, the
    next reconcile restarts the app (the change's consequence) and verifies: no failure."""
    _kill_between_change_and_restart(repo, "Hello 1")

    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert result["result"] == "succeeded"
    for h in result["apply"]["hosts"]:
        status = {op["name"]: op["status"] for op in h["ops"]}
        assert status["app | App configuration"] == "unchanged"  # already written
        assert status["app | Restart app (code, configuration or unit changed)"] == "changed"
    for host in HOSTS:
        assert "Hello 1" in _served(repo, host)
    assert not list((repo.state_dir / "journal" / "lab").glob("*.jsonl"))
    code, again = repo.gitops_json("reconcile", "--once")  # forced once, not every time
    assert code == 0, again
    for h in again["apply"]["hosts"]:
        changed = {op["name"] for op in h["ops"] if op["status"] == "changed"}
        assert changed == {"app | Pause when /etc/gitops-test-pause exists (test)"}, h


def test_every_apply_leaves_no_journal(repo: StateRepo) -> None:
    """A reconcile that completes removes each host's journal of operations."""
    set_app_message(repo, "Hello 2")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert not list((repo.state_dir / "journal" / "lab").glob("*.jsonl"))
    assert Path(repo.state_dir / "journal" / "lab").is_dir()


def test_the_daemon_after_such_a_kill_verifies_without_quarantine(
    repo: StateRepo, tmp_path: Path,
) -> None:
    """The daemon started after that kill restarts the app and verifies the commit: no
    rollback, no quarantine, no failed run."""
    _kill_between_change_and_restart(repo, "Hello 3")
    sha = git(repo.path, "rev-parse", "HEAD")
    daemon = Daemon(repo, tmp_path)
    daemon.start()
    try:
        wait_for(lambda: _verified(daemon, sha), 240, "the commit verified on every host")
        for host in HOSTS:
            assert "Hello 3" in _served(repo, host)
        _, status = daemon.http("GET", "/api/status",
                                headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        daemon.stop()
    env = next(row for row in status if row["host"] == "")
    assert env["quarantined"] == []
    runs = [r for r in daemon.history() if r["sha"] == sha]
    assert [r["result"] for r in runs if r["kind"] == "rollback"] == []
    assert "failed" not in [r["result"] for r in runs]
    assert "succeeded" in [r["result"] for r in runs]
