"""A lab login as a non-root user with password-less sudo, as real hosts are reached.

Lab hosts log in as root (the lab itself needs it). ``add_user`` adds, over SSH as root, a
user on every host of a running lab with the lab's key in its ``authorized_keys`` and a
``NOPASSWD`` line in ``/etc/sudoers.d/`` (the hosts are volatile: it lasts until the lab is
down); an inventory then logs in as that user with ``_sudo: true`` (``gitops lab up
--sudo-user USER`` writes the lab's ``inventory.yml`` so). ``password=True`` gives the
user sudo that asks for a password instead, to see what a misconfigured host does.
Called by ``gitops.lab.up`` and the tests' ``lab`` fixture.
"""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor

from gitops.lab.common import LabError, LabInfo, run

__all__ = ["USER", "add_user", "check_user", "user_script"]

USER = "labsudo"
"""The tests' sudo user: not the sample's ``ops`` (its ``base`` service owns that account's
keys and would remove the lab's)."""

_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")


def check_user(user: str) -> str:
    """``user`` if it is a plain account name other than root; LabError (exit 2) if not."""
    if not _NAME.fullmatch(user) or user == "root":
        raise LabError(f"--sudo-user {user!r}: an account name ([a-z_][a-z0-9_-]*, "
                       "at most 31 characters), not root", exit_code=2)
    return user


def user_script(user: str, *, password: bool = False) -> str:
    """The shell text (run as root on a host) that makes ``user`` log in with the lab's key
    (root's ``authorized_keys``) and use sudo; idempotent."""
    u = shlex.quote(check_user(user))
    rule = f"{user} ALL=(ALL) ALL" if password else f"{user} ALL=(ALL) NOPASSWD: ALL"
    return (f"set -e; id -u {u} >/dev/null 2>&1 || useradd -m -s /bin/sh {u}; "
            f"h=$(getent passwd {u} | cut -d: -f6); "
            f"install -d -m 700 -o {u} -g {u} \"$h/.ssh\"; "
            f"install -m 600 -o {u} -g {u} /root/.ssh/authorized_keys \"$h/.ssh/authorized_keys\"; "
            f"printf '%s\\n' {shlex.quote(rule)} > /etc/sudoers.d/80-gitops-lab-{user}; "
            f"chmod 440 /etc/sudoers.d/80-gitops-lab-{user}; "
            f"visudo -cqf /etc/sudoers.d/80-gitops-lab-{user}")


def add_user(info: LabInfo, user: str = USER, *, password: bool = False,
             hosts: tuple[str, ...] | None = None) -> None:
    """Make ``user`` (password-less sudo unless ``password``) on ``hosts`` (default: every
    host) of the running lab ``info``; LabError naming the host when one fails."""
    script = user_script(user, password=password)
    names = list(hosts or [h.name for h in info.hosts])

    def one(host: str) -> None:
        try:
            run(["ssh", "-F", str(info.ssh_config), "-o", "BatchMode=yes", host, script],
                timeout=60)
        except LabError as exc:
            raise LabError(f"lab {info.name}: {host}: could not add the sudo user "
                           f"{user}: {exc}") from None

    with ThreadPoolExecutor(max_workers=min(len(names), 16) or 1) as pool:
        list(pool.map(one, names))
