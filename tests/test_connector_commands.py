"""The apply worker's rewritten fact commands against pyinfra's, on real files (no host).

``gitops.workers.connector`` runs the ``File`` and hash facts in its one remote shell as
subshell-free commands of its own; here each is run by a real ``sh`` next to pyinfra's
original on the same files, and in a PID namespace of its own to count what it starts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess

import pytest
from pyinfra.facts.files import Directory, File, Link, Md5File, Sha1File, Sha256File, Socket
from pyinfra.facts.server import Users, Which
from pyinfra.facts.systemd import SystemdStatus

from gitops.workers import connector

SHELL = shutil.which("sh") or "/bin/sh"


def _sh(script: str) -> tuple[int, str, str]:
    proc = subprocess.run([SHELL, "-c", script], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def _in_shell(command: str) -> str:
    """How ``ShellConnector`` sends an in-shell fact command."""
    return f"{{ hash -r; {command}\n}}"


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("facts")
    (root / "a file").write_text("hello\n")
    (root / "dir").mkdir()
    (root / "link").symlink_to(root / "a file")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "it's").write_text("quoted\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    return {name: str(root / name) for name in
            ("a file", "dir", "link", "dangling", "it's", "sock", "missing")}


@pytest.mark.parametrize("fact", [File, Link, Directory, Socket])
def test_file_facts_read_as_pyinfras(fact: type, paths: dict[str, str]) -> None:
    """A file, directory, link or socket fact reads the same as pyinfra's, for every kind
    of path (a file, a folder, a link, a dangling link, a socket, a quote, none at all)."""
    for path in paths.values():
        theirs = connector.PYINFRA_FILE_COMMAND(fact(), path).get_raw_value()
        ours = connector._file_command(fact(), path).get_raw_value()
        code, out, err = _sh(theirs)
        assert _sh(_in_shell(ours)) == (code, out, err), path
        assert fact().process(out.splitlines() or [""]) == \
            fact().process(_sh(_in_shell(ours))[1].splitlines() or [""])


@pytest.mark.parametrize("fact", [Sha1File, Sha256File, Md5File])
def test_hash_facts_read_as_pyinfras(fact: type, paths: dict[str, str]) -> None:
    """A file's checksum fact reads the same as pyinfra's (a file, a folder, none at all)."""
    theirs_raw, ours_raw = connector._HASH_COMMANDS[fact]
    assert ours_raw is not None
    for path in paths.values():
        quoted = connector.QuoteString(path)
        theirs = connector.make_formatted_string_command(theirs_raw, quoted).get_raw_value()
        ours = connector.make_formatted_string_command(ours_raw, quoted).get_raw_value()
        assert _sh(_in_shell(ours)) == _sh(theirs), path


def _started(script: str) -> int:
    """Processes ``script`` starts when a shell runs it, counted in a PID namespace."""
    probe = "read a </proc/sys/kernel/ns_last_pid; {script}\nread b </proc/sys/kernel/ns_last_pid"
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", SHELL, "-c",
         probe.format(script=script) + "; echo $((b - a))"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="counting needs a PID namespace of its own (root, unshare)")
def test_file_and_hash_facts_start_one_process(paths: dict[str, str]) -> None:
    """Reading a file's information or checksum starts one process on the host (the
    ``stat`` or ``sha1sum``), where pyinfra's ``sh -c`` with subshells starts four or three."""
    path = paths["a file"]
    file_theirs = connector.PYINFRA_FILE_COMMAND(File(), path).get_raw_value()
    file_ours = connector._file_command(File(), path).get_raw_value()
    quoted = connector.QuoteString(path)
    theirs_raw, ours_raw = connector._HASH_COMMANDS[Sha1File]
    assert ours_raw is not None
    hash_theirs = connector.make_formatted_string_command(theirs_raw, quoted).get_raw_value()
    hash_ours = connector.make_formatted_string_command(ours_raw, quoted).get_raw_value()
    assert _started(f"sh -c {shlex.quote(file_theirs)}") == 4
    assert _started(_in_shell(file_ours)) == 1
    assert _started(f"sh -c {shlex.quote(hash_theirs)}") == 3
    assert _started(_in_shell(hash_ours)) == 1


def test_only_reviewed_facts_run_in_the_shell() -> None:
    """Only the facts whose commands the connector wrote or read run in the shell itself;
    any other (pyinfra's systemd facts, a deploy's own fact) keeps pyinfra's ``sh -c``."""
    previous = (File.command, Users.command, Sha1File._raw_cmd)
    try:
        File.command = connector._file_command  # type: ignore[method-assign]
        Users.command = connector._users_command  # type: ignore[method-assign, assignment]
        Sha1File._raw_cmd = connector._HASH_COMMANDS[Sha1File][1]  # type: ignore[assignment]

        class Own(File):
            def command(self, path: str) -> str:  # type: ignore[override]
                return f"cd / && stat {path}"

        assert all(connector.in_shell(f) for f in (File, Link, Directory, Users, Which,
                                                   Sha1File))
        assert not connector.in_shell(Own)
        assert not connector.in_shell(SystemdStatus)
    finally:
        File.command, Users.command, Sha1File._raw_cmd = previous  # type: ignore[method-assign]
    assert not connector.in_shell(File)  # pyinfra's own command: not reviewed as ours


def test_sudo_env_and_folder_keep_pyinfras_wrapper() -> None:
    """A fact read with sudo, su, an environment, a folder or another shell is wrapped as
    pyinfra wraps it; a timeout alone changes nothing."""
    assert connector.plain({})
    assert connector.plain({"_timeout": 5, "_shell_executable": "sh", "_sudo": False})
    for arguments in ({"_sudo": True}, {"_su_user": "app"}, {"_env": {"A": "1"}},
                      {"_chdir": "/tmp"}, {"_shell_executable": "bash"}, {"_doas": True}):
        assert not connector.plain(arguments), arguments


def test_pyinfras_reviewed_fact_commands_run_in_the_shell() -> None:
    """pyinfra's one-program fact commands (hostname, date, packages, a named unit's state)
    run in the shell itself, a required program's check without its subshell; anything
    else, or a unit name that needs quoting, keeps pyinfra's ``sh -c``."""
    marker = "else echo '##PYINFRA_NOCMD##'; fi"
    systemd = "systemctl show --all --property Id --property SubState ssh.service"
    assert connector.shell_form(object, "uname -n") == "uname -n"
    assert connector.shell_form(object, "date +'%Y-%m-%dT%H:%M:%S%z'") is not None
    assert connector.shell_form(
        object, f"if command -v dpkg >/dev/null 2>&1; then ( dpkg -l ); {marker}"
    ) == f"if command -v dpkg >/dev/null 2>&1; then dpkg -l; {marker}"
    assert connector.shell_form(
        object, f"if command -v systemctl >/dev/null 2>&1; then ( {systemd} ); {marker}"
    ) == f"if command -v systemctl >/dev/null 2>&1; then {systemd}; {marker}"
    for other in ("uname -n; exit 1", "cd / && ls", f"{systemd} 'a b.service'",
                  "systemctl --machine=$(reboot) show --all --property Id --property SubState x",
                  f"if command -v dpkg >/dev/null 2>&1; then ( dpkg -l; exit ); {marker}"):
        assert connector.shell_form(object, other) is None, other


def test_in_shell_wrapper_keeps_output_and_status_apart() -> None:
    """A command run in the shell itself keeps its stdout, stderr and exit status, and a
    missing program fails as it would under ``sh -c`` (exit 127), leaving the shell as it was."""
    script = (f"X=kept; {_in_shell('uname -n')}; echo \"status $?\"; "
              f"{_in_shell('no-such-program-gitops')}; echo \"status $? $X $PWD\"")
    code, out, err = _sh(f"cd / && {script}")
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == os.uname().nodename and lines[1] == "status 0"
    assert lines[2] == "status 127 kept /"
    assert "no-such-program-gitops" in err
