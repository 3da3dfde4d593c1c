"""The one rule for what the controller's own commands run as on a host: root.

Deploys say how each of their operations runs (pyinfra's ``_sudo`` and the like). The
commands gitops itself sends (the guard's preflight, arm, save, heartbeat, settle and
confirm, ``gitops.pipeline.guard``) must run as root whoever logs in: the guard's folder is
root's. ``as_root(host, command)`` is the only way they are sent, over pyinfra's connection
(``workers/apply_guards.py``) or OpenSSH's client (``guard.confirm``):

- a host that logs in as ``root`` runs the command as it is;
- a host declared with ``_sudo: true`` (its vars) and another user runs it through
  ``sudo -n sh -c '...'`` (``-n``: never a password prompt, which would hang), unless the
  shell is already root (inside a pyinfra operation that itself runs with ``_sudo``);
- a host with another user and no ``_sudo`` runs it as that user, as its deploys run.

A sudo that wants a password fails at once with ``sudo: a password is required``;
``sudo_failure`` turns that into one line naming the host and what to do.
"""

from __future__ import annotations

import shlex

from gitops.model import DeclaredHost

__all__ = ["SUDO_PROMPT", "as_root", "needs_sudo", "sudo_failure", "wrap"]

SUDO_PROMPT = "a password is required"
"""What ``sudo -n`` prints (``sudo: a password is required``) when it would ask for one."""
_PROMPTS = (SUDO_PROMPT, "interactive authentication is required")
"""The same from sudo and from sudo-rs."""


def needs_sudo(user: str, sudo: object) -> bool:
    """Whether a login as ``user`` with the host variable ``_sudo`` = ``sudo`` goes through
    sudo to be root."""
    return bool(sudo) and user != "root"


def wrap(command: str, *, sudo: bool) -> str:
    """``command`` as root: as it is, or through ``sudo -n sh -c`` when ``sudo`` (skipped
    when the shell already runs as root)."""
    if not sudo:
        return command
    return (f'set --; [ "$(id -u)" = 0 ] || set -- sudo -n; '
            f'"$@" sh -c {shlex.quote(command)}')


def as_root(host: DeclaredHost, command: str) -> str:
    """``command`` as root on ``host`` by the rule above: every remote command gitops sends
    of its own goes through here."""
    return wrap(command, sudo=needs_sudo(host.ssh.user, host.vars.get("_sudo")))


def sudo_failure(host: str, user: str, output: str) -> str | None:
    """One line saying what to do when ``output`` (a command's stderr) shows sudo asking
    ``user`` for a password on ``host``; None when it does not."""
    if not any(p in output for p in _PROMPTS):
        return None
    return (f"host {host}: sudo asks {user} for a password (sudo: {SUDO_PROMPT}); gitops "
            f"runs root's commands with `sudo -n`: give {user} password-less sudo there "
            f"(`{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/)")
