"""End to end, on lab hosts: a host whose fingerprints and recorded facts are unchanged is
reported ``no change, by fingerprint`` without running its operations; a drift made by hand
(a file edited, a service stopped, a package removed, a user deleted) changes a fact, so the
next reconcile applies that host in full and corrects it; a deploy that reads host or local
state outside facts is always applied in full, never skipping a change it should make.

The steps run in file order against one lab and one repository (the sample's ``base`` and
``app``); lab-2 logs in as a sudo user, the others as root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from statelab import StateRepo, make_state_repo

from gitops.lab import LabInfo
from gitops.records import NO_CHANGE_BY_FINGERPRINT as NO_CHANGE

pytestmark = pytest.mark.lab
HOSTS = ("lab-1", "lab-2", "lab-3")


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    """lab-2 logs in as the lab's sudo user, as real fleets do; the others as root."""
    return make_state_repo(tmp_path_factory.mktemp("factskip"), lab, services=("base", "app"),
                           sudo_hosts=("lab-2",))


def _reconcile(repo: StateRepo) -> dict[str, dict[str, Any]]:
    """One ``reconcile --once``, succeeded, verified everywhere: host -> its apply."""
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert {r["status"] for r in result["verify"]["results"]} == {"pass"}, result["verify"]
    return {h["host"]: h for h in result["apply"]["hosts"]}


def _settled(repo: StateRepo) -> dict[str, dict[str, Any]]:
    """Reconcile until every host is skipped: after an apply that changed a host, the next
    one records its facts; reading a file there may move its access time (``relatime``, a
    field of the ``File`` fact), which the one after records again. Three are enough."""
    for _ in range(3):
        hosts = _reconcile(repo)
        if all(h["fingerprint"] == NO_CHANGE for h in hosts.values()):
            return hosts
    raise AssertionError(f"not every host skipped after 3 reconciles: {hosts}")


def _changed(host: dict[str, Any]) -> set[str]:
    return {op["name"] for op in host["ops"] if op["status"] == "changed"}


def test_unchanged_hosts_are_skipped_by_fingerprint(repo: StateRepo) -> None:
    """A first reconcile (no record) applies every host in full; once an apply changed
    nothing, the next skips every host (no operation run) and still verifies it; the plan
    says so too."""
    first = _reconcile(repo)
    assert all(first[h]["fingerprint"] == "full apply: no record of an apply that changed "
               "nothing" for h in HOSTS), first
    assert all(first[h]["ops"] for h in HOSTS)
    settled = _settled(repo)
    assert all(settled[h]["status"] == "ok" and not settled[h]["ops"] for h in HOSTS)
    plan = repo.gitops("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    for h in HOSTS:
        assert f"{h}: {NO_CHANGE}" in plan.stdout, plan.stdout
    again = repo.gitops("reconcile", "--once")  # what the operator reads as it runs
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 host(s) unchanged by fingerprint" in again.stderr, again.stderr
    assert not re.search(r"applying on \d+ host", again.stderr), again.stderr  # none applied
    for h in HOSTS:
        assert f"{h}: ok, {NO_CHANGE}" in again.stdout, again.stdout


DRIFTS = [
    ("a file edited", "lab-1", "echo '{}' > /etc/app/config.json", "app | App configuration",
     "grep -q port /etc/app/config.json"),
    ("a service stopped", "lab-2", "systemctl stop app", "app | app running and enabled",
     "systemctl is-active app"),
    ("a package removed", "lab-3", "apt-get remove -y -q curl",
     "base | Install base packages (tzdata, sudo, openssh-server, curl)",
     "command -v curl"),
    ("a user deleted", "lab-1", "userdel ops", "base | Admin user ops with its SSH keys",
     "id ops"),
]


@pytest.mark.parametrize(("host", "drift", "op", "check"), [d[1:] for d in DRIFTS],
                         ids=[d[0] for d in DRIFTS])
def test_drift_by_hand_is_found_and_corrected(repo: StateRepo, host: str, drift: str, op: str,
                                              check: str) -> None:
    """A drift changes a recorded fact: that host alone is applied in full and corrected,
    the others stay skipped; the reconcile after records it again, skipped the next time."""
    _settled(repo)
    repo.ssh(host, drift)
    after = _reconcile(repo)
    assert after[host]["fingerprint"].startswith("full apply: fact changed"), after[host]
    assert op in _changed(after[host]), after[host]
    repo.ssh(host, check)
    assert all(after[h]["fingerprint"] == NO_CHANGE for h in HOSTS if h != host), after
    again = _reconcile(repo)  # no change, full: the facts are recorded again
    assert not _changed(again[host]), again[host]


PROBE_REMOTE = '''\
from pyinfra import host
from pyinfra.operations import files

# host state read outside facts: a command run while the deploy loads
ok, output = host.run_shell_command("cat /etc/gitops-probe-flag 2>/dev/null || true")
files.file(name="probe marker", path="/etc/gitops-probe-marker",
           present="on" in "\\n".join(output.stdout_lines))
'''
PROBE_LOCAL = '''\
from pathlib import Path

from pyinfra.operations import files

# controller state read outside the repository: a local file
flag = Path("{flag}")
files.file(name="probe marker", path="/etc/gitops-probe-marker",
           present=flag.exists() and "on" in flag.read_text())
'''


def test_a_deploy_reading_state_outside_facts_falls_back(repo: StateRepo,
                                                           tmp_path: Path) -> None:
    """A deploy that runs a command on its host, or reads a controller file, to decide is
    never skipped (the plan and the apply say why), and the change it should make is made."""
    flag = tmp_path / "probe-flag"
    for host in ("lab-1", "lab-2"):  # as a lab used before may have left them
        repo.ssh(host, "rm -f /etc/gitops-probe-flag /etc/gitops-probe-marker")
    for name, text in (("remote", PROBE_REMOTE), ("local", PROBE_LOCAL.format(flag=flag))):
        folder = repo.path / "deploys" / f"probe{name}"
        folder.mkdir()
        (folder / "deploy.py").write_text(text)
    inv = repo.inventory()
    inv["settings"]["require_checks"] = False  # the probes have nothing to check
    inv["groups"]["prober"] = {"services": {"proberemote": {}}}
    inv["groups"]["probel"] = {"services": {"probelocal": {}}}
    inv["hosts"]["lab-1"]["groups"] = [*inv["hosts"]["lab-1"]["groups"], "prober"]
    inv["hosts"]["lab-2"]["groups"] = [*inv["hosts"]["lab-2"]["groups"], "probel"]
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    repo.commit("probes that read state outside facts")
    for _ in range(3):  # the inventory changed: every host in full, then lab-3 skipped
        hosts = _reconcile(repo)
        if hosts["lab-3"]["fingerprint"] == NO_CHANGE:
            break
    assert hosts["lab-3"]["fingerprint"] == NO_CHANGE, hosts["lab-3"]
    assert hosts["lab-1"]["fingerprint"] == (
        "full apply: its deploy runs a command on the host outside facts "
        "(deploys/proberemote/deploy.py:5)"), hosts["lab-1"]
    assert hosts["lab-2"]["fingerprint"].startswith(
        f"full apply: its deploy reads {flag}, which no fingerprint covers"), hosts["lab-2"]
    plan = repo.gitops("plan")
    assert "runs a command on the host outside facts" in plan.stdout, plan.stdout
    repo.ssh("lab-1", "echo on > /etc/gitops-probe-flag")
    flag.write_text("on\n")
    hosts = _reconcile(repo)
    assert "proberemote | probe marker" in _changed(hosts["lab-1"])
    assert "probelocal | probe marker" in _changed(hosts["lab-2"])
    for host in ("lab-1", "lab-2"):
        repo.ssh(host, "test -e /etc/gitops-probe-marker")
