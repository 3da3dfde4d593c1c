"""Shared helpers of the lab: the error type, names, paths, subnets and subprocess calls.

Every other ``gitops.lab`` module imports from here; nothing here creates resources.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_SUBNET",
    "INSTALL_HINT",
    "LAB_SUPERNET",
    "MAX_HOSTS",
    "MIRROR_PORT",
    "REQUIRED_TOOLS",
    "HostStatus",
    "LabBusy",
    "LabError",
    "LabHost",
    "LabInfo",
    "bridge_address",
    "bridge_name",
    "cache_dir",
    "check_prerequisites",
    "cmdlines",
    "default_subnet",
    "host_address",
    "host_name",
    "lab_parent",
    "machine_name",
    "mirror_marker",
    "missing_prerequisites",
    "netns_name",
    "netns_re",
    "parse_subnet",
    "prerequisites_message",
    "resolve_name",
    "run",
    "start_detached",
    "state_dir",
    "veth_name",
    "veth_re",
]

DEFAULT_NAME = "gitops"
DEFAULT_SUBNET = "10.213.0.0/24"
LAB_SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
MAX_HOSTS = 200
MIRROR_PORT = 9080
INSTALL_HINT = "apt-get install debootstrap systemd-container dpkg-dev"
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "dpkg-scanpackages", "ip", "ssh", "ssh-keygen")

_EXTRA_PACKAGES = {"ip": "iproute2", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
"""Packages of required tools that are not in INSTALL_HINT (present on most machines)."""

_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")


class LabError(Exception):
    """A lab operation failed; the message is one line meant for a human.

    ``exit_code`` is 2 for missing tools, not root or bad usage, 1 for runtime failures.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LabBusy(LabError):
    """Another process runs an ``up`` or ``down`` of the lab."""


@dataclass(frozen=True)
class LabHost:
    """One lab host: its SSH/inventory name (``lab-i``) and its address."""

    name: str
    address: str


@dataclass(frozen=True)
class LabInfo:
    """A lab that is up: where its files are and which hosts it has."""

    name: str
    state_dir: Path
    ssh_config: Path
    inventory: Path
    key_file: Path
    mirror_url: str
    hosts: tuple[LabHost, ...]


@dataclass(frozen=True)
class HostStatus:
    """Whether one host's container process runs and whether it answers SSH."""

    name: str
    address: str
    running: bool
    ssh: bool


def resolve_name(name: str | None) -> str:
    """The lab name: ``name``, else ``$GITOPS_LAB_NAME``, else ``gitops``; validated."""
    value = name if name is not None else os.environ.get("GITOPS_LAB_NAME") or DEFAULT_NAME
    if not _NAME_RE.match(value):
        where = " (GITOPS_LAB_NAME)" if name is None else ""
        raise LabError(
            f"invalid lab name {value!r}{where}: use 1 to 8 characters of [a-z0-9]", exit_code=2
        )
    return value


def default_subnet(name: str, probe: int = 0) -> ipaddress.IPv4Network:
    """The lab's /24: 10.213.0.0/24 for ``gitops``, else 10.213.X.0/24 with X in 1..254 from
    a hash of the name; ``probe`` n gives the n-th next X (used when X is taken by another lab).
    """
    if name == DEFAULT_NAME:
        return ipaddress.IPv4Network(DEFAULT_SUBNET)
    start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    octet = 1 + (start + probe) % 254
    return ipaddress.IPv4Network(f"10.213.{octet}.0/24")


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A ``--subnet`` value: a /24 inside 10.213.0.0/16, else a usage error."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise LabError(f"invalid subnet {text!r}: {exc}", exit_code=2) from exc
    if net.prefixlen != 24 or not net.subnet_of(LAB_SUPERNET):
        raise LabError(f"invalid subnet {text!r}: must be a /24 inside {LAB_SUPERNET}", 2)
    return net


def bridge_address(net: ipaddress.IPv4Network) -> str:
    """The bridge (and mirror) address: the subnet's .1."""
    return str(net.network_address + 1)


def host_address(net: ipaddress.IPv4Network, index: int) -> str:
    """Host ``lab-<index>`` (1-based) lives at .(10+index)."""
    return str(net.network_address + 10 + index)


def host_name(index: int) -> str:
    return f"lab-{index}"


# Resource names: the lab name, then "-", then a fixed tag. Names are [a-z0-9] only, so
# "gitops-..." can never match resources of a lab named "gitopsx" ("gitopsx-...").
def bridge_name(name: str) -> str:
    return f"{name}-br"


def veth_name(name: str, index: int) -> str:
    return f"{name}-v{index}"


def netns_name(name: str, index: int) -> str:
    return f"{name}-lab-{index}"


def machine_name(name: str, index: int) -> str:
    return f"{name}-lab-{index}"


def netns_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-lab-(\d+)$")


def veth_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-v(\d+)$")


def mirror_marker(name: str) -> str:
    """The argument that marks this lab's mirror process in /proc/<pid>/cmdline."""
    return f"--lab={name}"


def lab_parent() -> Path:
    return Path(os.environ.get("GITOPS_LAB_DIR") or "/var/lib/gitops/lab")


def state_dir(name: str) -> Path:
    return lab_parent() / name


def cache_dir() -> Path:
    return Path(os.environ.get("GITOPS_CACHE_DIR") or "/var/cache/gitops")


def missing_prerequisites(tools: tuple[str, ...] = REQUIRED_TOOLS) -> list[str]:
    """What stops the lab from running here: 'root' and/or missing tool names."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in tools if shutil.which(tool) is None]
    return missing


def prerequisites_message(missing: list[str]) -> str:
    """One line saying what is missing and what to install."""
    parts = []
    if "root" in missing:
        parts.append("must run as root")
    tools = [m for m in missing if m != "root"]
    if tools:
        extra = sorted({_EXTRA_PACKAGES[t] for t in tools if t in _EXTRA_PACKAGES})
        hint = " ".join([INSTALL_HINT, *extra])
        parts.append(f"missing {', '.join(tools)}; install them with: {hint}")
    return "gitops lab: " + "; ".join(parts)


def check_prerequisites(tools: tuple[str, ...] = REQUIRED_TOOLS) -> None:
    """Raise LabError (exit code 2) unless root with every tool in ``tools``."""
    missing = missing_prerequisites(tools)
    if missing:
        raise LabError(prerequisites_message(missing), exit_code=2)


def run(
    args: list[str],
    timeout: float = 30,
    check: bool = True,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (never a shell string) with a timeout; LabError on failure if ``check``."""
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
            env=env,
            input=input or "",  # stdin is a pipe, closed at once when there is no input
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(args)} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise LabError(f"{' '.join(args)} failed: {exc}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(
            f"{' '.join(args)} exited {proc.returncode}: {err[-1] if err else 'no output'}"
        )
    return proc


def start_detached(
    args: list[str], log: Path, pid_file: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a lab process in its own session (it outlives the CLI), stdio appended to ``log``,
    its pid in ``pid_file`` so ``down`` finds it again."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd="/",
            preexec_fn=preexec_fn,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def cmdlines() -> dict[int, list[str]]:
    """pid -> argv of every running process (lab processes are found by their markers)."""
    result: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            result[int(entry)] = raw.rstrip(b"\0").decode(errors="replace").split("\0")
    return result
