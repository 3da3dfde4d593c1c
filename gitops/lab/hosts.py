"""Lab host processes: start ``systemd-nspawn`` per host, find and stop the lab's processes.

Called by ``gitops.lab`` (``up``/``down``/``status``). Processes are found by pid files and by a
scan of /proc for this lab's exact markers (``--machine=<name>-lab-<i>`` for nspawn,
``--lab=<name>`` for the mirror, the lab's ControlPath for SSH masters), so a ``kill -9`` of
``gitops lab up`` is recovered and no other lab's process is ever matched.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from gitops.lab.common import (
    cmdlines,
    host_name,
    machine_name,
    mirror_marker,
    netns_name,
    start_detached,
)
from gitops.lab.image import MIRROR_SOURCES

__all__ = [
    "INOTIFY_INSTANCES",
    "MIN_INOTIFY_INSTANCES",
    "alive",
    "any_nspawn_running",
    "cgroup_roots",
    "find_helpers",
    "find_nspawn",
    "is_lab_process",
    "make_cgroups",
    "nspawn_args",
    "pid_from_file",
    "pids_in_netns",
    "raise_limits",
    "remove_cgroups",
    "signal_all",
    "start_host",
    "stop",
    "wait_gone",
]


def nspawn_args(
    name: str, index: int, rootfs: Path, authorized_keys: Path, sources: Path
) -> list[str]:
    """The command that boots host ``lab-<index>`` from the shared read-only base image."""
    return [
        "systemd-nspawn",
        f"--directory={rootfs}",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--volatile=overlay",
        "--console=passive",
        f"--network-namespace-path=/run/netns/{netns_name(name, index)}",
        f"--machine={machine_name(name, index)}",
        f"--hostname={host_name(index)}",
        f"--bind-ro={authorized_keys}:/root/.ssh/authorized_keys",
        f"--bind-ro={sources}:/{MIRROR_SOURCES}",
    ]


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 8192
"""Each host's systemd takes several inotify instances; the kernel default (128) stops the
boot of about the 30th host on the machine ("Failed to allocate manager object")."""


def raise_limits() -> None:
    """Raise fs.inotify.max_user_instances to at least 8192 (never lowers it)."""
    try:
        value = int(INOTIFY_INSTANCES.read_text())
        if value < MIN_INOTIFY_INSTANCES:
            INOTIFY_INSTANCES.write_text(f"{MIN_INOTIFY_INSTANCES}\n")
    except (OSError, ValueError):
        pass


def cgroup_roots() -> list[Path]:
    """Mount points of the cgroup hierarchies systemd uses (cgroup2, v1 ``name=systemd``)."""
    roots = []
    with open("/proc/mounts") as fh:
        for line in fh:
            _dev, point, fstype, opts = line.split()[:4]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(",")):
                roots.append(Path(point))
    return roots


def make_cgroups(machine: str) -> list[Path]:
    """A cgroup per host in each hierarchy: without it (no systemd on the machine, so nspawn
    keeps the caller's cgroup) every host's systemd would share ``/payload`` and trip over
    the others' units ("Failed to attach to cgroup")."""
    made = []
    for root in cgroup_roots():
        path = root / machine
        path.mkdir(exist_ok=True)
        made.append(path)
    return made


def remove_cgroups(name: str) -> None:
    """Remove the (by now empty) cgroups of lab ``name``'s hosts, deepest first."""
    pattern = re.compile(rf"^{re.escape(name)}-lab-\d+$")
    for root in cgroup_roots():
        try:
            tops = [root / e for e in os.listdir(root) if pattern.match(e)]
        except OSError:
            continue
        for top in tops:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def start_host(
    args: list[str], log: Path, pid_file: Path, cgroups: list[Path]
) -> subprocess.Popen[bytes]:
    """Start one nspawn in its own session and cgroups (it outlives the CLI), stdio to ``log``."""

    def enter_cgroups() -> None:
        for cg in cgroups:
            (cg / "cgroup.procs").write_text("0\n")

    return start_detached(args, log, pid_file, enter_cgroups)  # main thread only


def find_nspawn(name: str) -> dict[int, int]:
    """pid -> host index of every running nspawn of lab ``name``."""
    pattern = re.compile(rf"^--machine={re.escape(name)}-lab-(\d+)$")
    found: dict[int, int] = {}
    for pid, argv in cmdlines().items():
        if os.path.basename(argv[0]) != "systemd-nspawn":
            continue
        for arg in argv[1:]:
            m = pattern.match(arg)
            if m:
                found[pid] = int(m.group(1))
    return found


def any_nspawn_running() -> bool:
    """Whether any systemd-nspawn at all runs on this machine (any lab, anyone's)."""
    return any(os.path.basename(a[0]) == "systemd-nspawn" for a in cmdlines().values())


def find_helpers(name: str, state_dir: Path) -> list[int]:
    """The lab's mirror server and its SSH control masters."""
    marker = mirror_marker(name)
    control = f"ssh: {state_dir}/cm-"
    pids = []
    for pid, argv in cmdlines().items():
        if ("gitops.lab.mirror" in argv and marker in argv) or argv[0].startswith(control):
            pids.append(pid)
    return pids


def is_lab_process(pid: int, name: str, state_dir: Path) -> bool:
    """Whether ``pid`` is (still) one of lab ``name``'s nspawns, its mirror or SSH masters."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv = raw.rstrip(b"\0").decode(errors="replace").split("\0")
    nspawn = re.compile(rf"^--machine={re.escape(name)}-lab-\d+$")
    return (
        (os.path.basename(argv[0]) == "systemd-nspawn" and any(nspawn.match(a) for a in argv))
        or ("gitops.lab.mirror" in argv and mirror_marker(name) in argv)
        or argv[0].startswith(f"ssh: {state_dir}/cm-")
    )


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of ``inodes`` (one scan of /proc)."""
    if not inodes:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    pids.append(int(entry))
    return pids


def pid_from_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own zombies are reaped)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid is gone or ``timeout``; return those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def stop(pids: list[int], timeout: float = 4) -> None:
    """SIGTERM (a host halts cleanly in ~0.2 s), then SIGKILL what is left."""
    signal_all(pids, signal.SIGTERM)
    left = wait_gone(pids, timeout)
    if left:
        signal_all(left, signal.SIGKILL)
        wait_gone(left, 2)
