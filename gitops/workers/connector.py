"""The apply worker's connection and fact layer: one remote shell per host, facts read once.

Used by ``gitops.workers.apply_worker`` (``install(inventory)`` before pyinfra connects);
runs only in that worker process. Cuts of what a pyinfra apply costs each host:

- ``ShellConnector``: pyinfra's ``ssh`` connector (paramiko, one SSH connection per host),
  but every command is written to one long-lived ``sh`` on the host instead of opening an
  SSH session per command (each of which costs the host an sshd session process, a login
  shell and pyinfra's ``sh -c``). The shell runs each command as ``{ CMD } </dev/null``
  followed by a random marker with its exit status on stdout and on stderr, as
  ``gitops.workers.verify_shell.ShellBackend`` does for testinfra. File transfers keep
  pyinfra's SFTP channel; a command that needs a terminal or stdin gets its own session.
  One command at a time uses the shell (a lock: another greenlet of the same host waits);
  ``run_aside`` runs a command in a session of its own, beside a long command in the
  shell (the guard's deadline beats, which must not wait behind an install).
- Fact memoization: within one run a host's fact (same fact, same arguments) is read once
  and answered from that first reading until anything could have changed the host: every
  command an operation runs and every file it uploads forgets the host's facts. A no-change
  run reads each fact once; a run that changes something reads again what it reads after.
- Operation order: pyinfra's CLI mode orders operations by the call stack's line numbers,
  read here from the frames instead of ``inspect.stack()`` (``operation_order``); the
  global arguments' type hints are evaluated once, not at every operation and fact.
- ``Users``: pyinfra's fact forks a dozen processes per account (``lastlog -u``, ``grep``,
  ``id`` twice, ...); ``USERS_COMMAND`` reads the same files once, with one ``lastlog``,
  and prints the same lines.
- Facts in the shell itself: a fact's command runs in the one shell without the ``sh -c``
  pyinfra wraps each command in (a process per command: Debian's ``sh`` forks even for the
  last one) when it is one written or read here (``shell_form``): ``File``, ``Link``,
  ``Directory``, ``Socket`` and the ``Sha1File`` family as subshell-free commands of their
  own (``FILE_COMMAND``, ``hash_command``: the same output and exit status as pyinfra's; a
  ``File`` fact starts one process, ``stat``, instead of four), ``Which``, ``Users``, and
  pyinfra's own ``Hostname``, ``Os``, ``Date``, ``Groups``, ``DebPackages`` and systemd
  unit facts (``_REVIEWED``). Every argument is quoted, nothing ends or changes the shell
  (no ``exit``, ``cd``, assignment); ``hash -r`` first, so programs are looked up afresh.
  With ``_sudo``, ``_su_user``, ``_env``, ``_chdir`` and the like (``plain``), and for
  every other command, pyinfra's wrapper stays.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import re
import secrets
import sys
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.lock
import pyinfra
from paramiko import Channel
from paramiko.ssh_exception import NoValidConnectionsError
from pyinfra.api import arguments as pyinfra_arguments
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.arguments import all_global_arguments as _all_global_arguments
from pyinfra.api.command import QuoteString, StringCommand, make_formatted_string_command
from pyinfra.api.exceptions import ConnectError
from pyinfra.api.util import PYINFRA_INSTALL_DIR
from pyinfra.connectors import util as pyinfra_connector_util
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.connectors.util import (
    CommandOutput,
    OutputLine,
    make_unix_command_for_host,
)
from pyinfra.facts.files import (
    BSD_STAT_COMMAND,
    LINUX_STAT_COMMAND,
    LS_COMMAND,
    File,
    HashFileFactBase,
    Md5File,
    Sha1File,
    Sha256File,
    Sha384File,
)
from pyinfra.facts.server import Users, Which

from gitops.pipeline import remote

SHELL = "exec sh"
"""What the one session per host runs: a POSIX shell reading commands on its stdin."""

USERS_COMMAND = r"""{ cat /etc/group; echo '#gitops-shadow'; cat /etc/shadow 2>/dev/null ||
cat /etc/master.passwd 2>/dev/null; echo '#gitops-lastlog'; lastlog 2>/dev/null ||
lastlogin 2>/dev/null; echo '#gitops-passwd'; cat /etc/passwd; } | awk '
$0 == "#gitops-shadow" { part = 1; next }
$0 == "#gitops-lastlog" { part = 2; next }
$0 == "#gitops-passwd" { part = 3; FS = ":"; next }
part == 0 { split($0, g, ":"); gname[g[3]] = g[1]; n = split(g[4], m, ",");
            for (i = 1; i <= n; i++) sup[m[i]] = sup[m[i]] " " g[1]; next }
part == 1 { split($0, s, ":"); pw[s[1]] = s[2]; next }
part == 2 { line = $0; gsub(/ +/, " ", line); split(line, w, " ");
            if (w[1] != "Username") last[w[1]] = line; next }
part == 3 { p = gname[$4]; if (p == "") p = $4;
            print $0 "|" p "|" p sup[$1] "|" last[$1] "|" pw[$1] }'"""
"""pyinfra's ``Users`` output (``passwd entry|group|groups|lastlog|password`` per account)
from one ``awk`` over the local account files: a primary group unknown to ``/etc/group``
shows as its number, as ``id -gn`` does."""

FILE_COMMAND = (
    "if test -e {0} || test -L {0}; then {linux_stat_command} {0} 2> /dev/null || "
    "{bsd_stat_command} {0} || {ls_command} {0}; fi"
)
"""pyinfra's ``File`` command (``! (test -e P || test -L P ) || ( stat ... )``: two
subshells and a ``stat``) as one ``if``: the same output and exit status, one process."""

PYINFRA_FILE_COMMAND = File.command
"""pyinfra's own ``File.command`` (``install`` replaces it in the apply worker)."""

_HASH_HEAD, _HASH_TAIL = "test -e {0} && ( ", " ) || true"


def hash_command(raw: str) -> str | None:
    """pyinfra's ``Sha1File``-family command (``test -e P && ( sha1sum P || ... ) || true``:
    a subshell and the program) without the subshell, or None if it has another shape."""
    if not (raw.startswith(_HASH_HEAD) and raw.endswith(_HASH_TAIL)):
        return None
    return f"if test -e {{0}}; then {raw[len(_HASH_HEAD):-len(_HASH_TAIL)]} || true; fi"


_HASH_FACTS = (Sha1File, Sha256File, Sha384File, Md5File)
_HASH_COMMANDS = {cls: (cls._raw_cmd, hash_command(cls._raw_cmd)) for cls in _HASH_FACTS}
"""Each hash fact's (pyinfra's command, the one run here)."""
_WHICH_COMMAND = Which.command
"""pyinfra's ``command -v 'NAME' || true``: a builtin, run in the shell as it is."""


def _file_command(self: Any, path: str) -> StringCommand:
    if path.startswith("~/"):  # as pyinfra: the tilde unquoted so the shell expands it
        quoted: Any = StringCommand("~/", QuoteString(path[2:]), _separator="")
    else:
        quoted = QuoteString(path)
    return make_formatted_string_command(
        FILE_COMMAND, quoted, linux_stat_command=LINUX_STAT_COMMAND,
        bsd_stat_command=BSD_STAT_COMMAND, ls_command=LS_COMMAND)


def _users_command(self: Any) -> str:
    return USERS_COMMAND


def in_shell(cls: Any) -> bool:
    """Whether fact ``cls``'s command may run in the one shell itself: a command written (or
    read) here, its arguments quoted, that neither ends the shell nor changes it (no
    ``exit``, ``cd``, ``exec``, assignment, ``set``, ``trap``)."""
    command = getattr(cls, "command", None)
    if command in (_file_command, _users_command, _WHICH_COMMAND):
        return True
    ours = _HASH_COMMANDS.get(cls, (None, None))[1]
    return (ours is not None and command is HashFileFactBase.command
            and getattr(cls, "_raw_cmd", None) == ours)


_REVIEWED = re.compile(
    r"uname -[nsmr]|cat /etc/group|date \+'%Y-%m-%dT%H:%M:%S%z'|dpkg -l"
    r"|systemctl show --all --property Id --property (?:SubState|UnitFileState)"
    r"(?: [A-Za-z0-9@%+=:,./_-]+)+")
"""pyinfra's fact commands (``Hostname``, ``Os``, ``Date``, ``Groups``, ``DebPackages``,
``SystemdStatus``/``SystemdEnabled`` of named units) read here: one program, plain words."""
_REQUIRES = re.compile(r"if command -v [A-Za-z0-9_.-]+ >/dev/null 2>&1; "
                       r"then \( (?P<command>.*) \); else echo '##PYINFRA_NOCMD##'; fi")
"""pyinfra's wrapper of a fact that needs a program (``requires_command``)."""


def shell_form(cls: Any, raw: str) -> str | None:
    """What to run in the one shell itself for fact ``cls``'s command ``raw``, or None
    (pyinfra's ``sh -c``): the commands written here (``in_shell``), and pyinfra's that match
    ``_REVIEWED`` (the subshell of a ``requires_command`` wrapper dropped)."""
    if in_shell(cls):
        return raw
    wrapped = _REQUIRES.fullmatch(raw)
    inner = wrapped["command"] if wrapped else raw
    if not _REVIEWED.fullmatch(inner):
        return None
    return raw.replace(f"( {inner} );", f"{inner};", 1) if wrapped else raw


_PLAIN = frozenset({"_timeout", "_success_exit_codes", "_retries", "_retry_delay",
                    "_retry_until", "_temp_dir", "_shell_executable"})
"""Connector arguments that do not change how a command is wrapped."""


class SudoPasswordRequired(Exception):
    """sudo asked for a password on a host: its message is one line saying what to do
    (``gitops.pipeline.remote.sudo_failure``). pyinfra would prompt for one on the terminal
    (``getpass``), which a worker has not: gitops never does."""


def refuse_sudo_prompt(host: Any, output: CommandOutput) -> None:
    """Raise ``SudoPasswordRequired`` when ``output`` shows sudo asking for a password."""
    said = remote.sudo_failure(host.name, str(host.data.get("ssh_user") or ""),
                               "\n".join(line.line for line in output.combined_lines))
    if said is not None:
        raise SudoPasswordRequired(said)


def _refuse_prompt(prompt: str = "", stream: Any = None) -> str:
    """pyinfra's sudo password prompt (``getpass``), refused: the worker has no terminal."""
    raise SudoPasswordRequired(f"sudo: {remote.SUDO_PROMPT} ({prompt.strip()})")


def plain(arguments: dict[str, Any]) -> bool:
    """No sudo, su, doas, dzdo, environment, folder or other shell: pyinfra would run the
    command as ``sh -c 'COMMAND'`` and nothing else."""
    return (arguments.get("_shell_executable", "sh") == "sh"
            and not any(v for k, v in arguments.items() if k not in _PLAIN))


class ShellConnector(SSHConnector):
    """pyinfra's ``ssh`` connector whose commands all run in one remote shell per host."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shell: Channel | None = None
        self._token = f"__gitops_{secrets.token_hex(8)}__"
        self._turn = gevent.lock.Semaphore()
        """One command at a time in the shell (its output has one reader): a greenlet other
        than the operation's waits; a guard's heartbeat uses ``run_aside`` instead."""
        self.facts: dict[tuple[Any, ...], Any] = {}
        """This host's fact readings since the last thing that could change it."""
        self.reading_fact: Any = None
        """The fact class being read, None for an operation's command."""
        self.commands = 0
        """Commands sent to the host (facts and operations), for the benchmarks."""

    def connect(self) -> None:
        """pyinfra's connect; a refused or unanswered connection says where and why, as
        OpenSSH does (paramiko's "[Errno None] Unable to connect to port 22 on ..." loses
        the reason)."""
        try:
            super().connect()
        except ConnectError as exc:
            why = connect_failure(exc.__context__)
            if why is None:
                raise
            raise ConnectError(f"Could not connect to {why}") from None

    def disconnect(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            with contextlib.suppress(Exception):
                shell.close()
        super().disconnect()

    def run_shell_command(
        self,
        command: StringCommand,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Any,
    ) -> tuple[bool, CommandOutput]:
        if self.reading_fact is None:
            self.facts.clear()  # an operation's command: what was read may be out of date
        if arguments.get("_get_pty") or arguments.get("_stdin"):
            return super().run_shell_command(command, print_output, print_input, **arguments)
        self.commands += 1
        timeout = arguments.pop("_timeout", None)
        arguments.pop("_stdin", None)
        arguments.pop("_get_pty", None)
        success = arguments.pop("_success_exit_codes", None)
        # a fact's command may be a plain string (``Hostname``: "uname -n")
        raw_command = command.get_raw_value() if isinstance(command, StringCommand) \
            else str(command)
        direct = shell_form(self.reading_fact, raw_command) \
            if self.reading_fact is not None and plain(arguments) else None

        def execute() -> tuple[int, CommandOutput]:
            if direct is not None:  # a fact command that runs in the shell itself
                if print_input:
                    from pyinfra.api.output import echo

                    echo(f"{self.host.print_prefix}>>> {command}", err=True)
                # ``hash -r``: programs are looked up afresh, as by a new ``sh -c``
                return self._run(f"{{ hash -r; {direct}\n}}", timeout)
            unix = make_unix_command_for_host(self.state, self.host, command, **arguments)
            raw = unix.get_raw_value()
            if print_input:
                from pyinfra.api.output import echo

                echo(f"{self.host.print_prefix}>>> {unix}", err=True)
            # a command pyinfra wraps (``sh -c '...'``, ``sudo ...``) cannot end this shell;
            # a raw one (``_shell_executable=None``) runs in a subshell of its own
            grouped = f"{{ {raw}\n}}" if arguments.get("_shell_executable", "sh") else \
                f"( {raw}\n)"
            return self._run(grouped, timeout)

        code, output = execute()
        if code != 0:
            refuse_sudo_prompt(self.host, output)
        if print_output:
            from pyinfra.api.output import echo

            for line in output:
                echo(f"{self.host.print_prefix}{line.line}", err=True)
        return (code in success) if success else code == 0, output

    def run_aside(self, command: StringCommand, **arguments: Any) -> tuple[bool, CommandOutput]:
        """``command`` in an SSH session of its own (pyinfra's way), not in the shell: it
        runs now, even while the shell is busy with a long command. A sudo asking for a
        password is refused (``_refuse_prompt``), never prompted for."""
        return super().run_shell_command(command, **arguments)

    def _open(self) -> Channel:
        assert self.client is not None
        transport = self.client.get_transport()
        assert transport is not None
        channel = transport.open_session()
        channel.exec_command(SHELL)
        return channel

    def _run(self, script: str, timeout: float | None) -> tuple[int, CommandOutput]:
        with self._turn:
            return self._run_alone(script, timeout)

    def _run_alone(self, script: str, timeout: float | None) -> tuple[int, CommandOutput]:
        if self._shell is None or self._shell.closed or self._shell.exit_status_ready():
            self._shell = self._open()
        shell = self._shell
        token = self._token
        shell.sendall(
            f"{script} </dev/null; printf '\\n%s %d\\n' {token} $?; "
            f"printf '\\n%s\\n' {token} >&2\n".encode()
        )
        marker = f"\n{token}".encode()
        out = gevent.spawn(_read_until, shell.recv, marker)
        err = gevent.spawn(_read_until, shell.recv_stderr, marker)
        done = gevent.joinall([out, err], timeout=timeout)
        if len(done) != 2 or not out.successful() or not err.successful():
            out.kill()
            err.kill()
            self._lost()
            if len(done) != 2:
                raise TimeoutError
            raise OSError("the remote shell ended")
        stdout, status = out.value
        stderr, _ = err.value
        try:
            code = int(status)
        except ValueError:
            code = 255
        lines = [OutputLine("stdout", line) for line in _lines(stdout)]
        lines += [OutputLine("stderr", line) for line in _lines(stderr)]
        return code, CommandOutput(lines)

    def _lost(self) -> None:
        """The shell is gone or out of step: the next command opens a new one."""
        shell, self._shell = self._shell, None
        if shell is not None:
            with contextlib.suppress(Exception):
                shell.close()

    def put_file(self, *args: Any, **kwargs: Any) -> bool:
        self.facts.clear()
        return bool(super().put_file(*args, **kwargs))

    def rsync(self, *args: Any, **kwargs: Any) -> bool:
        self.facts.clear()
        return bool(super().rsync(*args, **kwargs))


def connect_failure(error: BaseException | None) -> str | None:
    """``HOST port N: REASON`` for each address paramiko tried (its
    ``NoValidConnectionsError``), or None for another error."""
    if not isinstance(error, NoValidConnectionsError):
        return None
    return "; ".join(f"{address[0]} port {address[1]}: "
                     f"{getattr(reason, 'strerror', None) or reason}"
                     for address, reason in error.errors.items())


def _read_until(recv: Any, marker: bytes) -> tuple[bytes, bytes]:
    """Read from ``recv`` until ``marker`` and the rest of its line: (what came before, the
    rest of that line). EOFError when the channel ends first."""
    buf = bytearray()
    while True:
        at = buf.find(marker)
        end = buf.find(b"\n", at + len(marker)) if at >= 0 else -1
        if end >= 0:
            return bytes(buf[:at]), bytes(buf[at + len(marker):end])
        chunk = recv(65536)
        if not chunk:
            raise EOFError
        buf.extend(chunk)


def _lines(data: bytes) -> Iterator[str]:
    if not data:
        return
    text = data.decode("utf-8", errors="replace")
    yield from text.removesuffix("\n").split("\n")


_get_fact = pyinfra_facts._get_fact


def _memoized_get_fact(state: Any, host: Any, cls: Any, args: Any = None, kwargs: Any = None,
                       ensure_hosts: Any = None, apply_failed_hosts: bool = True) -> Any:
    connector = host.connector
    if not isinstance(connector, ShellConnector):
        return _get_fact(state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)
    try:
        context = host.current_op_global_arguments or {}
        key: tuple[Any, ...] | None = (
            cls, repr(args), repr(sorted((kwargs or {}).items())),
            repr(sorted((k, v) for k, v in context.items() if k in CONNECTOR_ARGUMENT_KEYS)),
        )
        hash(key)
    except Exception:  # pyinfra reports a bad fact call itself, below
        key = None
    if key is not None and key in connector.facts:
        return _copy(connector.facts[key])
    connector.reading_fact = cls
    try:
        value = _get_fact(state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)
    finally:
        connector.reading_fact = None
    if key is not None and host not in state.failed_hosts:
        connector.facts[key] = _copy(value)
    return value


def _copy(value: Any) -> Any:
    """A reading handed out is the caller's own (an operation may change what it got)."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


PYINFRA_SSH_ENV = "GITOPS_BENCH_PYINFRA_SSH"
"""Set (by ``bench/scale.py`` only): leave pyinfra's own connector and facts, to compare."""


def operation_order(state: Any) -> list[int]:
    """What ``pyinfra.api.util.get_operation_order_from_stack`` returns (the file number,
    then the line numbers of the calling frames outside pyinfra, outermost first from the
    deploy file on), read from the frames themselves: pyinfra's builds ``inspect.stack()``,
    which reads every frame's source and searches ``sys.modules`` for its module, per
    operation call (a quarter of the apply worker's CPU in a profile)."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()
    start = 0
    if state.current_deploy_filename:
        for start, item in enumerate(frames):  # noqa: B007  # the index is the result
            if item.f_code.co_filename == state.current_deploy_filename:
                break
    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    numbers += [f.f_lineno for f in frames[start:]
                if not f.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)]
    return numbers


_ARGUMENTS: list[tuple[str, type]] = []


def _global_arguments() -> list[tuple[str, type]]:
    """pyinfra's ``all_global_arguments()`` once: it evaluates the type hints of every
    global argument (``typing.get_type_hints``) at each operation and each fact read, about
    a third of a plan's CPU after the stack reading. The list does not change in a run."""
    if not _ARGUMENTS:
        _ARGUMENTS.extend(_all_global_arguments())
    return list(_ARGUMENTS)


def install(inventory: Any) -> None:
    """Make every host of ``inventory`` use ``ShellConnector`` (before ``State.init``), and
    pyinfra's fact layer memoize and read ``Users``, ``File`` and the hash facts cheaply
    (for this process). A sudo that asks for a password is never prompted for
    (``SudoPasswordRequired``), whichever connector runs."""
    setattr(pyinfra_connector_util, "getpass", _refuse_prompt)  # noqa: B010 (not exported)
    if os.environ.get(PYINFRA_SSH_ENV):
        return
    for host in inventory:
        host.connector_cls = ShellConnector
    pyinfra_facts._get_fact = _memoized_get_fact
    # the module, which ``pyinfra.api.operation`` (the decorator) hides
    module: Any = importlib.import_module("pyinfra.api.operation")
    module.get_operation_order_from_stack = operation_order
    pyinfra_arguments.all_global_arguments = _global_arguments
    Users.command = _users_command  # type: ignore[method-assign]
    File.command = _file_command  # type: ignore[method-assign]  # Link, Directory, Socket too
    for cls, (_theirs, ours) in _HASH_COMMANDS.items():
        if ours is not None:
            cls._raw_cmd = ours
