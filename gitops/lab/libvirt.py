"""This machine's side of Vagrant VMs under libvirt: the daemons, KVM, memory, isolation.

- ``start_libvirt()``: where no service manager runs them, ``virtlogd -d`` and ``libvirtd -d``
  are started by hand (``/run/libvirt`` made first), each only if its pid file names no live
  process; then the socket is waited for.
- ``kvm_usable()``: KVM is used only if the CPU flags say hardware virtualisation (vmx/svm),
  ``/dev/kvm`` opens, and QEMU starts a machine under it (a probe): a ``/dev/kvm`` alone is
  not enough (KVM-PVM has one and no vmx/svm). Otherwise QEMU's emulator (TCG, see the box's
  Vagrantfile in ``gitops.lab.vagrantbox``).
- ``isolate()`` / ``unisolate()``: vagrant-libvirt's private networks are NAT networks that turn
  on ip_forward and masquerading. Before an ``up``, forwarding between a VM bridge (``virbr+``)
  and any other interface is dropped in the mangle table, for IPv4 and IPv6 (libvirt never
  touches mangle FORWARD): the VMs reach this machine and each other, nothing else. At
  teardown the rules go and ip_forward is set back to what it was before.
- ``remove_box_volumes()``: the box images vagrant-libvirt uploaded to the pool, left behind
  when the box is replaced; only while no domain is defined (one may be backed by them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from gitops.lab.common import LabError, run

__all__ = [
    "ISOLATION_RULES",
    "LIBVIRT_PACKAGES",
    "domains",
    "forward_state_file",
    "isolate",
    "isolated",
    "kvm_usable",
    "libvirt_running",
    "remove_box_volumes",
    "start_libvirt",
    "unisolate",
]

LIBVIRT_PACKAGES = ("vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients "
                    "libvirt-daemon-driver-qemu dnsmasq-base iptables ebtables qemu-system-x86 "
                    "qemu-utils debootstrap dpkg-dev")
"""What ``apt-get install`` needs on Debian 12 for the VMs (the box is built here too)."""

SOCKET = Path("/run/libvirt/libvirt-sock")
COMMENT = "gitops-vagrant"
ISOLATION_RULES: tuple[tuple[str, ...], ...] = (
    ("-i", "virbr+", "!", "-o", "virbr+"),
    ("-o", "virbr+", "!", "-i", "virbr+"),
)
"""Matches of the mangle FORWARD rules that DROP (each with the comment ``gitops-vagrant``)."""

_FORWARD = {"iptables": Path("/proc/sys/net/ipv4/ip_forward"),
            "ip6tables": Path("/proc/sys/net/ipv6/conf/all/forwarding")}


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").is_dir()


def libvirt_running() -> bool:
    """libvirtd answers on its socket."""
    if shutil.which("virsh") is None or not SOCKET.exists():
        return False
    return run(["virsh", "-c", "qemu:///system", "version"], timeout=30,
               check=False).returncode == 0


def start_libvirt(timeout: float = 60) -> bool:
    """virtlogd and libvirtd running, started here if needed; whether this call started one."""
    if libvirt_running():
        return False
    for tool in ("virtlogd", "libvirtd", "virsh"):
        if shutil.which(tool) is None:
            raise LabError(f"gitops vagrant: {tool} is not installed; install: apt-get "
                           f"install {LIBVIRT_PACKAGES}", exit_code=2)
    Path("/run/libvirt").mkdir(mode=0o755, exist_ok=True)
    started = False
    for daemon in ("virtlogd", "libvirtd"):
        if not _alive(Path(f"/run/{daemon}.pid")):
            run([daemon, "-d"], timeout=60)
            started = True
    deadline = time.monotonic() + timeout
    while not libvirt_running():
        if time.monotonic() > deadline:
            raise LabError("gitops vagrant: libvirtd started but does not answer on "
                           f"{SOCKET}; see /var/log/libvirt/libvirtd.log")
        time.sleep(0.2)
    return started


def kvm_usable() -> bool:
    """Hardware virtualisation that QEMU can really use (flags, device and a probe)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not any(f" {flag}" in flags for flag in ("vmx", "svm")):
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False
    probe = run([qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
                 "-display", "none", "-S", "-qmp", "stdio"],
                input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
                timeout=60, check=False)
    return probe.returncode == 0


def forward_state_file() -> Path:
    """Where ``isolate`` keeps ip_forward's value from before, for ``unisolate``."""
    return Path(os.environ.get("GITOPS_VAGRANT_STATE_DIR") or "/var/lib/gitops/vagrant") / \
        "forwarding.json"


def _rule(tool: str, action: str, match: tuple[str, ...]) -> list[str]:
    return [tool, "-w", "-t", "mangle", action, "FORWARD", *match,
            "-m", "comment", "--comment", COMMENT, "-j", "DROP"]


def _tools() -> list[str]:
    tools = [tool for tool in _FORWARD if shutil.which(tool)]
    if "iptables" not in tools:
        raise LabError("gitops vagrant: iptables is not installed; install: apt-get install "
                       "iptables", exit_code=2)
    return tools


def isolated() -> bool:
    """Every isolation rule is in place."""
    return all(run(_rule(tool, "-C", match), timeout=30, check=False).returncode == 0
               for tool in _tools() for match in ISOLATION_RULES)


def isolate() -> None:
    """The mangle FORWARD drops, for IPv4 and IPv6 (idempotent); ip_forward's value saved."""
    state = forward_state_file()
    if not state.exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        saved = {tool: path.read_text().strip() for tool, path in _FORWARD.items()
                 if path.exists()}
        state.write_text(json.dumps(saved) + "\n")
    for tool in _tools():
        for match in ISOLATION_RULES:
            if run(_rule(tool, "-C", match), timeout=30, check=False).returncode != 0:
                run(_rule(tool, "-I", match), timeout=30)


def unisolate() -> None:
    """The drops removed and forwarding set back to its value before ``isolate``."""
    for tool in _tools():
        for match in ISOLATION_RULES:
            while run(_rule(tool, "-C", match), timeout=30, check=False).returncode == 0:
                run(_rule(tool, "-D", match), timeout=30)
    state = forward_state_file()
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        saved = {}
    for tool, path in _FORWARD.items():
        if path.exists():
            path.write_text(str(saved.get(tool, "0")) + "\n")
    state.unlink(missing_ok=True)


def domains() -> list[str]:
    """Names of the libvirt domains that are running."""
    proc = run(["virsh", "-c", "qemu:///system", "list", "--name"], timeout=30, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def remove_box_volumes(box_name: str) -> list[str]:
    """Delete the pool volumes vagrant-libvirt made from ``box_name``'s image, unless a
    libvirt domain is defined (its disk may be backed by one of them)."""
    defined = run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], timeout=30,
                  check=False)
    if defined.returncode != 0 or defined.stdout.strip():
        return []
    prefix = box_name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    listing = run(["virsh", "-c", "qemu:///system", "vol-list", "--pool", "default"],
                  timeout=30, check=False)
    removed = []
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            run(["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", name],
                timeout=60, check=False)
            removed.append(name)
    return removed
