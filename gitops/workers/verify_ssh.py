"""The verify worker's ssh_config: one ``Host`` block per host under a safe alias, an OpenSSH
control master per host when asked, and no field written that could change its meaning."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from gitops.model import DeclaredHost, check_address, check_path, check_user, unsafe_reason

__all__ = ["ALIVE_COUNT", "ALIVE_INTERVAL_S", "CONTROL_PERSIST_S", "ssh_alias", "ssh_config_text",
           "unsafe_field"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*|_host-[0-9]+")


def ssh_alias(name: str, index: int) -> str:
    """The ``Host`` alias for a host: its name when that is a plain token, else ``_host-N``.

    The fallback starts with ``_``, which no plain-token name does, so aliases never collide.
    """
    return name if _SAFE_NAME.fullmatch(name) else f"_host-{index}"


def _config_value(value: str) -> str:
    """A path as ssh_config reads it: ``%`` escaped (tokens), quoted if it has spaces.
    ValueError for a path no quoting makes safe (a quote, a newline, a control character)."""
    if '"' in value or unsafe_reason(value):
        raise ValueError("a path with a quote or a control character cannot be written to "
                         "an ssh_config")
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def unsafe_field(h: DeclaredHost) -> str | None:
    """The field of ``h`` that must not be written to an ssh_config (or None): the second
    line of defence behind ``gitops.pipeline.load``, which refuses such values at validate time."""
    checks: tuple[tuple[str, str | None, Callable[[str], str]], ...] = (
        ("address", h.address, check_address),
        ("ssh.user", h.ssh.user, check_user),
        ("ssh.key_file", h.ssh.key_file, check_path),
        ("ssh.known_hosts_file", h.ssh.known_hosts_file, check_path),
    )
    for field, value, check in checks:
        try:
            if value is not None:
                check(value)
        except ValueError:
            return field
    if not 1 <= h.ssh.port <= 65535:
        return "ssh.port"
    return None


CONTROL_PERSIST_S = 900
"""How long an idle control master stays up (the next drift check usually comes sooner)."""
ALIVE_INTERVAL_S, ALIVE_COUNT = 5, 2
"""A master whose host stopped answering exits after about 10 s, like a connect timeout."""


def ssh_config_text(hosts: Mapping[str, DeclaredHost], control_dir: str | None = None) -> str:
    """An ssh_config with one ``Host`` block per alias; with ``control_dir``, a control
    master per host (socket named by ssh's ``%C`` hash of host, port and user) that stays."""
    blocks = []
    for alias, h in hosts.items():
        field = unsafe_field(h) or (None if _ALIAS.fullmatch(alias) else "name")
        if field is not None:
            raise ValueError(f"host {h.name!r}: {field} is not safe to write to an ssh_config")
        lines = [
            f"Host {alias}",
            f"  HostName {h.address}",
            f"  Port {h.ssh.port}",
            f"  User {h.ssh.user}",
        ]
        if h.ssh.key_file:
            lines += [f"  IdentityFile {_config_value(h.ssh.key_file)}", "  IdentitiesOnly yes"]
        if h.ssh.known_hosts_file:
            lines.append(f"  UserKnownHostsFile {_config_value(h.ssh.known_hosts_file)}")
        lines += [
            f"  StrictHostKeyChecking {h.ssh.host_key_checking}",
            f"  ConnectTimeout {h.ssh.connect_timeout}",
            "  BatchMode yes",
            "  LogLevel ERROR",
        ]
        if control_dir is not None:
            lines += [
                "  ControlMaster auto",
                f"  ControlPath {_config_value(control_dir)}/%C",
                f"  ControlPersist {CONTROL_PERSIST_S}",
                f"  ServerAliveInterval {ALIVE_INTERVAL_S}",
                f"  ServerAliveCountMax {ALIVE_COUNT}",
            ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
