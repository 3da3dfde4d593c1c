"""Disposable local lab: real Debian 12 hosts (systemd-nspawn in network namespaces).

Public API, used by ``gitops lab`` (``gitops.lab.cli``), the pytest fixture ``lab`` in
``tests/conftest.py`` and ``bench/lab_boot.py``: ``up``, ``down``, ``status``, ``current``,
with ``LabInfo``/``LabHost``/``HostStatus`` and ``LabError``.

Lab NAME prefixes everything it makes with ``NAME-``: bridge ``NAME-br``, veths ``NAME-vI``,
namespaces, machines and cgroups ``NAME-lab-I``; its mirror runs with ``--lab=NAME``. Its
files are in ``$GITOPS_LAB_DIR/NAME/`` (default ``/var/lib/gitops/lab/NAME/``):
``id_ed25519`` (+ ``.pub``), ``authorized_keys``, ``ssh_config``,
``inventory.yml``, ``sources.list`` (the hosts' apt source), ``lab.json`` (present while the
lab is up), ``pids/*.pid``, ``logs/*.log`` and SSH control sockets ``cm-*``. ``down`` removes
the folder; an ``up`` that fails leaves only the key and the logs its message names, until
``down`` (or ``gitops lab prune``, ``gitops.lab.leftovers``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from gitops.lab import hosts as _hosts
from gitops.lab import image as _image
from gitops.lab import locks as _locks
from gitops.lab import mirror as _mirror
from gitops.lab import network as _network
from gitops.lab import packages as _packages
from gitops.lab import sudo as _sudo
from gitops.lab.common import (
    DEFAULT_NAME,
    MAX_HOSTS,
    HostStatus,
    LabBusy,
    LabError,
    LabHost,
    LabInfo,
    bridge_address,
    bridge_name,
    check_prerequisites,
    default_subnet,
    host_address,
    host_name,
    machine_name,
    parse_subnet,
    resolve_name,
    run,
    state_dir,
)
from gitops.lab.image import MIRROR_PACKAGES

__all__ = [
    "MIRROR_PACKAGES",
    "HostStatus",
    "LabBusy",
    "LabError",
    "LabHost",
    "LabInfo",
    "check_socket_path",
    "current",
    "down",
    "inventory_hosts",
    "provide_packages",
    "render_inventory",
    "render_ssh_config",
    "resolve_name",
    "status",
    "up",
]

KEY = "id_ed25519"
BOOT_TIMEOUT = 60.0
"""Seconds for every host to answer SSH, plus one per host."""


def render_ssh_config(state: Path, key_file: Path, hosts: tuple[LabHost, ...]) -> str:
    """The lab's ``ssh_config``: one Host entry per ``lab-i``, shared options for ``lab-*``."""
    lines = [f"# written by gitops lab; ssh -F {state / 'ssh_config'} lab-1", ""]
    for h in hosts:
        lines += [f"Host {h.name}", f"  HostName {h.address}", ""]
    lines += [
        "Host lab-*",
        "  User root",
        f"  IdentityFile {key_file}",
        "  IdentitiesOnly yes",
        "  UserKnownHostsFile /dev/null",
        "  StrictHostKeyChecking no",
        "  LogLevel ERROR",
        "  ConnectTimeout 5",
        "  ControlMaster auto",
        f"  ControlPath {state}/cm-%n",  # the alias (lab-N), shorter than the address
        "  ControlPersist 60s",
        "",
    ]
    return "\n".join(lines)


def render_inventory(key_file: Path, hosts: tuple[LabHost, ...],
                     sudo_user: str | None = None) -> str:
    """The lab's ``inventory.yml`` in the declared-state format (``gitops.model.InventoryFile``):
    logging in as root, or as ``sudo_user`` with ``_sudo: true`` (``gitops.lab.sudo``)."""
    doc: dict[str, object] = {
        "settings": {
            "ssh": {
                "user": sudo_user or "root",
                "key_file": str(key_file),
                "known_hosts_file": "/dev/null",
                "host_key_checking": "no",
            }
        },
        "groups": {"lab": {"vars": {"_sudo": True}} if sudo_user else {}},
        "hosts": {h.name: {"address": h.address, "groups": ["lab"]} for h in hosts},
    }
    return "# written by gitops lab\n" + yaml.safe_dump(doc, sort_keys=False)


@contextlib.contextmanager
def _locked(name: str, wait: float) -> Iterator[None]:
    """Hold the lab's lock (one up/down at a time per name); a killed holder releases it.
    The lock file goes when it is released (``gitops.lab.locks``)."""
    with _locks.held(_locks.lab_lock(name), wait) as mine:
        if not mine:
            raise LabBusy(f"lab {name}: another `gitops lab up/down` is running")
        yield


def _info(name: str, data: dict[str, object]) -> LabInfo:
    state = state_dir(name)
    raw_hosts = data["hosts"]
    assert isinstance(raw_hosts, list)
    return LabInfo(
        name=name,
        state_dir=state,
        ssh_config=state / "ssh_config",
        inventory=state / "inventory.yml",
        key_file=state / KEY,
        mirror_url=str(data["mirror_url"]),
        hosts=tuple(LabHost(str(h["name"]), str(h["address"])) for h in raw_hosts),
    )


def current(name: str | None = None) -> LabInfo | None:
    """The lab ``name`` if it is up (its ``lab.json`` exists), else None."""
    name = resolve_name(name)
    path = state_dir(name) / "lab.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _info(name, data)


def inventory_hosts(name: str | None, names: list[str]) -> dict[str, dict[str, object]]:
    """Addresses and SSH settings of the hosts ``names`` in the running lab ``name``
    (default: $GITOPS_LAB_NAME, else ``gitops``), for an inventory with ``source: lab``.

    Called by the loader (``gitops.pipeline.load``). Raises LabError when that lab is not up or
    lacks
    one of the hosts, saying which command fixes it.
    """
    name = resolve_name(name)
    info = current(name)
    if info is None:
        raise LabError(f"lab {name} is not up: run `gitops lab up --name {name}`"
                       + ("" if os.environ.get("GITOPS_LAB_NAME") else
                          " (or name another lab with GITOPS_LAB_NAME)"))
    have = {h.name: h for h in info.hosts}
    missing = [n for n in names if n not in have]
    if missing:
        wanted = [int(m.group(1)) for n in missing if (m := re.fullmatch(r"lab-(\d+)", n))]
        fix = (f"run `gitops lab down --name {name} && gitops lab up --name {name} "
               f"--hosts {max(wanted)}`" if len(wanted) == len(missing) else
               "lab hosts are named lab-1, lab-2, ...")
        raise LabError(f"lab {name} has {len(info.hosts)} host(s), not {', '.join(missing)}: "
                       + fix)
    ssh = {"user": "root", "key_file": str(info.key_file), "known_hosts_file": "/dev/null",
           "host_key_checking": "no"}
    return {n: {"address": have[n].address, "ssh": dict(ssh)} for n in names}


def provide_packages(name: str | None, packages: list[str]) -> list[str]:
    """Make ``packages`` (an inventory's ``lab.packages``) installable on the hosts of the
    running lab ``name``; return those newly added (see ``gitops.lab.packages``)."""
    if not packages:
        return []
    info = current(name)
    if info is None:
        raise LabError(f"lab {resolve_name(name)} is not up")
    return _packages.provide(info, packages)


def _teardown(name: str) -> None:
    """Remove every process, namespace, veth, bridge and state file of lab ``name``."""
    state = state_dir(name)
    ours = set(_hosts.find_nspawn(name)) | set(_hosts.find_helpers(name, state))
    for pid_file in (state / "pids").glob("*.pid"):
        pid = _hosts.pid_from_file(pid_file)
        # a pid file is trusted only while that pid still carries this lab's marker
        if pid is not None and _hosts.is_lab_process(pid, name, state):
            ours.add(pid)
    # Everything living in the lab's own namespaces is a lab host's: hosts are volatile,
    # so they are killed outright (a clean halt takes seconds per host on a busy machine);
    # nspawn then exits by itself, SIGTERM makes sure of it.
    members = _hosts.pids_in_netns(_network.netns_inodes(name))
    _hosts.signal_all(members, signal.SIGKILL)
    _hosts.stop(sorted(ours), timeout=3)
    _hosts.wait_gone(members, 3)
    _network.remove_network(name)
    _hosts.remove_cgroups(name)
    for fname in ("lab.json", "ssh_config", "inventory.yml", "authorized_keys", "sources.list"):
        (state / fname).unlink(missing_ok=True)
    shutil.rmtree(state / _packages.EXTRA, ignore_errors=True)
    shutil.rmtree(state / "pids", ignore_errors=True)
    for sock in state.glob("cm-*"):
        sock.unlink(missing_ok=True)


def _leftovers(name: str) -> bool:
    return bool(
        _hosts.find_nspawn(name)
        or _network.list_netns(name)
        or _network.list_links(name)
        or _hosts.find_helpers(name, state_dir(name))
    )


def _ssh_rc(ssh_config: Path, host: str, command: list[str], timeout: float) -> int:
    """Exit code of ``command`` on ``host`` over SSH (255: SSH failed; -1: timed out)."""
    try:
        proc = subprocess.run(
            ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", host, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # no pipes: a ControlPersist master would hold them
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1
    return proc.returncode


def _ssh_ok(ssh_config: Path, host: str, timeout: float = 10) -> bool:
    return _ssh_rc(ssh_config, host, ["true"], timeout) == 0


def _wait_host(
    proc: subprocess.Popen[bytes], host: LabHost, ssh_config: Path, log: Path, deadline: float
) -> None:
    """Poll TCP 22, then SSH until ``systemctl is-system-running --wait`` says ``running``."""
    tcp = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise LabError(
                f"host {host.name} ({host.address}) stopped while booting "
                f"(exit {proc.returncode}): {' '.join(tail)}; see {log}"
            )
        if not tcp:
            try:
                with socket.create_connection((host.address, 22), timeout=0.3):
                    tcp = True
            except OSError:
                time.sleep(0.05)
                continue
        left = max(1.0, deadline - time.monotonic())
        rc = _ssh_rc(ssh_config, host.name, ["systemctl", "is-system-running", "--wait"], left)
        if rc == 0:
            return
        if rc not in (255, -1):  # SSH worked, but the boot ended degraded (or worse)
            raise LabError(
                f"host {host.name} ({host.address}) booted but systemd is not 'running'; "
                f"see: ssh -F {ssh_config} {host.name} systemctl --failed"
            )
        time.sleep(0.1)
    raise LabError(
        f"host {host.name} ({host.address}) did not answer SSH with systemd running in time; "
        f"see {log}"
    )


def _ensure_key(state: Path) -> Path:
    key = state / KEY
    if not key.exists() or not key.with_suffix(".pub").exists():
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gitops-lab", "-f", str(key)])
    return key


def _free_subnet(name: str, net: ipaddress.IPv4Network, explicit: bool) -> ipaddress.IPv4Network:
    """``net`` if no other interface has an address in it; for a name-derived subnet of a lab
    other than ``gitops``, else the next free 10.213.X.0/24 (two names can hash alike)."""
    probe = 0
    while True:
        other = _network.subnet_in_use(net, bridge_name(name))
        if other is None:
            return net
        probe += 1
        if explicit or name == DEFAULT_NAME or probe >= 254:
            raise LabError(
                f"subnet {net} of lab {name} is already used by interface {other}; "
                "pick another with --subnet 10.213.X.0/24",
                exit_code=2,
            )
        net = default_subnet(name, probe)


SOCKET_PATH_MAX = 107
"""The longest path of a unix socket (``sun_path`` less its NUL): SSH's control sockets."""


def check_socket_path(state: Path, hosts: int) -> None:
    """Refuse (exit 2) a lab folder too deep for SSH's control sockets, which ssh creates as
    ``<ControlPath>.<16 random characters>`` before renaming them: they would not bind, and
    every host would look as if it never answered SSH."""
    longest = len(f"{state}/cm-lab-{hosts}") + 17
    if longest > SOCKET_PATH_MAX:
        raise LabError(
            f"the lab folder {state.parent} is too deep for SSH's control sockets "
            f"({longest} characters, at most {SOCKET_PATH_MAX}): set GITOPS_LAB_DIR to a "
            "shorter folder", exit_code=2)


def up(
    hosts: int = 3,
    name: str | None = None,
    subnet: str | None = None,
    progress: bool = False,
    sudo_user: str | None = None,
) -> LabInfo:
    """Boot ``hosts`` lab hosts and wait until every one answers SSH; all or nothing. With
    ``sudo_user``, each host also lets that user in with the lab's key and password-less sudo,
    and the lab's ``inventory.yml`` logs in as it with ``_sudo: true`` (``gitops.lab.sudo``).

    Raises LabError: exit code 2 for bad usage/not root/missing tools, 1 if already up or a
    host fails to boot (then everything made so far is removed again).
    """
    name = resolve_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}", exit_code=2)
    net = parse_subnet(subnet) if subnet else default_subnet(name)
    if sudo_user is not None:
        _sudo.check_user(sudo_user)
    check_socket_path(state_dir(name), hosts)
    check_prerequisites()
    with _locked(name, wait=0):
        existing = current(name)
        if existing is not None:
            raise LabError(
                f"lab {name} is already up with {len(existing.hosts)} hosts "
                f"(state in {existing.state_dir}); run `gitops lab down --name {name}` first"
            )
        net = _free_subnet(name, net, explicit=subnet is not None)
        img = _image.ensure_image(progress=progress)
        if _leftovers(name):  # a crashed or killed earlier `up` of this name
            _teardown(name)
        try:
            info = _boot(name, net, hosts, img, explicit=subnet is not None)
            if sudo_user is not None:
                _sudo.add_user(info, sudo_user)
                info.inventory.write_text(render_inventory(info.key_file, info.hosts,
                                                           sudo_user))
            return info
        except BaseException:
            _teardown(name)
            with _network.machine_lock():
                _network.release_mounts(any_lab_left=_hosts.any_nspawn_running())
            raise


def _boot(name: str, net: ipaddress.IPv4Network, count: int, img: Path, *,
          explicit: bool) -> LabInfo:
    state = state_dir(name)
    (state / "pids").mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    key = _ensure_key(state)
    auth = state / "authorized_keys"
    auth.write_text(key.with_suffix(".pub").read_text())
    auth.chmod(0o600)
    ssh_config = state / "ssh_config"

    with _network.machine_lock():  # until the hosts run, a `down` elsewhere keeps the mounts
        # Picked again under the machine lock: a lab of another name starting at the same
        # moment has its bridge up (and its subnet taken) before this one looks.
        net = _free_subnet(name, net, explicit)
        br_addr = bridge_address(net)
        (state / "sources.list").write_text(_mirror.sources_line(br_addr))
        lab_hosts = tuple(LabHost(host_name(i), host_address(net, i))
                          for i in range(1, count + 1))
        ssh_config.write_text(render_ssh_config(state, key, lab_hosts))
        (state / "inventory.yml").write_text(render_inventory(key, lab_hosts))
        _network.prepare_mounts()
        _hosts.raise_limits()
        _network.create_bridge(name, net)
        logs, pids = state / "logs", state / "pids"
        extra = state / _packages.EXTRA  # an inventory's lab.packages (gitops.lab.packages)
        shutil.rmtree(extra, ignore_errors=True)
        extra.mkdir()
        _mirror.start(name, br_addr, img / "mirror", logs / "mirror.log", pids / "mirror.pid",
                      extra=extra)
        _network.create_host_nets(name, net, range(1, count + 1))
        procs = []
        for i in range(1, count + 1):
            args = _hosts.nspawn_args(name, i, img / "rootfs", auth, state / "sources.list")
            log = state / "logs" / f"{host_name(i)}.log"
            log.write_bytes(b"")
            cgroups = _hosts.make_cgroups(machine_name(name, i))
            pid_file = state / "pids" / f"{host_name(i)}.pid"
            procs.append((_hosts.start_host(args, log, pid_file, cgroups), log))

    deadline = time.monotonic() + BOOT_TIMEOUT + count
    with ThreadPoolExecutor(max_workers=min(count, 32)) as pool:
        futures = [
            pool.submit(_wait_host, proc, h, ssh_config, log, deadline)
            for (proc, log), h in zip(procs, lab_hosts, strict=True)
        ]
        for fut in futures:
            fut.result()

    data = {
        "name": name,
        "subnet": str(net),
        "bridge": bridge_name(name),
        "image": str(img),
        "mirror_url": _mirror.url(br_addr),
        "hosts": [{"name": h.name, "address": h.address} for h in lab_hosts],
        "created": time.time(),
    }
    tmp = state / "lab.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, state / "lab.json")
    return _info(name, data)


def down(name: str | None = None, *, wait: float = 30,
         unless: Callable[[], bool] | None = None) -> bool:
    """Remove everything lab ``name`` made (also after a crash), its folder and lock file
    included; a no-op if nothing is left. The shared base image and package cache stay.

    Waits ``wait`` seconds for an ``up``/``down`` of that name (then LabBusy). ``unless``,
    asked once the lab's lock is held, keeps the lab when it returns True; returns whether
    the lab was taken down.
    """
    name = resolve_name(name)
    check_prerequisites(tools=("ip",))
    with _locked(name, wait=wait):
        if unless is not None and unless():
            return False
        _teardown(name)
        with _network.machine_lock():
            _network.release_mounts(any_lab_left=_hosts.any_nspawn_running())
        shutil.rmtree(state_dir(name), ignore_errors=True)  # its key and logs too
    return True


def status(name: str | None = None) -> list[HostStatus]:
    """Each host of lab ``name``: whether its nspawn runs and whether it answers SSH."""
    info = current(name)
    if info is None:
        return []
    running = set(_hosts.find_nspawn(info.name).values())

    def one(index: int, host: LabHost) -> HostStatus:
        up_now = index in running
        ok = up_now and _ssh_ok(info.ssh_config, host.name, timeout=20)  # a loaded machine
        return HostStatus(host.name, host.address, up_now, ok)

    with ThreadPoolExecutor(max_workers=min(len(info.hosts), 32) or 1) as pool:
        return list(pool.map(one, range(1, len(info.hosts) + 1), info.hosts))
