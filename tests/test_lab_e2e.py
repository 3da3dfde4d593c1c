"""End-to-end tests of ``gitops lab`` on real hosts (root, systemd-nspawn, debootstrap)."""

from __future__ import annotations

import os
import re
import signal
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from statelab import side_lab

import gitops.lab as lab_api
from gitops.lab import hosts as lab_hosts
from gitops.model import InventoryFile

pytestmark = pytest.mark.lab

# Resources of OTHER labs (other names) may come and go on a shared machine while a test
# runs; the "as before" comparisons ignore exactly those and nothing else.
_LAB_RESOURCE = re.compile(r"^([a-z0-9]{1,8})-(br|v\d+|lab-\d+)$")


def _same_subnet_pair(prefix: str) -> tuple[str, str]:
    """Two lab names ``prefix`` + two letters whose names hash to one /24."""
    seen: dict[object, str] = {}
    for tag in (a + b for a in string.ascii_lowercase for b in string.ascii_lowercase):
        name = prefix + tag
        net = lab_api.default_subnet(name)
        if net in seen:
            return seen[net], name
        seen[net] = name
    raise AssertionError(f"no two names {prefix}xx share a subnet")


def ssh(info: lab_api.LabInfo, host: str, command: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["ssh", "-F", str(info.ssh_config), host, command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{host}: {command!r} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def on_every_host(info: lab_api.LabInfo, command: str) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=len(info.hosts)) as pool:
        outs = pool.map(lambda h: ssh(info, h.name, command), info.hosts)
        return dict(zip((h.name for h in info.hosts), outs, strict=True))


def _foreign(entry: str, own: str) -> bool:
    m = _LAB_RESOURCE.match(entry)
    return m is not None and m.group(1) != own


def snapshot(own: str) -> dict[str, set[str]]:
    """`ip netns list`, `ip link` names and /proc/mounts, minus other labs' resources."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    ns_names = {line.split()[0] for line in netns.stdout.splitlines() if line.strip()}
    link_names = {line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()}
    mounts = set(Path("/proc/mounts").read_text().splitlines())
    return {
        "netns": {n for n in ns_names if not _foreign(n, own)},
        "links": {n for n in link_names if not _foreign(n, own)},
        "mounts": {m for m in mounts if not _foreign(m.split()[1].rsplit("/", 1)[-1], own)},
    }


def gitops_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_every_host_is_running(lab: lab_api.LabInfo) -> None:
    """`systemctl is-system-running` says `running` on every host, over the lab ssh_config."""
    outs = on_every_host(lab, "systemctl is-system-running --wait")
    assert outs == {h.name: "running" for h in lab.hosts}


def test_command_over_ssh_on_every_host(lab: lab_api.LabInfo) -> None:
    """A command over SSH runs as root on every host, whose hostname is its lab name."""
    outs = on_every_host(lab, "echo $(hostname) $(id -u) $(python3 -c 'print(6*7)')")
    assert outs == {h.name: f"{h.name} 0 42" for h in lab.hosts}


def test_nginx_installs_from_the_mirror_on_every_host(lab: lab_api.LabInfo) -> None:
    """`apt-get update && apt-get install -y nginx` works from the lab mirror; nginx is active."""
    outs = on_every_host(
        lab,
        "grep -rh '^deb' /etc/apt/sources.list /etc/apt/sources.list.d/ && "
        "apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null 2>&1 && "
        "systemctl is-active nginx",
    )
    for host, out in outs.items():
        source, active = out.splitlines()
        assert source == f"deb [trusted=yes] {lab.mirror_url} ./", host
        assert active == "active", host


def test_inventory_validates_and_lists_every_host(lab: lab_api.LabInfo) -> None:
    """The lab's inventory.yml validates as an InventoryFile and names every host's address."""
    inv = InventoryFile.model_validate(yaml.safe_load(lab.inventory.read_text()))
    assert {n: h.address for n, h in inv.hosts.items()} == {h.name: h.address for h in lab.hosts}
    assert inv.settings.ssh.key_file == str(lab.key_file)


def test_status_reports_every_host_answering(lab: lab_api.LabInfo) -> None:
    """`status` lists every host as running and answering SSH."""
    rows = lab_api.status(lab.name)
    assert [(r.name, r.running, r.ssh) for r in rows] == [(h.name, True, True) for h in lab.hosts]


def test_second_up_is_refused_and_changes_nothing(lab: lab_api.LabInfo) -> None:
    """A second `gitops lab up` of a lab that is up exits 1, says so, and changes nothing."""
    before = snapshot(lab.name)
    proc = gitops_cli("up", "--name", lab.name)
    assert proc.returncode == 1
    assert "already up" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(lab.name) == before
    assert lab_api.current(lab.name) == lab


def test_up_then_down_leaves_the_machine_as_before() -> None:
    """After `lab up` then `lab down`, netns list, links and mounts are as before `up`."""
    name = side_lab("ud")
    lab_api.down(name)
    before = snapshot(name)
    proc = gitops_cli("up", "--name", name, "--hosts", "2")
    try:
        assert proc.returncode == 0, proc.stderr
        info = lab_api.current(name)
        assert info is not None
        assert on_every_host(info, "systemctl is-system-running --wait") == {
            "lab-1": "running",
            "lab-2": "running",
        }
        assert snapshot(name) != before
    finally:
        down = gitops_cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert snapshot(name) == before
    assert lab_hosts.find_nspawn(name) == {}
    assert lab_api.current(name) is None


def test_down_recovers_after_kill_9_of_up() -> None:
    """After `kill -9` of `lab up` mid-boot, `lab down` still removes everything it made."""
    name = side_lab("kl")
    lab_api.down(name)
    before = snapshot(name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitops", "lab", "up", "--name", name, "--hosts", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while set(lab_hosts.find_nspawn(name).values()) != {1, 2} and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # the hosts outlive the killed `up` (nspawn briefly forks a child with the same cmdline)
    assert set(lab_hosts.find_nspawn(name).values()) == {1, 2}
    down = gitops_cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert lab_hosts.find_nspawn(name) == {}
    assert snapshot(name) == before


def test_failed_boot_names_the_host_and_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """When hosts do not come up in time, `up` names a host and leaves nothing behind."""
    name = side_lab("fl")
    lab_api.down(name)
    before = snapshot(name)
    monkeypatch.setattr(lab_api, "BOOT_TIMEOUT", -1000.0)  # the deadline has passed already
    with pytest.raises(lab_api.LabError, match=r"host lab-\d \(10\.213\.\d+\.1\d\) did not") as exc:
        lab_api.up(hosts=2, name=name)
    assert lab_hosts.find_nspawn(name) == {}
    assert lab_hosts.find_helpers(name, lab_api.common.state_dir(name)) == []
    assert lab_api.current(name) is None
    assert snapshot(name) == before
    log = Path(str(exc.value).rsplit("see ", 1)[1])
    assert log.is_file()  # the log the message names stays until `lab down`
    lab_api.down(name)
    assert not lab_api.common.state_dir(name).exists()


def test_unknown_lab_status_and_down_are_harmless() -> None:
    """`status` of a lab that is not up says so; `down` of it succeeds and changes nothing."""
    name = side_lab("no")
    before = snapshot(name)
    status = gitops_cli("status", "--name", name)
    assert status.returncode == 0
    assert "not up" in status.stdout
    down = gitops_cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert snapshot(name) == before


def test_two_labs_started_together_get_different_subnets() -> None:
    """Two labs whose names hash to one /24, started at the same moment, both come up, each
    on its own subnet (the second moves to the next free one)."""
    names = _same_subnet_pair(side_lab("r"))
    assert lab_api.default_subnet(names[0]) == lab_api.default_subnet(names[1])
    for name in names:
        lab_api.down(name)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            procs = list(pool.map(lambda n: gitops_cli("up", "--name", n, "--hosts", "1"), names))
        assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
        infos = [lab_api.current(n) for n in names]
        assert all(infos)
        subnets = {i.hosts[0].address.rsplit(".", 1)[0] for i in infos if i is not None}
        assert len(subnets) == 2
        for info in infos:
            assert info is not None
            assert on_every_host(info, "systemctl is-system-running --wait") == {
                "lab-1": "running"}
    finally:
        for name in names:
            lab_api.down(name)
