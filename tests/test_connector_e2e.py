"""End to end on lab hosts: what the apply's connection layer and host fan-out cost and keep.

The apply worker runs every command of a host in one remote shell and reads each fact once
until something could have changed the host (``gitops.workers.connector``); a batch's hosts
can be split across worker processes (``settings.workers``, ``gitops.pipeline.apply``). Counted on
the
host: its PID counter, read before and after.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from statelab import StateRepo, make_state_repo

from gitops.lab import LabInfo
from gitops.lab.hostsource import LAB
from gitops.model import DeclaredState
from gitops.pipeline.apply import apply, plan
from gitops.pipeline.load import load

pytestmark = pytest.mark.lab

NO_CHANGE_PROCESSES = 100
"""Processes a no-change apply of the sample may start on a host: 61 measured with its facts
run in the one shell (`bench/commands.py`); ~160 when each fact ran under its own ``sh -c``,
about 735 with pyinfra's own ssh connector."""


def _ssh(lab: LabInfo, host: str, command: str) -> str:
    proc = subprocess.run(["ssh", "-F", str(lab.ssh_config), host, command],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def _last_pid(lab: LabInfo, host: str) -> int:
    return int(_ssh(lab, host, "cat /proc/sys/kernel/ns_last_pid"))


def _state(repo: StateRepo, **settings: object) -> DeclaredState:
    if settings:
        inventory = repo.inventory()
        inventory["settings"].update(settings)
        (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inventory))
        repo.commit(f"settings {settings}")
    return load(repo.path, "lab", lab=LAB)


@pytest.fixture(scope="module")
def sample(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    """The sample on the lab's 3 hosts, converged."""
    repo = make_state_repo(tmp_path_factory.mktemp("connector"), lab)
    _plan, report = apply(_state(repo))
    assert not report.failed_hosts, report
    return repo


def _statuses(report: object) -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [(h.host, h.status, [(o.name, o.status) for o in h.ops])
            for h in report.hosts]  # type: ignore[attr-defined]


def test_no_change_apply_starts_few_processes_on_a_host(sample: StateRepo, lab: LabInfo) -> None:
    """A no-change apply of the sample starts at most 100 processes on a host (was ~160 with
    a ``sh -c`` per fact, ~735 with pyinfra's own connector)."""
    state = _state(sample)
    before = {h.name: _last_pid(lab, h.name) for h in state.hosts}
    _plan, report = apply(state)
    after = {h.name: _last_pid(lab, h.name) for h in state.hosts}
    assert report.changed == 0, _statuses(report)
    started = {name: after[name] - before[name] - 1 for name in before}  # less our own ssh
    assert max(started.values()) <= NO_CHANGE_PROCESSES, started


def test_two_workers_plan_and_apply_as_one(sample: StateRepo) -> None:
    """Split across 2 worker processes, the plan and the apply report the same, host by host
    in the inventory's order, as with one worker."""
    one = _state(sample, workers=1)
    plan_one = plan(one)
    _p, applied_one = apply(one)
    two = _state(sample, workers=2)
    assert plan(two) == plan_one
    _p, applied_two = apply(two)
    assert _statuses(applied_two) == _statuses(applied_one)
    assert [h.host for h in applied_two.hosts] == [h.name for h in two.hosts]


DEPLOY = '''\
from pyinfra.operations import files, server

files.put(name="Put the marker", src="files/marker", dest="/tmp/gitops-connector-marker")
files.file(name="Remove the marker", path="/tmp/gitops-connector-marker", present=False)
files.directory(name="A folder through sudo", path="/tmp/gitops-connector-dir", _sudo=True)
files.link(name="A link in it", path="/tmp/gitops-connector-dir/link", target="/etc/hostname")
server.shell(name="Where, who, with what", _chdir="/tmp/gitops-connector-dir", _sudo=True,
             _env={"GITOPS_X": "y"}, commands=['echo "$PWD $(id -un) $GITOPS_X" > where'])
server.shell(name="Say something and fail", commands=["echo said; echo complained >&2; exit 3"])
'''


def test_facts_are_read_again_after_a_change_and_failures_keep_their_output(
    lab: LabInfo, tmp_path: Path
) -> None:
    """An operation sees what an earlier one changed (the file it put is removed, a link is
    made in the folder just made), sudo, a folder and an environment reach the commands, and
    a failing command's exit status and stderr reach the report."""
    root = tmp_path / "repo"
    (root / "deploys/marker/files").mkdir(parents=True)
    (root / "deploys/marker/deploy.py").write_text(DEPLOY)
    (root / "deploys/marker/files/marker").write_text("here\n")
    (root / "inventories").mkdir()
    host = lab.hosts[0]
    (root / "inventories/lab.yml").write_text(yaml.safe_dump({
        "settings": {"ssh": {"user": "root", "key_file": str(lab.key_file),
                             "known_hosts_file": "/dev/null", "host_key_checking": "no"}},
        "groups": {"all": {"services": {"marker": {}}}},
        "hosts": {host.name: {"address": host.address, "groups": ["all"]}},
    }))
    _ssh(lab, host.name, "rm -rf /tmp/gitops-connector-dir")
    _plan, report = apply(load(root, "lab"))
    ops = {o.name: o for o in report.hosts[0].ops}
    assert ops["marker | Put the marker"].status == "changed"
    assert ops["marker | Remove the marker"].status == "changed"
    assert _ssh(lab, host.name, "test -e /tmp/gitops-connector-marker || echo gone") == "gone\n"
    assert ops["marker | A link in it"].status == "changed"
    made = _ssh(lab, host.name, "cd /tmp/gitops-connector-dir && readlink link && cat where")
    assert made == "/etc/hostname\n/tmp/gitops-connector-dir root y\n"
    failed = ops["marker | Say something and fail"]
    assert failed.status == "failed"
    assert "complained" in failed.stderr
    assert report.hosts[0].status == "failed"


def test_users_fact_reads_as_pyinfra_reads_it(lab: LabInfo) -> None:
    """The apply's one-awk ``Users`` fact gives what pyinfra's per-account fact gives."""
    from pyinfra.facts.server import Users

    from gitops.workers.connector import USERS_COMMAND

    host = lab.hosts[0].name
    _ssh(lab, host, "getent group gitopsx >/dev/null || groupadd gitopsx; id gitopsu "
                    ">/dev/null 2>&1 || useradd -G gitopsx,users gitopsu")
    theirs = Users().process(_ssh(lab, host, Users().command()).splitlines())
    ours = Users().process(_ssh(lab, host, USERS_COMMAND).splitlines())
    assert ours == theirs
    assert sorted(ours["gitopsu"]["groups"]) == ["gitopsx", "users"]
