"""The verify worker's connection to a host: testinfra's SSH backend with every command in
one long-lived remote shell, each command's result kept for the rest of the pass."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import selectors
import shlex
import subprocess
import threading
from typing import Any

from testinfra.backend.base import CommandResult
from testinfra.backend.ssh import SshBackend

__all__ = ["LOGIN_SHELL", "STAT_FORMS", "ShellBackend", "exec_form", "in_shell", "marker_at",
           "split_stat"]

LOGIN_SHELL = "command -v bash >/dev/null && exec bash; exec sh"
"""What the one session per host runs: bash if present, as login shells usually are."""


class ShellBackend(SshBackend):  # type: ignore[misc]  # testinfra ships no type information
    """testinfra's SSH backend, but every command runs in one long-lived remote shell.

    testinfra's own backend starts ``sh -c "ssh ... host cmd"`` per command: with a control
    master that is still a local ssh process and a remote session per command (~35 ms each
    here, and a check runs several commands). This one opens ``ssh host`` once, runs a shell
    there (bash if present, as login shells usually are, else sh) and writes each command
    to it as ``( eval 'cmd' ) </dev/null``, so it runs as with ``sh -c`` (its own subshell,
    no stdin), followed by a random marker with the exit status on stdout and on stderr.
    A dead session is reported as testinfra reports an SSH failure (RuntimeError with a
    CommandResult of exit status 255) and is reopened by the next command.

    One verify reads a host as a snapshot: a command already run on this host in this pass
    (the same text, sudo included) is answered from its first result. testinfra's modules
    repeat their queries (``ss`` for every socket, ``id -u`` for every ``host.user()``), and
    on a busy control host the remote commands, not the checks, are what a verify costs.
    For the same reason the first of testinfra's one-attribute ``stat`` commands for a path
    (``host.file(p).user``, ``.group``, ``.mode``, ...) reads every attribute of ``p`` with one
    ``stat`` and answers the others from it; and a ``test``, ``[`` or other inert builtin
    (``in_shell``) runs in the shell itself, without the subshell.
    """

    NAME = "ssh"

    def __init__(self, hostspec: str, **kwargs: Any) -> None:
        super().__init__(hostspec, **kwargs)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()  # encode() may run a command to learn the encoding
        self._token = f"__gitops_{secrets.token_hex(8)}__".encode()
        self._seen: dict[str, CommandResult] = {}

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        cmd = self.get_command(command, *args)
        with self._lock:
            result = self._seen.get(cmd)
            if result is None and command in STAT_FORMS and len(args) == 1:
                self._stat_all(args[0])
                result = self._seen.get(cmd)
            if result is None:
                result = self._seen[cmd] = self._run(cmd)
            return result

    def _stat_all(self, path: str) -> None:
        """Run one ``stat`` of ``path`` printing every attribute in ``STAT_FORMS`` and keep
        each as the result its own command would give (exit 0, the value and a newline, no
        stderr); nothing when that ``stat`` fails or its output does not split exactly, so
        the command asked runs as it is. The combined command is itself kept: run once."""
        batch = self.get_command(STAT_ALL, path)
        result = self._seen.get(batch)
        if result is None:
            result = self._seen[batch] = self._run(batch)
        values = split_stat(result.rc, result.stdout_bytes, result.stderr_bytes)
        if values is None:
            return
        for form, value in zip(STAT_FORMS, values, strict=True):
            cmd = self.get_command(form, path)
            if cmd not in self._seen:
                self._seen[cmd] = self.result(0, self.encode(cmd), value + b"\n", b"")

    def _start(self) -> subprocess.Popen[bytes]:
        argv = ["ssh", "-F", str(self.ssh_config), "-o", f"ConnectTimeout={self.timeout}"]
        argv += [self.host.name, LOGIN_SHELL]
        return subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _run(self, cmd: str) -> CommandResult:
        token = self._token.decode()
        body = (f"eval {shlex.quote(cmd)}" if in_shell(cmd)
                else f"( eval {shlex.quote(exec_form(cmd))} )")
        script = (
            f"{body} </dev/null; "
            f"printf '\\n%s %d\\n' {token} $?; "
            f"printf '\\n%s\\n' {token} >&2\n"
        )
        out, err = bytearray(), bytearray()
        try:
            self._exchange(self.encode(script), out, err)
        except (OSError, EOFError):
            return self._lost(cmd, bytes(err))
        out_end = marker_at(out, self._token + b" ")
        err_end = marker_at(err, self._token)
        rc = int(out[out_end:].split(b" ", 1)[1])
        return self.result(rc, self.encode(cmd), bytes(out[:out_end]), bytes(err[:err_end]))

    def _exchange(self, script: bytes, out: bytearray, err: bytearray) -> None:
        """Write ``script`` to the remote shell and read its stdout into ``out`` and its
        stderr into ``err`` until both end with the marker; OSError or EOFError when the
        session is gone."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        proc = self._proc
        assert proc.stdin and proc.stdout and proc.stderr
        proc.stdin.write(script)
        proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while marker_at(out, self._token + b" ") < 0 or marker_at(err, self._token) < 0:
                if not sel.get_map():
                    raise EOFError
                for key, _ in sel.select():
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)

    def _lost(self, cmd: str, stderr: bytes) -> CommandResult:
        """The session is gone: raise as testinfra does for an SSH failure (exit 255)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _, rest = proc.communicate(timeout=5)
                stderr += rest
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise RuntimeError(self.result(255, self.encode(cmd), b"", stderr))

    def close(self) -> None:
        """End the remote shell (closing its stdin) and wait for the ssh client to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.communicate(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


_SHELL_WORDS = frozenset(str.split(
    "! { } [[ ]] if then else elif fi case esac for select while until do done function time "
    "coproc : . [ alias bg bind break builtin caller cd command compgen complete compopt "
    "continue declare dirs disown echo enable eval exec exit export false fc fg getopts hash "
    "help history jobs kill let local logout mapfile popd printf pushd pwd read readarray "
    "readonly return set shift shopt source suspend test times trap true type typeset ulimit "
    "umask unalias unset wait"
))


def exec_form(cmd: str) -> str:
    """``exec cmd`` when ``cmd`` is one simple command of an external program, else ``cmd``.

    The subshell each command runs in then becomes the program instead of forking once more
    (about a third of what a short command costs the host). Anything else (pipes, lists,
    redirections, newlines, assignments, shell builtins and keywords) is left as it is.
    """
    if "\n" in cmd:
        return cmd
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: the shell reports it
        return cmd
    if not words or words[0] in _SHELL_WORDS or "=" in words[0]:
        return cmd
    if any(w and set(w) <= set("();<>|&") for w in words):
        return cmd
    return f"exec {cmd}"


_WORD = r"""(?:[A-Za-z0-9_./%+,:=@-]+|'[^'\n]*'|"'")+"""
_INERT = re.compile(rf"(test|echo|printf|true|false|:)(?: +{_WORD})*|\[(?: +{_WORD})* +\]")


def in_shell(cmd: str) -> bool:
    """Whether ``cmd`` may run in the shell itself instead of a subshell: one builtin that
    cannot change the shell (``test``, ``[ ... ]``, ``echo``, ``printf`` without an option,
    ``true``, ``false``, ``:``) whose arguments are plain or single-quoted words (as
    ``shlex.quote`` writes them): no expansion, assignment, redirection, list or newline.

    ``command -v`` and ``type`` are not among them: dash remembers the path they find
    (``hash``). Run as ``eval 'cmd' </dev/null``, such a command prints and exits exactly as
    in ``( eval 'cmd' ) </dev/null`` (the same shell, the same messages), one fork less.
    """
    if not _INERT.fullmatch(cmd):
        return False
    words = shlex.split(cmd)
    return not (words[0] == "printf" and len(words) > 1 and words[1].startswith("-"))


STAT_FORMS = ("stat -Lc %%U %s", "stat -Lc %%G %s", "stat -Lc %%a %s", "stat -Lc %%u %s",
              "stat -Lc %%g %s", "stat -Lc %%s %s", "stat -Lc %%Y %s", "stat -Lc %%i %s")
"""testinfra's one-attribute commands of a GNU ``File`` (``user``, ``group``, ``mode``,
``uid``, ``gid``, ``size``, ``mtime``, ``inode``), each as testinfra sends it."""

STAT_ALL = "stat -L --printf '" + "".join(
    f.split()[2] + "\\n" for f in STAT_FORMS) + "' %s"
"""One GNU ``stat`` printing every attribute of ``STAT_FORMS``, one line each, in order."""


def split_stat(rc: int, stdout: bytes, stderr: bytes) -> list[bytes] | None:
    """The values of ``STAT_ALL``'s result, or None unless it succeeded silently with exactly
    one line per attribute (a name holding a newline would make more)."""
    lines = stdout.split(b"\n")
    if rc != 0 or stderr or len(lines) != len(STAT_FORMS) + 1 or lines[-1]:
        return None
    return lines[:-1]


def marker_at(buf: bytearray, token: bytes) -> int:
    """Where the output before ``\\n<token>...\\n`` ends, or -1 if it is not all there yet."""
    at = buf.find(b"\n" + token)
    if at < 0 or buf.find(b"\n", at + 1 + len(token)) < 0:
        return -1
    return at
