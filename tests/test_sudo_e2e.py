"""End to end: a host reached as a user whose sudo asks for a password.

gitops runs root's commands with ``sudo -n`` and never lets pyinfra prompt for a password
(the worker has no terminal): such a host fails at once with one line naming it and what to
do (password-less sudo), the run fails (exit 1) and is recorded failed; nothing is armed, so
no guard is left ``Lost``, and nothing is changed on the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from statelab import PROJECT, StateRepo, make_state_repo

from gitops.lab import LabInfo
from gitops.lab.sudo import add_user

pytestmark = pytest.mark.lab

USER = "labpass"
HOST = "lab-3"
EXPECTED = (f"host {HOST}: sudo asks {USER} for a password (sudo: a password is required); "
            f"gitops runs root's commands with `sudo -n`: give {USER} password-less sudo "
            f"there (`{USER} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/)")
SHELL_ONLY = ("from pyinfra.operations import server\n\n"
              "server.shell(name='Touch a file (test)', "
              "commands=['touch /etc/gitops-test-sudo'])\n")
NO_PARAMS = ("from pydantic import BaseModel, ConfigDict\n\n\n"
             "class Params(BaseModel):\n    model_config = ConfigDict(extra='forbid')\n")


def _repo(lab: LabInfo, tmp_path: Path, services: dict[str, dict[str, object]],
          guard_all: bool) -> StateRepo:
    add_user(lab, USER, password=True, hosts=(HOST,))
    repo = make_state_repo(tmp_path, lab, services=("base",))
    inv = repo.inventory()
    inv["settings"]["require_checks"] = False
    if guard_all:
        inv["settings"]["guard"] = {"all": True}
    inv["groups"]["all"]["services"] = services
    inv["hosts"] = {HOST: {"groups": ["all"], "ssh": {"user": USER}, "vars": {"_sudo": True}}}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    (repo.path / "deploys/touch").mkdir()
    (repo.path / "deploys/touch/deploy.py").write_text(SHELL_ONLY)
    (repo.path / "deploys/touch/model.py").write_text(NO_PARAMS)
    repo.commit(f"{HOST} as {USER}, whose sudo asks for a password")
    return repo


@pytest.mark.parametrize("case", ["facts", "guard"])
def test_a_sudo_asking_for_a_password_fails_the_host_with_one_line(
        lab: LabInfo, tmp_path: Path, case: str) -> None:
    """``facts``: the sample's guarded base, whose facts are read with sudo; ``guard``: a
    service of one shell command, guarded (``guard.all``), whose first remote command is the
    guard's preflight. Either way: exit 1, the run recorded failed, the host failed with the
    one line, no traceback, no guard armed or Lost, nothing changed on the host."""
    services: dict[str, dict[str, object]] = (
        {"base": _base()} if case == "facts" else {"touch": {}})
    repo = _repo(lab, tmp_path, services, guard_all=case == "guard")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 1, result
    assert result["result"] == "failed", result
    (host,) = result["apply"]["hosts"]
    assert host["status"] == "failed" and host["error"] == EXPECTED, host
    guard = host["guard"] or {"result": "", "token": ""}  # None: stopped before any guarded op
    assert guard["result"] == "" and guard["token"] == "", host
    proc = repo.gitops("reconcile", "--once")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert EXPECTED in proc.stdout + proc.stderr
    _, runs = repo.gitops_json("history")
    assert runs[0]["result"] == "failed", runs[0]
    left = repo.ssh(HOST, "for f in /var/lib/gitops-guard /etc/gitops-test-sudo; do "
                    "if [ -e $f ]; then echo $f; fi; done")
    assert left == "", left


def _base() -> dict[str, object]:
    """The sample's parameters of base (from ``inventories/lab.yml``)."""
    inv = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    base: dict[str, object] = inv["groups"]["all"]["services"]["base"]
    return base
