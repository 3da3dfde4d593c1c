"""End to end on lab hosts: how a deploy's files and mistakes reach the user.

A small state repository written the way pyinfra's own examples are (``local.include`` of a
task file, templates named relative to the deploy's folder), reconciled by the real CLI on two
lab hosts; then commits that break it, and what the user is told.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import commit, git, init_repo

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

DEPLOY = '''\
from os import path

from pyinfra import local

local.include(filename=path.join("tasks", "greeting.py"))
'''

TASK = '''\
from pyinfra import host
from pyinfra.operations import files

files.template(name="Greeting", src="templates/greeting.j2", dest="/etc/gitops-greeting",
               greeting=host.data.greeting)
'''


class Repo:
    def __init__(self, root: Path, lab: LabInfo) -> None:
        self.path = root / "repo"
        self.state_dir = root / "state"
        self.lab = lab
        site = self.path / "deploys/site"
        (site / "tasks").mkdir(parents=True)
        (site / "templates").mkdir()
        (site / "deploy.py").write_text(DEPLOY)
        (site / "tasks/greeting.py").write_text(TASK)
        (site / "templates/greeting.j2").write_text("{{ greeting }} from {{ host.name }}\n")
        (self.path / "inventories").mkdir()
        self.write_inventory()
        init_repo(self.path)
        self.commit("a greeting")

    def write_inventory(self, **ssh: str) -> None:
        inventory = {
            "settings": {"ssh": {"user": "root", "key_file": str(self.lab.key_file),
                                 "known_hosts_file": "/dev/null", "host_key_checking": "no",
                                 **ssh}},
            "groups": {"all": {"services": {"site": {"greeting": "Hello"}}}},
            "hosts": {h.name: {"address": h.address, "groups": ["all"]}
                      for h in self.lab.hosts[:2]},
        }
        (self.path / "inventories/lab.yml").write_text(yaml.safe_dump(inventory))

    def commit(self, message: str) -> None:
        commit(self.path, message)

    def undo(self) -> None:
        git(self.path, "reset", "-q", "--hard", "HEAD~1")

    def gitops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gitops", *args, "--repo", str(self.path),
             "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=600,
        )

    def ssh(self, host: str, command: str) -> str:
        return subprocess.run(["ssh", "-F", str(self.lab.ssh_config), host, command],
                              capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("deployfiles"), lab)


def _assert_no_internals(output: str, repo: Repo) -> None:
    assert str(repo.state_dir) not in output, output
    assert "snapshots/" not in output, output
    assert "No hosts remaining" not in output, output
    assert "UnexpectedExternalError" not in output, output
    assert "site-packages" not in output, output


def test_include_and_template_paths_resolve_in_the_service_folder(repo: Repo) -> None:
    """``local.include("tasks/...")`` and ``files.template(src="templates/...")`` find the
    service's files, the included file sees the service's parameters, on apply and plan."""
    proc = repo.gitops("reconcile", "--once")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert repo.ssh("lab-1", "cat /etc/gitops-greeting") == "Hello from lab-1\n"
    assert repo.ssh("lab-2", "cat /etc/gitops-greeting") == "Hello from lab-2\n"
    proc = repo.gitops("plan", "--exit-code")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan: no changes" in proc.stdout


def test_no_host_key_warning_when_checking_is_off(repo: Repo) -> None:
    """With host_key_checking "no", plan and apply print no "No host key ..." warning."""
    for args in (("plan",), ("reconcile", "--once")):
        proc = repo.gitops(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "connected to 2/2 hosts" in proc.stderr
        assert "No host key" not in proc.stderr + proc.stdout, proc.stderr


def test_an_unknown_host_key_with_checking_on_is_still_reported(
    repo: Repo, tmp_path: Path
) -> None:
    """With host_key_checking "yes" and a host missing from known_hosts, the plan says so."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    repo.write_inventory(host_key_checking="yes", known_hosts_file=str(known))
    repo.commit("check host keys")
    try:
        proc = repo.gitops("plan")
    finally:
        repo.undo()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "No host key" in proc.stdout + proc.stderr


def test_an_exception_in_a_deploy_names_the_users_file_and_line(repo: Repo) -> None:
    """A NameError in an included task file is shown at deploys/site/tasks/greeting.py:6,
    once per host on apply and once in all on plan, without pyinfra's internals."""
    task = repo.path / "deploys/site/tasks/greeting.py"
    task.write_text(TASK + "print(undefined_thing)\n")
    repo.commit("a typo")
    try:
        applied = repo.gitops("reconcile", "--once")
        planned = repo.gitops("plan")
    finally:
        repo.undo()
    error = "deploys/site/tasks/greeting.py:6: NameError: name 'undefined_thing' is not defined"
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert applied.stdout.count(error) == 2, applied.stdout
    _assert_no_internals(applied.stdout + applied.stderr, repo)
    assert planned.returncode == 1
    assert planned.stdout.count(error) == 1, planned.stdout
    assert f"lab-1, lab-2: cannot plan: {error}" in planned.stdout
    _assert_no_internals(planned.stdout + planned.stderr, repo)


def test_a_missing_template_names_the_users_line_and_the_repository_path(repo: Repo) -> None:
    """A template that is not in the repository fails its operation on apply (and the plan)
    at the user's line, naming deploys/site/templates/..., not the snapshot."""
    task = repo.path / "deploys/site/tasks/greeting.py"
    task.write_text(TASK.replace("greeting.j2", "missing.j2"))
    repo.commit("a template that is not there")
    try:
        applied = repo.gitops("reconcile", "--once")
        planned = repo.gitops("plan")
    finally:
        repo.undo()
    where = "deploys/site/tasks/greeting.py:4: FileNotFoundError"
    missing = "'deploys/site/templates/missing.j2'"
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert applied.stdout.count(where) == 2 and missing in applied.stdout, applied.stdout
    assert "✗ site | tasks/greeting.py | Greeting" in applied.stdout
    _assert_no_internals(applied.stdout + applied.stderr, repo)
    assert planned.returncode == 1
    assert where in planned.stdout and missing in planned.stdout, planned.stdout
    _assert_no_internals(planned.stdout + planned.stderr, repo)
