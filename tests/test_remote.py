"""The one rule for what gitops's own commands run as on a host (``gitops.pipeline.remote``),
and that no remote command of its own escapes it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from builders import PROJECT

from gitops.model import DeclaredHost, ResolvedSSH
from gitops.pipeline import guard, remote


def _host(user: str, **variables: object) -> DeclaredHost:
    ssh = ResolvedSSH(user=user, port=22, key_file=None, known_hosts_file=None,
                      host_key_checking="yes", connect_timeout=10)
    return DeclaredHost(name="web-1", address="192.0.2.10", groups=(), ssh=ssh,
                        vars=dict(variables), services={})


@pytest.mark.parametrize(("user", "variables", "expected"), [
    ("root", {}, "echo hi"),
    ("root", {"_sudo": True}, "echo hi"),  # root needs no sudo
    ("ops", {}, "echo hi"),  # no _sudo: as the deploys run, as that user
    ("ops", {"_sudo": False}, "echo hi"),
    ("ops", {"_sudo": True},
     "set --; [ \"$(id -u)\" = 0 ] || set -- sudo -n; \"$@\" sh -c 'echo hi'"),
    ("vagrant", {"_sudo": "yes"},
     "set --; [ \"$(id -u)\" = 0 ] || set -- sudo -n; \"$@\" sh -c 'echo hi'"),
])
def test_as_root_by_login(user: str, variables: dict[str, object], expected: str) -> None:
    """A root login runs the command as it is; a user declared with _sudo goes through
    ``sudo -n sh -c`` (never a prompt); a user without _sudo runs it as that user."""
    assert remote.as_root(_host(user, **variables), "echo hi") == expected


@pytest.mark.parametrize(("stderr", "expected"), [
    ("sudo: a password is required\n",
     "host web-1: sudo asks ops for a password (sudo: a password is required); gitops runs "
     "root's commands with `sudo -n`: give ops password-less sudo there "
     "(`ops ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/)"),
    ("sudo: unable to resolve host web-1\nsudo: a password is required\n",
     "host web-1: sudo asks ops for a password (sudo: a password is required); gitops runs "
     "root's commands with `sudo -n`: give ops password-less sudo there "
     "(`ops ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/)"),
    ("sudo-rs: interactive authentication is required\n",
     "host web-1: sudo asks ops for a password (sudo: a password is required); gitops runs "
     "root's commands with `sudo -n`: give ops password-less sudo there "
     "(`ops ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/)"),
    ("sh: 1: cannot create /var/lib/gitops-guard/lock: Permission denied\n", None),
    ("", None),
])
def test_a_sudo_asking_for_a_password_is_one_line_saying_what_to_do(
        stderr: str, expected: str | None) -> None:
    """sudo's "a password is required" (or sudo-rs's) becomes one line naming the host, the
    user and the NOPASSWD rule to add; anything else is not called a sudo problem."""
    assert remote.sudo_failure("web-1", "ops", stderr) == expected


@pytest.mark.parametrize("command", [
    guard.preflight_command(),
    guard.arm_command("ab'c", 30),
    guard.confirm_command("tok en"),
    guard.save_command([(1, "/etc/it's here")]),
])
def test_sudo_receives_the_command_exactly(command: str) -> None:
    """The text sudo's ``sh -c`` receives is the command itself, byte for byte (quotes,
    newlines and ``$`` kept): printed in its place by a real shell."""
    wrapped = remote.wrap(command, sudo=True)
    shown = wrapped.replace('"$@" sh -c ', "printf %s ", 1)
    assert shown != wrapped
    assert subprocess.run(["sh", "-c", shown], capture_output=True, text=True,
                          check=True).stdout == command


def test_already_root_the_command_runs_without_sudo() -> None:
    """Run by root (as inside a pyinfra operation with ``_sudo``), the wrapped command runs
    as it is, without sudo, with the same output."""
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("runs as root only (the test's machine runs its suite as root)")
    command = "printf '%s|' \"$0\" 'a b' \"it's\"; echo"
    env = {"PATH": "/nonexistent:/usr/bin:/bin"}  # and no sudo is looked for
    wrapped = subprocess.run(["sh", "-c", remote.wrap(command, sudo=True)], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert wrapped == subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                     check=True).stdout == "sh|a b|it's|\n"


# -- no remote command of gitops's own escapes the rule ---------------------------------

_BUILDERS = {name for name in guard.__all__ if name.endswith("_command")}
"""The guard's builders of remote shell text."""
_WRAPPERS = {"as_root", "_root"}
"""``remote.as_root`` and the apply worker's ``_Guards._root`` (which calls it)."""


def _called(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else None
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _functions() -> list[tuple[Path, ast.FunctionDef]]:
    found = []
    for path in sorted((PROJECT / "gitops").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found += [(path, n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    return found


def test_every_guard_command_sent_goes_through_as_root() -> None:
    """Outside ``guard.py`` itself, every function that builds a guard command (preflight,
    arm, save, unit, extend, confirm) also wraps it with ``as_root``: no guard command is
    sent as the plain login user."""
    users = []
    for path, fn in _functions():
        if path.name == "guard.py" and path.parent.name == "pipeline" and \
                fn.name in _BUILDERS | {"revert_script"}:
            continue
        calls = {_called(n) for n in ast.walk(fn) if isinstance(n, ast.Call)}
        if calls & _BUILDERS:
            users.append(f"{path.relative_to(PROJECT)}:{fn.name}")
            assert calls & _WRAPPERS, (f"{path.relative_to(PROJECT)}:{fn.lineno} {fn.name} "
                                       "sends a guard command without remote.as_root")
    # the rule is checked where the commands are sent, not vacuously
    assert {"gitops/pipeline/guard.py:confirm",
            "gitops/workers/apply_guards.py:_before_change",
            "gitops/workers/apply_guards.py:_beat", "gitops/workers/apply_guards.py:one"
            } <= set(users), users


def test_the_one_ssh_client_sends_only_wrapped_commands() -> None:
    """``guard.ssh_argv`` (OpenSSH's client, outside pyinfra) is followed by a command made by
    ``as_root`` wherever it is used, and is the only such client of the pipeline."""
    uses = 0
    for path in sorted((PROJECT / "gitops").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.List) and any(
                    isinstance(e, ast.Starred) and _called(e.value) == "ssh_argv"
                    for e in node.elts):
                uses += 1
                rest = node.elts[1:]
                assert rest and all(_called(e) in _WRAPPERS for e in rest), \
                    f"{path.relative_to(PROJECT)}:{node.lineno}: a remote command not as_root"
    assert uses >= 1


def test_every_command_of_the_guards_in_the_worker_is_wrapped() -> None:
    """Each ``run_shell_command``/``run_aside`` the apply worker's guard sends is a
    ``StringCommand`` of ``_root(...)`` (or of a name bound to one)."""
    path = PROJECT / "gitops/workers/apply_guards.py"
    tree = ast.parse(path.read_text())
    guards = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Guards")
    bound = {t.id for n in ast.walk(guards) if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)
             and _called(n.value) == "StringCommand"
             and any(_called(a) in _WRAPPERS for a in getattr(n.value, "args", []))}
    sends = [n for n in ast.walk(guards) if isinstance(n, ast.Call)
             and _called(n) in ("run_shell_command", "aside")]
    assert len(sends) >= 3
    for call in sends:
        arg = call.args[0]
        ok = (isinstance(arg, ast.Name) and arg.id in bound) or (
            _called(arg) == "StringCommand" and _called(arg.args[0]) in _WRAPPERS)  # type: ignore[attr-defined]
        assert ok, f"apply_guards.py:{call.lineno}: a guard command not sent through _root"
