"""End to end, on lab hosts: a reconcile's apply and verify share one SSH connection per host.

The checks run in a session of the connection the apply opened (``gitops.workers.
verify_channel``), so a host's sshd accepts one login per reconcile, not two; as root and
as a non-root user with sudo. Counted on the host: sshd's "Accepted" lines in its journal
after a cursor taken before the reconcile.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from statelab import StateRepo, make_state_repo, set_app_message

from gitops.lab import LabInfo
from gitops.records import NO_CHANGE_BY_FINGERPRINT

pytestmark = pytest.mark.lab
SUDO_HOST = "lab-2"


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    """The sample on the lab's hosts (``lab-2`` logs in as the sudo user), converged and its
    facts recorded: reconciled until every host is skipped by fingerprint (an apply that
    read a file may move its access time, which the next one records again)."""
    state = make_state_repo(tmp_path_factory.mktemp("oneconn"), lab, sudo_hosts=(SUDO_HOST,))
    for _ in range(4):
        hosts = _reconcile(state)["apply"]["hosts"]
        if all(h["fingerprint"] == NO_CHANGE_BY_FINGERPRINT for h in hosts):
            return state
    raise AssertionError(f"not every host skipped after 4 reconciles: {hosts}")


def _reconcile(repo: StateRepo, *args: str) -> dict[str, Any]:
    code, result = repo.gitops_json("reconcile", "--once", *args)
    assert code == 0, result
    return result  # type: ignore[no-any-return]


def _ssh(repo: StateRepo, host: str, command: str) -> str:
    """``command`` on ``host`` over an SSH connection of its own (the lab's ssh_config shares
    one control master, which would log in once for many commands)."""
    proc = subprocess.run(["ssh", "-F", str(repo.lab.ssh_config), "-o", "ControlMaster=no",
                           "-o", "ControlPath=none", host, command],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def _cursor(repo: StateRepo, host: str) -> str:
    return _ssh(repo, host, "journalctl -n 0 --show-cursor -o cat").split("cursor: ", 1)[1].strip()


def _logins_since(repo: StateRepo, host: str, cursor: str) -> int:
    """SSH logins the host accepted after ``cursor``, less the one reading them."""
    lines = _ssh(repo, host, f"journalctl -u ssh --after-cursor='{cursor}' -o cat")
    return sum(line.startswith("Accepted ") for line in lines.splitlines()) - 1


def _hosts(repo: StateRepo) -> list[str]:
    return list(repo.inventory()["hosts"])


@pytest.mark.parametrize("change", ["none", "app message"])
def test_a_reconcile_logs_in_once_per_host(repo: StateRepo, change: str) -> None:
    """A no-change reconcile (hosts unchanged by fingerprint) and a changed-only one that
    applies ``app``: every host applied and verified, each over one SSH login, where
    the apply and the verify logged in apart before."""
    hosts = _hosts(repo)
    cursors = {h: _cursor(repo, h) for h in hosts}
    if change == "none":
        result = _reconcile(repo)
    else:
        set_app_message(repo, "one connection")
        result = _reconcile(repo, "--changed-only")
    applied = {h["host"]: h for h in result["apply"]["hosts"]}
    checked = {r["host"] for r in result["verify"]["results"]}
    assert {r["status"] for r in result["verify"]["results"]} == {"pass"}
    assert set(applied) == checked == set(hosts)
    if change == "none":
        assert {h["fingerprint"] for h in applied.values()} == {NO_CHANGE_BY_FINGERPRINT}
    else:
        assert any(op["name"] == "app | App configuration" and op["status"] == "changed"
                   for h in applied.values() for op in h["ops"]), applied
    logins = {h: _logins_since(repo, h, cursors[h]) for h in hosts}
    assert logins == dict.fromkeys(hosts, 1), logins
