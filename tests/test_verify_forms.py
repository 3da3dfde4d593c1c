"""The verify's remote shell: builtins in the shell itself, one ``stat`` per file, same results.

Each command's result (exit status, stdout, stderr) through ``ShellBackend`` is compared with
what the plain form gives (``( eval 'cmd' ) </dev/null`` and one command each), in a local
bash and a local sh standing in for the host's shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.workers import verify_shell
from gitops.workers.verify_shell import ShellBackend, exec_form, marker_at

SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]
TESTS = ("test -e %s", "test -f %s", "test -d %s", "test -x %s", "test -p %s", "test -S %s",
         "test -L %s")
"""testinfra's ``File`` predicates (``exists``, ``is_file``, ...), as it sends them."""


class LocalShell(ShellBackend):
    """``ShellBackend`` against a local shell standing in for the host's."""

    def __init__(self, shell: str, argv: list[str] | None = None) -> None:
        super().__init__("local-test")
        self._argv = argv or [shell]

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


class PlainShell(LocalShell):
    """The reference: every command in its own subshell, every ``stat`` run as sent."""

    def run(self, command: str, *args: str, **kwargs: Any) -> Any:
        return self._run(self.get_command(command, *args))

    def _run(self, cmd: str) -> Any:
        token = self._token.decode()
        script = (f"( eval {shlex.quote(exec_form(cmd))} ) </dev/null; "
                  f"printf '\\n%s %d\\n' {token} $?; printf '\\n%s\\n' {token} >&2\n")
        out, err = bytearray(), bytearray()
        self._exchange(self.encode(script), out, err)
        out_end, err_end = marker_at(out, self._token + b" "), marker_at(err, self._token)
        rc = int(out[out_end:].split(b" ", 1)[1])
        return self.result(rc, self.encode(cmd), bytes(out[:out_end]), bytes(err[:err_end]))


def _triple(result: Any) -> tuple[int, bytes, bytes]:
    return result.rc, result.stdout_bytes, result.stderr_bytes


def _both(shell: str, calls: list[tuple[str, tuple[str, ...]]]) -> tuple[list[Any], list[Any]]:
    """Each call's result through ``ShellBackend`` and through the plain form, in order."""
    fast, plain = LocalShell(shell), PlainShell(shell)
    try:
        return ([_triple(fast.run(c, *a)) for c, a in calls],
                [_triple(plain.run(c, *a)) for c, a in calls])
    finally:
        fast.close()
        plain.close()


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Files, a directory, links (one broken) and a fifo with awkward names."""
    root = tmp_path_factory.mktemp("odd")
    for name in ("plain", "with space", "it's", "-dash", "new\nline", "ünï", "$(x)", "a;b"):
        (root / name).write_text("x")
    (root / "dir").mkdir(mode=0o750)
    (root / "exe").write_text("#!/bin/sh\n")
    (root / "exe").chmod(0o755)
    (root / "link").symlink_to("plain")
    (root / "broken").symlink_to("nowhere")
    os.mkfifo(root / "fifo")
    yield root


@pytest.mark.parametrize("shell", SHELLS)
def test_file_predicates_and_stats_match_the_plain_form(shell: str, odd_tree: Path) -> None:
    """Every File predicate and attribute of files, links, odd names and missing paths gives
    the exit status, stdout and stderr the plain subshell form gives."""
    names = [*sorted(p.name for p in odd_tree.iterdir()), "missing", "missing dir/x"]
    paths = [str(odd_tree / n) for n in names] + ["-dash", "", "/"]
    calls = [(form, (p,)) for p in paths for form in (*TESTS, *verify_shell.STAT_FORMS)]
    fast, plain = _both(shell, calls)
    assert fast == plain
    assert (0, b"", b"") in fast and any(rc == 1 and err for rc, _, err in fast)


@pytest.mark.parametrize("shell", SHELLS)
def test_builtins_in_the_shell_give_the_same_errors(shell: str) -> None:
    """A builtin run in the shell itself prints and exits as in its subshell, errors too."""
    cmds = ["test a b c", "test -e", "[ -e /etc ]", "[ -e /nope ]", "[ a = b ]", "test 1 -eq x",
            "printf %d x", "printf '%s|%s\\n' a 'b c'", "echo 'a  b' c", "true", "false", ":",
            "echo \"$HOME\"", "test -e /etc; false", "[ -e /etc", "command -v sh"]
    fast, plain = _both(shell, [(c, ()) for c in cmds])
    assert fast == plain
    assert any(rc == 2 and err for rc, _, err in fast)


def test_in_shell_is_strict() -> None:
    """Only an inert builtin with plain or single-quoted words skips the subshell."""
    for cmd in ("test -e /x", "test -e '/a b'", "test -L '-x'\"'\"'y'", "[ -d /x ]", "true",
                "printf %s x", "echo a=b"):
        assert verify_shell.in_shell(cmd), cmd
    for cmd in ("test -e $HOME", "test -e /x; rm /y", "test -e /x >/tmp/o", "test -e *",
                "test -e 'a\nb'", "[ -d /x", "printf -v X y", "printf '-v' X y", "X=1 test",
                "cd /", "command -v sh", "type sh", "read x", "eval test", "test -e `x`",
                "test -e /x &", "test -e /x | cat", "exit 1", "set -e", ". /x", "test ~",
                "test -e \"$x\"", "test -e {a,b}", "echo a # b", "stat /x", "ls"):
        assert not verify_shell.in_shell(cmd), cmd


def test_split_stat_needs_exactly_one_line_per_attribute() -> None:
    """The combined stat's output is used only when it splits exactly."""
    good = b"root\nroot\n644\n0\n0\n12\n1700000000\n42\n"
    assert verify_shell.split_stat(0, good, b"") == good.split(b"\n")[:-1]
    assert verify_shell.split_stat(1, good, b"") is None
    assert verify_shell.split_stat(0, good, b"warning\n") is None
    assert verify_shell.split_stat(0, b"ro\not\n" + good[5:], b"") is None
    assert verify_shell.split_stat(0, good[:-1], b"") is None
    assert verify_shell.split_stat(0, good + b"x\n", b"") is None


_PATH_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(_PATH_CHARS, min_size=1, max_size=12), exists=st.booleans())
def test_any_path_gives_the_plain_result(tmp_path: Path, name: str, exists: bool) -> None:
    """For a generated path (spaces, quotes, newlines, dashes, any script), existing or not,
    the predicates and attributes equal the plain form's."""
    if "/" in name or name in (".", ".."):
        name = name.replace("/", "_") + "_"
    path = tmp_path / name
    if exists and not path.exists():
        path.write_text("x")
    calls = [(form, (str(path),)) for form in (*TESTS, *verify_shell.STAT_FORMS)]
    calls += [(form, (name,)) for form in ("test -e %s", "stat -Lc %%U %s")]
    fast, plain = _both(SHELLS[0], calls)
    assert fast == plain


# --- processes started: counted in a PID namespace of their own ---------------------------

COUNT = "read n </proc/sys/kernel/ns_last_pid; echo $n"


def _started(backend: ShellBackend, calls: list[tuple[str, tuple[str, ...]]]) -> int:
    """Processes the calls start in the backend's shell (its PID namespace's counter, less
    the second reading's own subshell)."""
    before = int(backend._run(COUNT).stdout)
    for cmd, args in calls:
        backend.run(cmd, *args)
    return int(backend._run(COUNT).stdout) - before - 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_a_files_checks_start_one_process(tmp_path: Path) -> None:
    """exists, is_file, user, group, mode, uid of one file start one process (the stat),
    not six; with the plain form each starts one."""
    target = tmp_path / "f"
    target.write_text("x")
    calls = [(f, (str(target),)) for f in ("test -e %s", "test -f %s", "stat -Lc %%U %s",
                                           "stat -Lc %%G %s", "stat -Lc %%a %s",
                                           "stat -Lc %%u %s")]
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "bash"]
    fast, plain = LocalShell("bash", argv), PlainShell("bash", argv)
    try:
        assert (_started(fast, calls), _started(plain, calls)) == (1, 6)
        assert _started(fast, [("stat -Lc %%U %s", (str(tmp_path / "none"),))]) == 2
    finally:
        fast.close()
        plain.close()
