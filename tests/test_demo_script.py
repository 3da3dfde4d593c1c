"""``demo.sh`` boots as many hosts as ``GITOPS_DEMO_HOSTS`` says, and reconciles an inventory
that declares them all. The script runs for real (bash, git, python3) in a copy of the
project whose ``.venv/bin/gitops`` and ``apt-get`` only log what they are asked: booting a lab
and installing packages are tested elsewhere (tests/test_lab_e2e.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from builders import PROJECT, copy_sample, git, git_repo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="demo.sh runs as root only")

LOGGER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$*" in "lab status --json") echo '{{"up": false, "hosts": []}}';; esac
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the project (demo.sh and the sample state, committed), and the log file."""
    project, log = tmp_path / "project", tmp_path / "calls.log"
    project.mkdir()
    shutil.copy(PROJECT / "demo.sh", project / "demo.sh")
    copy_sample(project, "inventories", "deploys")
    for stub in (project / ".venv/bin/gitops", tmp_path / "bin/apt-get"):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(LOGGER.format(log=log))
        stub.chmod(0o755)
    git_repo(project, message="sample")
    return project, log


def _demo(project: Path, tmp_path: Path, hosts: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    env |= {"PATH": f"{tmp_path / 'bin'}:{env['PATH']}", "GITOPS_DEMO_HOSTS": hosts,
            "GITOPS_STATE_DIR": str(tmp_path / "state"), "GITOPS_LAB_NAME": "h8demo"}
    return subprocess.run(["bash", str(project / "demo.sh")], capture_output=True, text=True,
                          env=env, timeout=120)


def test_demo_boots_the_hosts_asked_for(tmp_path: Path) -> None:
    """``GITOPS_DEMO_HOSTS=5 ./demo.sh`` boots 5 hosts and reconciles an inventory of
    lab-1..lab-5 with the sample's services; a count that is no number of hosts is refused
    (exit 2) before anything runs."""
    project, log = _project(tmp_path)
    done = _demo(project, tmp_path, "5")
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    copy = tmp_path / "state/demo-repo"
    assert "gitops lab up --hosts 5" in calls
    assert f"gitops reconcile --once --repo {copy} --environment lab" in calls
    inventory = yaml.safe_load(git(copy, "show", "HEAD:inventories/lab.yml"))
    assert list(inventory["hosts"]) == [f"lab-{i}" for i in range(1, 6)]
    assert inventory["groups"]["web"]["services"]["web"]["listen_port"] == 80
    for bad in ("0", "many", "51"):
        log.unlink(missing_ok=True)
        refused = _demo(project, tmp_path, bad)
        assert refused.returncode == 2
        assert f"GITOPS_DEMO_HOSTS is how many hosts to boot: a number from 1 to 50, not " \
               f"'{bad}'" in refused.stderr
        assert not log.exists()
