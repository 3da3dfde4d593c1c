"""Host addresses of a running Vagrant environment, for ``settings.source: vagrant``.

An inventory such as ``inventories/vagrant.yml`` names its hosts and groups but leaves out
their addresses: the machines of the repository's ``Vagrantfile`` get them from Vagrant. The
inventory loader (``gitops.model`` / the loader) calls :func:`read_hosts` and fills each
declared host's address, port, user and key file from the result. This is the only
Vagrant-specific code in gitops.

It runs ``vagrant status --machine-readable`` to learn which machines are running, then
``vagrant ssh-config NAME...`` for those (Vagrant stops at the first machine that is not ready
for SSH, so asking only for running ones keeps the others), and parses the OpenSSH-config
output Vagrant documents::

    Host web1
      HostName 192.168.121.17
      User vagrant
      Port 22
      UserKnownHostsFile /dev/null
      StrictHostKeyChecking no
      PasswordAuthentication no
      IdentityFile /path/to/.vagrant/machines/web1/libvirt/private_key
      IdentitiesOnly yes
      LogLevel FATAL

Machines that are declared but not running (or that ``vagrant ssh-config`` left out) are
reported by name with their Vagrant state in :class:`VagrantHostsMissing`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "VagrantError",
    "VagrantHost",
    "VagrantHostsMissing",
    "VagrantNotInstalled",
    "missing_hosts",
    "parse_ssh_config",
    "parse_status",
    "read_hosts",
]

_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*?)\s*$")


class VagrantError(RuntimeError):
    """Vagrant could not be asked, or its answer was unusable."""


class VagrantNotInstalled(VagrantError):
    """The ``vagrant`` executable is not on PATH."""


class VagrantHostsMissing(VagrantError):
    """Hosts declared in the inventory have no running Vagrant machine."""

    def __init__(self, missing: Mapping[str, str]) -> None:
        self.missing = dict(missing)
        details = ", ".join(f"{name} ({state})" for name, state in sorted(self.missing.items()))
        super().__init__(
            f"declared hosts with no running Vagrant machine: {details}; "
            "run `gitops vagrant up` (or `vagrant up`) in the directory of the Vagrantfile"
        )


@dataclass(frozen=True)
class VagrantHost:
    """How to reach one Vagrant machine over SSH, from ``vagrant ssh-config``."""

    name: str
    address: str
    port: int
    user: str
    key_file: str | None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_ssh_config(text: str) -> dict[str, VagrantHost]:
    """Parse ``vagrant ssh-config`` output: one :class:`VagrantHost` per ``Host`` block.

    Keywords are case-insensitive and may be written ``Key value`` or ``Key=value``; values may
    be double-quoted (Vagrant quotes key paths with spaces). Lines before the first ``Host``
    (e.g. Vagrant notices) and comments are ignored. Defaults follow OpenSSH: ``HostName`` is
    the host alias, ``Port`` is 22; ``User`` defaults to ``vagrant``. The first
    ``IdentityFile`` wins, as in OpenSSH's order of trying keys.
    """
    blocks: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        key, value = match.group(1).lower(), _unquote(match.group(2))
        if key == "host":
            blocks.append((value.split()[0] if value else "", {}))
        elif blocks and key not in blocks[-1][1]:
            blocks[-1][1][key] = value

    hosts: dict[str, VagrantHost] = {}
    for name, options in blocks:
        if not name:
            raise VagrantError("`vagrant ssh-config` printed a Host line without a name")
        port_text = options.get("port", "22")
        try:
            port = int(port_text)
        except ValueError:
            raise VagrantError(f"{name}: Port is not a number: {port_text!r}") from None
        if not 1 <= port <= 65535:
            raise VagrantError(f"{name}: Port out of range: {port}")
        key_file = options.get("identityfile")
        hosts[name] = VagrantHost(
            name=name,
            address=options.get("hostname", name),
            port=port,
            user=options.get("user", "vagrant"),
            key_file=os.path.expanduser(key_file) if key_file else None,
        )
    return hosts


def parse_status(text: str) -> dict[str, str]:
    """Machine name -> state (``running``, ``poweroff``, ``not_created``, ...) from
    ``vagrant status --machine-readable`` (lines ``timestamp,target,type,data...``)."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(",", 3)
        if len(parts) == 4 and parts[2] == "state" and parts[1]:
            states[parts[1]] = parts[3]
    return states


def missing_hosts(
    declared: Iterable[str],
    found: Mapping[str, VagrantHost],
    states: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Declared host names that ``found`` lacks -> why (the Vagrant state, or a reason)."""
    states = states or {}
    return {
        name: states.get(name, "not defined in the Vagrantfile" if states else "no ssh-config")
        for name in declared
        if name not in found
    }


def _failure(what: str, folder: Path, proc: subprocess.CompletedProcess[str]) -> VagrantError:
    """One line for a failed vagrant command: libvirt not running is said as such."""
    text = (proc.stderr or proc.stdout).strip()
    if "libvirt-sock" in text or "Error while connecting to Libvirt" in text:
        return VagrantError(
            f"`vagrant {what}` in {folder}: libvirt is not running (no answer on its socket); "
            "start it with `gitops vagrant up` (or `libvirtd -d`)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = " ".join(lines)
    if len(detail) > 400:
        detail = detail[:400] + "..."
    return VagrantError(
        f"`vagrant {what}` failed in {folder} (exit {proc.returncode}): {detail or 'no output'}"
    )


def _run(
    args: list[str], vagrantfile_dir: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_CWD=str(vagrantfile_dir), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1")
    try:
        return subprocess.run(
            args,
            cwd=vagrantfile_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise VagrantError(
            f"`{' '.join(args)}` did not finish within {timeout:g}s in {vagrantfile_dir}"
        ) from None
    except OSError as exc:
        raise VagrantError(f"cannot run `{' '.join(args)}`: {exc}") from exc


def read_hosts(
    vagrantfile_dir: Path,
    timeout: float = 60,
    *,
    expected: Iterable[str] | None = None,
    vagrant: str = "vagrant",
) -> dict[str, VagrantHost]:
    """SSH details of the running machines of the Vagrantfile in ``vagrantfile_dir``.

    ``timeout`` applies to each vagrant command. With ``expected`` (the inventory's host
    names), raises :class:`VagrantHostsMissing` naming every expected host that has no running
    machine. Raises :class:`VagrantNotInstalled` when ``vagrant`` is not on PATH and
    :class:`VagrantError` when it fails.
    """
    if not (vagrantfile_dir / "Vagrantfile").is_file():
        raise VagrantError(f"no Vagrantfile in {vagrantfile_dir} (the repository's folder, "
                           "or GITOPS_VAGRANT_DIR)")

    executable = shutil.which(vagrant)
    if executable is None:
        raise VagrantNotInstalled(
            f"`{vagrant}` is not installed or not on PATH; it is needed for an inventory with "
            "settings.source: vagrant (Debian: apt-get install vagrant vagrant-libvirt; "
            "`gitops vagrant up` then boots the VMs)"
        )
    status = _run([executable, "status", "--machine-readable"], vagrantfile_dir, timeout)
    if status.returncode != 0:
        raise _failure("status", vagrantfile_dir, status)
    states = parse_status(status.stdout)
    running = sorted(name for name, state in states.items() if state == "running")

    hosts: dict[str, VagrantHost] = {}
    if running:
        config = _run([executable, "ssh-config", *running], vagrantfile_dir, timeout)
        hosts = parse_ssh_config(config.stdout)
        if config.returncode != 0 and not hosts:
            raise _failure("ssh-config", vagrantfile_dir, config)
    if expected is not None:
        missing = missing_hosts(expected, hosts, states)
        if missing:
            raise VagrantHostsMissing(missing)
    return hosts
