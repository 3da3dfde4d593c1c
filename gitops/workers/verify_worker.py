"""The testinfra worker: runs every service's ``checks.py`` on every host that runs it.

Started by ``gitops.pipeline.verify`` as ``python -m gitops.workers.verify_worker`` (one process per
verify, since testinfra and pytest keep process-global state). Reads a ``DeclaredState`` as
JSON on stdin, writes one ``VerifyReport`` as JSON on stdout and one ``progress:`` line per
finished host on stderr.

A check is a function ``test_*(host, params)`` in ``deploys/<service>/checks.py``; its
asserts are rewritten the way pytest does, so a failure says what the values were. Hosts run
in parallel (``settings.parallel``), the checks of one host in order, every command of a
host in one long-lived remote shell over one SSH connection (see ``ShellBackend``), whose
ssh client is ended with the host's checks. The ssh_config is written to a private
temporary folder. Given a connection folder (the daemon keeps one, see
``gitops.pipeline.verify.SshConnections``), each host's connection is an OpenSSH control master
that outlives this worker, so the next verify (a drift check) opens a session on it instead
of a new SSH connection.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import os
import re
import secrets
import selectors
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra.host
from _pytest.assertion import rewrite, util
from pydantic import BaseModel
from testinfra.backend.base import CommandResult
from testinfra.backend.ssh import SshBackend

from gitops.model import (
    DeclaredHost,
    DeclaredState,
    check_address,
    check_path,
    check_user,
    unsafe_reason,
)
from gitops.pipeline import depends
from gitops.pipeline.worker import PROGRESS_PREFIX, die_with_parent
from gitops.records import CheckResult, CheckStatus, VerifyReport
from gitops.workers import secrets as worker_secrets

CHECKS_FILE = "checks.py"
MAX_MESSAGE = 4000
"""Longest message kept per check; pytest-style explanations of big outputs get cut here."""

CheckFunction = Callable[..., object]


class CheckSignatureError(Exception):
    """A check asks for an argument the verify stage does not provide."""


@dataclass(frozen=True)
class Suite:
    """The checks of one service: its ``test_*`` functions, or why the file did not load."""

    service: str
    path: Path
    checks: tuple[tuple[str, CheckFunction], ...] = ()
    error: str | None = None


# --- assertion rewriting ------------------------------------------------------------------


class _QuietConfig:
    """The two things ``assertrepr_compare`` asks of pytest's Config, at default verbosity."""

    def get_verbosity(self, verbosity_type: str | None = None) -> int:
        return 0

    def get_terminal_writer(self) -> _QuietConfig:
        return self

    @staticmethod
    def _highlight(source: str, lexer: str = "python") -> str:
        return source


def _reprcompare(op: str, left: object, right: object) -> str | None:
    """pytest's detailed comparison explanations (string diffs, differing items, ...)."""
    compare: Any = util.assertrepr_compare
    try:
        if "config" in inspect.signature(compare).parameters:  # pytest < 9.2
            lines = compare(_QuietConfig(), op, left, right)
        else:  # pytest >= 9.2: keyword settings, lazy lines
            lines = list(compare(op, left, right, verbose=0,
                                 highlighter=_QuietConfig._highlight,
                                 assertion_text_diff_style="ndiff"))
    except Exception:  # an internal pytest API: without it the plain rewritten message stays
        return None
    if not lines:
        return None
    lines = [line.replace("\n", "\\n") for line in lines]
    return "\n~".join(lines).replace("%", "%%")


_OUTPUT_SHOWN = 300
"""Characters of a command's stdout and of its stderr (the last ones) a check message shows."""


def _tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_SHOWN else "..." + text[-_OUTPUT_SHOWN:]


def _command_repr(result: CommandResult) -> str:
    """A command's result as a check message shows it (``host.run(...).rc == 0`` failing,
    ``run_expect``, ``check_output``): the command, its exit code, the end of its output;
    not the dataclass's ``CommandResult(backend=<...ShellBackend object at 0x...>, ...)``."""
    try:
        command = result.command.decode(errors="replace") if isinstance(
            result.command, bytes) else str(result.command)
        out, err = result.stdout, result.stderr
    except Exception:  # undecodable output: the codes still say what ran
        return f"`{result.command!r}` (exit {result.exit_status})"
    return (f"`{command}` (exit {result.exit_status}, stdout: {_tail(out)!r}, "
            f"stderr: {_tail(err)!r})")


def install_assertion_explanations() -> None:
    """Make rewritten asserts explain comparisons as pytest does, and show a command's result
    as its command, exit code and output (process-wide)."""
    util._reprcompare = _reprcompare
    CommandResult.__repr__ = _command_repr


def compile_checks(source: bytes, path: str) -> types.CodeType:
    """Compile a checks file with pytest's assertion rewriting applied."""
    tree = ast.parse(source, filename=path)
    rewrite.rewrite_asserts(tree, source, path)
    return compile(tree, path, "exec", dont_inherit=True)


def load_suite(service: str, path: Path, index: int) -> Suite:
    """Import ``path`` as a fresh module and collect its ``test_*`` functions in order."""
    name = f"gitops_checks_{index}_{re.sub(r'[^0-9A-Za-z_]', '_', service)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        code = compile_checks(path.read_bytes(), str(path))
        exec(code, module.__dict__)
    except Exception as exc:
        return Suite(service, path, error=f"cannot load {path}: {_describe(exc, path)}")
    checks = tuple(
        (attr, value)
        for attr, value in vars(module).items()
        if attr.startswith("test_") and inspect.isfunction(value)
    )
    return Suite(service, path, checks)


def load_suites(state: DeclaredState) -> dict[str, Suite]:
    """The suites of every service some host runs that has a ``checks.py``."""
    services = list(state.service_order)
    services += sorted({s for h in state.hosts for s in h.services} - set(services))
    suites = {}
    for index, service in enumerate(services):
        path = Path(state.root) / "deploys" / service / CHECKS_FILE
        if path.is_file():
            suites[service] = load_suite(service, path, index)
    return suites


def bind_arguments(func: CheckFunction, available: Mapping[str, object]) -> dict[str, object]:
    """The keyword arguments to call ``func`` with, taken by parameter name from ``available``.

    Raises CheckSignatureError naming a parameter without a default that is not available.
    """
    kwargs = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in available and param.kind != param.POSITIONAL_ONLY:
            kwargs[param.name] = available[param.name]
        elif param.default is param.empty:
            known = ", ".join(available)
            raise CheckSignatureError(
                f"unknown argument {param.name!r} (a check may take: {known})"
            )
    return kwargs


# --- running checks -----------------------------------------------------------------------


def _location(exc: BaseException, path: Path) -> str:
    """``deploys/<service>/checks.py:LINE`` of the deepest frame in that file, or ``""``."""
    shown = "/".join(path.parts[-3:])
    if isinstance(exc, SyntaxError) and exc.filename == str(path) and exc.lineno:
        return f"{shown}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f"{shown}:{frames[-1].lineno}" if frames else ""


def _describe(exc: BaseException, path: Path | None = None) -> str:
    """One message for an exception: its text, SSH failures made readable, and where."""
    if isinstance(exc, AssertionError):
        text = str(exc) or "assertion failed"
    elif isinstance(exc, RuntimeError) and exc.args and isinstance(exc.args[0], CommandResult):
        result = exc.args[0]
        text = f"ssh failed (exit {result.rc}): {result.stderr.strip() or 'no message'}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    where = _location(exc, path) if path else ""
    message = f"{text}\n(at {where})" if where else text
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 20] + "\n... (truncated)"
    return message


def run_check(
    host_name: str, suite: Suite, name: str, func: CheckFunction, available: Mapping[str, object]
) -> CheckResult:
    """Call one check and turn what happened into a CheckResult (never raises)."""
    start = time.monotonic()
    status: CheckStatus
    try:
        kwargs = bind_arguments(func, available)
        if "params" in kwargs:
            kwargs["params"] = copy.deepcopy(kwargs["params"])
        func(**kwargs)
    except AssertionError as exc:
        status, message = "fail", _describe(exc, suite.path)
    except Exception as exc:
        status, message = "error", _describe(exc, suite.path)
    else:
        status, message = "pass", ""
    return CheckResult(
        host=host_name,
        service=suite.service,
        check=name,
        status=status,
        message=message,
        duration_s=round(time.monotonic() - start, 4),
    )


@dataclass(frozen=True)
class HostOutcome:
    host: str
    results: tuple[CheckResult, ...]
    error: str | None
    duration_s: float


def connect(alias: str, ssh_config: Path, connect_timeout: int) -> Any:
    """A testinfra Host for ``alias`` whose commands all run in one remote shell."""
    backend = ShellBackend(alias, ssh_config=str(ssh_config), timeout=connect_timeout)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


def verify_host(
    declared: DeclaredHost, alias: str, ssh_config: Path, suites: Mapping[str, Suite],
    requires: Mapping[str, Sequence[str]] | None = None,
) -> HostOutcome:
    """Reach the host once, then run the checks of each of its services in order; the
    checks of a service that ``requires`` one whose checks failed are not run, each such
    service recorded once as ``DependencyNotReady`` with the reason
    (``gitops.pipeline.depends``)."""
    requires = requires or {}
    start = time.monotonic()
    host = connect(alias, ssh_config, declared.ssh.connect_timeout)
    try:
        try:
            host.run("true")
        except Exception as exc:
            return HostOutcome(declared.name, (), _describe(exc), time.monotonic() - start)
        results: list[CheckResult] = []
        why: dict[str, str] = {}  # service -> why what requires it is not run
        for service, params in declared.services.items():
            suite = suites.get(service)
            if suite is None:
                continue
            blocked = depends.not_ready(declared.name, [service], requires, why)
            if blocked:  # a requirement failed its checks: these are not run
                results += blocked
                why[service] = f"is not ready ({depends.NOT_READY})"
                continue
            first = len(results)
            if suite.error is not None:
                results.append(
                    CheckResult(
                        host=declared.name,
                        service=service,
                        check=CHECKS_FILE,
                        status="error",
                        message=suite.error,
                    )
                )
                why[service] = "failed its checks on this host (checks.py cannot be loaded)"
                continue
            available = {"host": host, "params": params}
            for name, func in suite.checks:
                results.append(run_check(declared.name, suite, name, func, available))
            bad = [f"{r.service}/{r.check}" for r in results[first:] if r.status != "pass"]
            if bad:
                why[service] = f"failed its checks on this host ({', '.join(bad)})"
    finally:
        host.backend.close()
    return HostOutcome(declared.name, tuple(results), None, time.monotonic() - start)


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
            if result is None:
                result = self._seen[cmd] = self._run(cmd)
            return result

    def _start(self) -> subprocess.Popen[bytes]:
        argv = ["ssh", "-F", str(self.ssh_config), "-o", f"ConnectTimeout={self.timeout}"]
        argv += [self.host.name, "command -v bash >/dev/null && exec bash; exec sh"]
        return subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _run(self, cmd: str) -> CommandResult:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        proc = self._proc
        assert proc.stdin and proc.stdout and proc.stderr
        token = self._token.decode()
        script = (
            f"( eval {shlex.quote(exec_form(cmd))} ) </dev/null; "
            f"printf '\\n%s %d\\n' {token} $?; "
            f"printf '\\n%s\\n' {token} >&2\n"
        )
        out, err = bytearray(), bytearray()
        out_end = err_end = -1
        try:
            proc.stdin.write(self.encode(script))
            proc.stdin.flush()
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ, out)
                sel.register(proc.stderr, selectors.EVENT_READ, err)
                while out_end < 0 or err_end < 0:
                    if not sel.get_map():
                        raise EOFError
                    for key, _ in sel.select():
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        key.data.extend(chunk)
                    out_end = _marker(out, self._token + b" ", b"\n")
                    err_end = _marker(err, self._token, b"\n")
        except (OSError, EOFError):
            return self._lost(cmd, bytes(err))
        rc = int(out[out_end:].split(b" ", 1)[1])
        return self.result(rc, self.encode(cmd), bytes(out[:out_end]), bytes(err[:err_end]))

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


def _marker(buf: bytearray, token: bytes, end: bytes) -> int:
    """Where the output before ``\\n<token>...<end>`` ends, or -1 if it is not all there yet."""
    at = buf.find(b"\n" + token)
    if at < 0 or buf.find(end, at + 1 + len(token)) < 0:
        return -1
    return at


# --- SSH ----------------------------------------------------------------------------------

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


class Job(BaseModel):
    """What the parent asks for."""

    state: DeclaredState
    control_dir: str | None = None
    """Keep each host's SSH connection here as a control master for later verifies."""


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


# --- the whole run ------------------------------------------------------------------------


def _summary(outcome: HostOutcome) -> str:
    if outcome.error is not None:
        return f"{outcome.host}: unreachable: {outcome.error.splitlines()[0]}"
    counts = {s: sum(1 for r in outcome.results if r.status == s)
              for s in ("pass", "fail", depends.NOT_READY)}
    errors = len(outcome.results) - sum(counts.values())
    waiting = counts[depends.NOT_READY]
    return (
        f"{outcome.host}: {counts['pass']} passed, {counts['fail']} failed, {errors} errors"
        + (f", {waiting} service(s) {depends.NOT_READY}" if waiting else "")
        + f" ({outcome.duration_s:.1f}s)"
    )


def run(
    state: DeclaredState,
    progress: Callable[[str], Any] = lambda _line: None,
    control_dir: str | None = None,
) -> VerifyReport:
    """Verify every host of ``state``; ``progress`` gets one line per finished host."""
    start = time.monotonic()
    install_assertion_explanations()
    suites = load_suites(state)
    aliases = {ssh_alias(h.name, i): h for i, h in enumerate(state.hosts)}
    outcomes: dict[str, HostOutcome] = {}
    for alias, h in list(aliases.items()):
        field = unsafe_field(h)
        if field is not None:  # never written to the ssh_config, never connected to
            del aliases[alias]
            outcomes[h.name] = HostOutcome(h.name, (), f"refused: {field} is not safe to "
                                           "write to an ssh_config", 0.0)
            progress(_summary(outcomes[h.name]))
    with tempfile.TemporaryDirectory(prefix="gitops-verify-") as tmp:
        ssh_config = Path(tmp) / "ssh_config"
        ssh_config.write_text(ssh_config_text(aliases, control_dir))
        workers = max(1, min(state.settings.parallel, len(aliases)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            futures = {
                pool.submit(verify_host, h, alias, ssh_config, suites, state.requires): h.name
                for alias, h in aliases.items()
            }
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as exc:  # a bug here must not lose the other hosts' results
                    error = f"verify worker failed: {type(exc).__name__}: {exc}"
                    outcome = HostOutcome(futures[future], (), error, 0.0)
                outcomes[outcome.host] = outcome
                progress(_summary(outcome))
    ordered = [outcomes[h.name] for h in state.hosts if h.name in outcomes]
    return VerifyReport(
        results=tuple(r for o in ordered for r in o.results),
        host_errors={o.host: o.error for o in ordered if o.error is not None},
        duration_s=round(time.monotonic() - start, 3),
    )


def main() -> int:
    die_with_parent()
    job = Job.model_validate_json(sys.stdin.buffer.read())
    sys.stderr = worker_secrets.RedactingStream(sys.stderr, job.state.redact)

    def progress(line: str) -> None:
        print(f"{PROGRESS_PREFIX}{line}", file=sys.stderr, flush=True)

    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # a print() in a checks file must not
        report = run(job.state, progress, job.control_dir)  # corrupt the JSON on stdout
    out.write(worker_secrets.redact(report, job.state.redact).model_dump_json())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
