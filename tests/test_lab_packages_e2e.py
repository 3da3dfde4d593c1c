"""End to end: a service that installs a database server, written the way pyinfra's own
examples are (``local.include`` of a task file when a ``host.data`` flag from group data is
set), run unchanged on a lab host; its package is declared in the inventory
(``lab: {packages: [...]}``), not in gitops."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from builders import git_repo

import gitops.lab as lab_api

pytestmark = pytest.mark.lab

DEPLOY = '''\
from pyinfra import host, local

if host.data.get("install_mariadb"):
    local.include("tasks/mariadb.py")
'''

TASK = '''\
from pyinfra.operations import apt, mysql, systemd

apt.packages(name="Install MariaDB", packages=["mariadb-server"], update=True,
             cache_time=3600)
systemd.service(name="MariaDB running and enabled", service="mariadb",
                running=True, enabled=True)
mysql.database(name="Database app", database="app")
'''

CHECKS = '''\
def test_mariadb_runs(host):
    """MariaDB is running."""
    assert host.service("mariadb").is_running


def test_the_app_database_exists(host):
    """The app database was created."""
    assert "app" in host.check_output("mariadb -Nse 'SHOW DATABASES'").split()
'''


def _name() -> str:
    return lab_api.resolve_name(None)[:5] + "db"


@pytest.fixture(scope="module")
def db_lab() -> Iterator[lab_api.LabInfo]:
    """A one-host lab of its own, booted for this module."""
    name = _name()
    if lab_api.current(name) is not None:
        lab_api.down(name)
    info = lab_api.up(hosts=1, name=name)
    try:
        yield info
    finally:
        lab_api.down(name)


def _repo(root: Path, lab: str, packages: list[str]) -> Path:
    repo = root / "repo"
    db = repo / "deploys/db"
    (db / "tasks").mkdir(parents=True)
    (db / "deploy.py").write_text(DEPLOY)
    (db / "tasks/mariadb.py").write_text(TASK)
    (db / "checks.py").write_text(CHECKS)
    inventory = {
        "settings": {"source": "lab", "lab": lab},
        "lab": {"packages": packages},
        "groups": {"db": {"vars": {"install_mariadb": True}, "services": {"db": {}}}},
        "hosts": {"lab-1": {"groups": ["db"]}},
    }
    return git_repo(repo, {"inventories/lab.yml": yaml.safe_dump(inventory, sort_keys=False)},
                    "a database")


def _gitops(repo: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", *args, "--repo", str(repo), "--state-dir", str(state),
         "-e", "lab"], capture_output=True, text=True, timeout=1800)


def test_a_declared_database_server_installs_and_verifies_on_a_lab_host(
    db_lab: lab_api.LabInfo, tmp_path: Path
) -> None:
    """Declaring mariadb-server under lab.packages is all it takes: the reconcile installs it
    on the lab host from the lab, the service's checks pass, a second run changes nothing."""
    repo = _repo(tmp_path, db_lab.name, ["mariadb-server"])
    proc = _gitops(repo, tmp_path / "state", "reconcile", "--once", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["result"] == "succeeded"
    assert {r["check"] for r in result["verify"]["results"] if r["status"] == "pass"} == {
        "test_mariadb_runs", "test_the_app_database_exists"}
    again = _gitops(repo, tmp_path / "state", "plan", "--exit-code")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_package_not_in_the_machines_sources_is_a_clear_error(
    db_lab: lab_api.LabInfo, tmp_path: Path
) -> None:
    """A declared package no Debian source has: exit 2, the inventory's line and the name."""
    repo = _repo(tmp_path, db_lab.name, ["no-such-package-gitops"])
    proc = _gitops(repo, tmp_path / "state", "plan")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("inventories/lab.yml:5 lab.packages: package no-such-package-gitops is not in "
            "this machine's Debian sources") in proc.stderr, proc.stderr
