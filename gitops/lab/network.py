"""The lab's network: one bridge, one network namespace and veth pair per host.

Called by ``gitops.lab`` (``up``/``down``). Only resources whose names match this lab's exact
patterns (see ``gitops.lab.common``) are ever listed or removed. Machine-wide mounts that the
lab needs (``/run/netns`` made by ``ip netns add``, the tmpfs on ``/run/systemd/nspawn``) are
recorded in ``/run/gitops-lab/`` when the lab creates them, and removed only by the last lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

from gitops.lab.common import (
    bridge_address,
    bridge_name,
    host_address,
    netns_name,
    netns_re,
    run,
    veth_name,
    veth_re,
)

__all__ = [
    "MARKS",
    "NETNS_RUN",
    "NSPAWN_RUN",
    "create_bridge",
    "create_host_nets",
    "list_links",
    "list_netns",
    "machine_lock",
    "netns_inodes",
    "prepare_mounts",
    "release_mounts",
    "remove_network",
    "subnet_in_use",
]

MARKS = Path("/run/gitops-lab")
"""Marker files naming machine-wide mounts that the lab (not someone else) created."""
NSPAWN_RUN = "/run/systemd/nspawn"
NETNS_RUN = "/run/netns"


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Serialise, across labs, making the shared mounts + starting hosts vs. releasing them."""
    MARKS.mkdir(parents=True, exist_ok=True)
    with open(MARKS / "mounts.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _mount_points() -> set[str]:
    with open("/proc/mounts") as fh:
        return {line.split()[1] for line in fh}


def _mark(name: str) -> None:
    MARKS.mkdir(parents=True, exist_ok=True)
    (MARKS / name).write_text("created by gitops lab\n")


def prepare_mounts() -> None:
    """Mount a tmpfs on /run/systemd/nspawn if absent; note whether /run/netns pre-exists."""
    points = _mount_points()
    if NSPAWN_RUN not in points:
        Path(NSPAWN_RUN).mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "tmpfs", NSPAWN_RUN], timeout=10)
        _mark("nspawn-tmpfs")
    if NETNS_RUN not in points:
        _mark("netns-mount")  # `ip netns add` is about to create it


def release_mounts(any_lab_left: bool) -> None:
    """Undo the mounts the lab created, once no lab (and nothing else) uses them."""
    points = _mount_points()
    if (MARKS / "netns-mount").exists():
        entries = os.listdir(NETNS_RUN) if os.path.isdir(NETNS_RUN) else []
        if not entries:
            if NETNS_RUN in points:
                run(["umount", NETNS_RUN], timeout=10, check=False)
            (MARKS / "netns-mount").unlink(missing_ok=True)
    if (MARKS / "nspawn-tmpfs").exists() and not any_lab_left:
        if NSPAWN_RUN in points:
            run(["umount", NSPAWN_RUN], timeout=10, check=False)
        (MARKS / "nspawn-tmpfs").unlink(missing_ok=True)


def list_netns(name: str) -> list[str]:
    """This lab's network namespaces that exist now."""
    pattern = netns_re(name)
    try:
        entries = os.listdir(NETNS_RUN)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if pattern.match(e))


def list_links(name: str) -> list[str]:
    """This lab's bridge and host-side veths that exist now (in the root namespace)."""
    out = run(["ip", "-j", "link", "show"], timeout=10).stdout
    names = [link["ifname"] for link in json.loads(out or "[]")]
    vre = veth_re(name)
    return [n for n in names if n == bridge_name(name) or vre.match(n)]


def subnet_in_use(net: ipaddress.IPv4Network, own_bridge: str) -> str | None:
    """The interface (other than ours) that already has an address in ``net``, if any."""
    out = run(["ip", "-j", "-4", "addr", "show"], timeout=10).stdout
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            iface = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            if link["ifname"] != own_bridge and iface.network.overlaps(net):
                return str(link["ifname"])
    return None


def create_bridge(name: str, net: ipaddress.IPv4Network) -> None:
    br = bridge_name(name)
    run(["ip", "link", "add", br, "type", "bridge"], timeout=10)
    run(["ip", "addr", "add", f"{bridge_address(net)}/{net.prefixlen}", "dev", br], timeout=10)
    run(["ip", "link", "set", br, "up"], timeout=10)


def create_host_nets(name: str, net: ipaddress.IPv4Network, indices: range) -> None:
    """Per host i: namespace ``<name>-lab-i`` with ``eth0`` (address .10+i, no default route)
    whose peer ``<name>-vi`` is on the bridge. One ``ip -batch`` for the root namespace, one
    per host namespace (a few processes instead of six per host)."""
    lines = []
    for i in indices:
        ns, veth = netns_name(name, i), veth_name(name, i)
        lines += [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set {veth} master {bridge_name(name)} up",
        ]
    run(["ip", "-batch", "-"], timeout=60, input="\n".join(lines) + "\n")
    for i in indices:
        inner = [
            f"addr add {host_address(net, i)}/{net.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
        ]
        run(["ip", "-n", netns_name(name, i), "-batch", "-"], 10, input="\n".join(inner) + "\n")


def netns_inodes(name: str) -> set[int]:
    """The nsfs inodes of this lab's namespaces (to find the processes living in them)."""
    inodes = set()
    for ns in list_netns(name):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"{NETNS_RUN}/{ns}").st_ino)
    return inodes


def remove_network(name: str) -> None:
    """Delete this lab's namespaces (their eth0 ends go with them), veths and bridge."""
    lines = [f"netns delete {ns}" for ns in list_netns(name)]
    if lines:  # deleting a namespace deletes its veth pair too
        run(["ip", "-force", "-batch", "-"], timeout=60, check=False, input="\n".join(lines) + "\n")
    lines = [f"link delete {link}" for link in list_links(name)]
    if lines:
        run(["ip", "-force", "-batch", "-"], timeout=60, check=False, input="\n".join(lines) + "\n")
