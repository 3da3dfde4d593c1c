"""End to end on lab hosts: operator controls hold for the CLI, a reconcile through the
running daemon waits for its run, and a run's output names it and shows failing checks.

Reuses the probe repository and the ``gitops run`` subprocess of ``test_daemon_e2e``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from statelab import StateRepo
from test_daemon_e2e import (
    TOKEN,
    Daemon,
    _note,
    _set_probe,
    applied_everywhere,
    make_probe_repo,
    wait_for,
)

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

CONTAINS_CHECK = """\
def test_probe_is_ok(host):
    \"\"\"The probe file says ok.\"\"\"
    assert host.file("/etc/gitops-probe").contains("^ok$")
"""


def _control(repo: StateRepo, *args: str) -> subprocess.CompletedProcess[str]:
    """suspend / resume (they take no --repo) on the repository's state folder."""
    return subprocess.run([sys.executable, "-m", "gitops", *args, "--state-dir",
                           str(repo.state_dir)], capture_output=True, text=True, timeout=60)


def test_suspended_environment_refuses_reconcile_once_on_lab_hosts(
        lab: LabInfo, tmp_path: Path) -> None:
    """Suspended: a new commit and reconcile --once applies nowhere (exit 2); --force --reason
    applies it, recorded with who and why; every run's last line names it; a failing check
    shows pytest's explanation, not only ``assert False``."""
    repo = make_probe_repo(tmp_path, lab)
    (repo.path / "deploys/probe/checks.py").write_text(CONTAINS_CHECK)
    repo.commit("probe: a check whose first line says little")
    first = repo.gitops("reconcile", "--once")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "run #1: succeeded, " in first.stdout and " checks passed" in first.stdout
    assert _control(repo, "suspend", "--reason", "change freeze").returncode == 0
    _set_probe(repo, note="written while suspended")
    refused = repo.gitops("reconcile", "--once")
    assert refused.returncode == 2 and "change freeze" in refused.stderr
    for host in lab.hosts:
        assert "written while suspended" not in _note(repo, host.name)
    forced = repo.gitops("reconcile", "--once", "--force", "--reason", "security fix")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    for host in lab.hosts:
        assert "written while suspended" in _note(repo, host.name)
    _, runs = repo.gitops_json("history")
    override = next(r for r in runs if r["kind"] == "override")
    assert "security fix" in override["reason"] and override["actor"] not in ("", "unknown")
    assert _control(repo, "resume").returncode == 0
    _set_probe(repo, "broken")
    broken = repo.gitops("reconcile", "--once")
    assert broken.returncode == 1
    assert "where False = " in broken.stdout and "contains" in broken.stdout
    assert "checks passed" in broken.stdout and " failed" in broken.stdout.splitlines()[-1]


def test_reconcile_through_the_daemon_waits_and_prints_the_run(
        lab: LabInfo, tmp_path: Path) -> None:
    """With the daemon up, gitops reconcile (settings through --config) waits for the
    daemon's run, prints each host and the run's id and outcome, and exits 0; so does
    gitops rollback, the hosts back on the previous verified commit."""
    repo = make_probe_repo(tmp_path, lab)
    daemon = Daemon(repo, tmp_path)
    daemon.start()
    try:
        head = subprocess.check_output(["git", "-C", str(repo.path), "rev-parse", "HEAD"],
                                       text=True).strip()
        wait_for(lambda: applied_everywhere(daemon, head), 300, "the first rollout")
        proc = subprocess.run(
            [sys.executable, "-m", "gitops", "reconcile", "--config", str(daemon.config),
             "--reason", "operator check"], capture_output=True, text=True, timeout=600,
            cwd=tmp_path, env={**os.environ, "GITOPS_TEST_TOKEN": TOKEN})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs = daemon.history()
        mine = next(r for r in runs if r["reason"] == "operator check")
        assert mine["result"] == "succeeded"
        assert f"run #{mine['id']}: succeeded" in proc.stdout
        for host in lab.hosts:
            assert f"{host.name}: apply ok" in proc.stdout
        newer = _set_probe(repo, note="to be rolled back")
        wait_for(lambda: applied_everywhere(daemon, newer), 300, "the newer commit")
        env = {**os.environ, "GITOPS_TEST_TOKEN": TOKEN}
        back = subprocess.run(
            [sys.executable, "-m", "gitops", "rollback", "--config", str(daemon.config),
             "--reason", "roll back the motd line"], capture_output=True, text=True,
            timeout=600, cwd=tmp_path, env=env)
        assert back.returncode == 0, back.stdout + back.stderr
        rollback = next((r for r in daemon.history() if r["kind"] == "rollback"
                         and r["duration_s"]), None)
        assert rollback is not None, (back.stdout, back.stderr, daemon.history()[:4])
        assert rollback["sha"] == head and f"run #{rollback['id']}: succeeded" in back.stdout
        for host in lab.hosts:
            assert "to be rolled back" not in _note(repo, host.name)
    finally:
        daemon.stop()
