"""The pyinfra worker: plan (dry run) or apply one DeclaredState, then exit.

Runs as ``python -m gitops.workers.apply_worker`` in a process of its own, started by
``gitops.pipeline.apply``: pyinfra monkey-patches the process with gevent and caches compiled deploy
files, templates and facts by file name, so the long-lived reconciler never imports it.
Reads a job (JSON) on stdin, writes a ``WorkerResult`` (JSON) on stdout, progress on stderr.

Deploy files are loaded the way the ``pyinfra`` CLI loads them (``pyinfra.is_cli``: operation
order from the call stack, one file after another, hosts in parallel), one service's
``deploy.py`` at a time, with the service's parameters as pyinfra deploy data (a removal
job loads each service's ``remove.py`` instead, see ``gitops.pipeline.prune``). A plan
evaluates every operation without executing it (``pyinfra --dry``); an apply executes each
operation once (``pyinfra -y``), so its plan is what it changed.
"""

from __future__ import annotations

# isort: off
from gitops.workers import startup  # noqa: F401  # first: gevent's patching (see there)
# isort: on
import contextlib
import inspect
import logging
import os
import secrets as token_source
import socket
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
import pyinfra
from pydantic import BaseModel
from pyinfra import local as pyinfra_local
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.operation import OperationMeta
from pyinfra.api.operations import run_ops
from pyinfra.api.state import BaseStateCallback, State, StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
from pyinfra_cli.exceptions import UnexpectedExternalError
from pyinfra_cli.util import exec_file

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import guard, journal, remote
from gitops.pipeline.factskip import Skip
from gitops.pipeline.worker import PROGRESS_PREFIX, die_with_parent
from gitops.records import (
    ApplyReport,
    HostApply,
    HostGuard,
    HostPlan,
    OpPlan,
    OpResult,
    Plan,
    WorkerResult,
)
from gitops.workers import connector, factcheck, secrets


class Job(BaseModel):
    """What the parent asks for."""

    state: DeclaredState
    dry: bool = True
    diff: bool = True
    journal: str | None = None
    """An apply's interrupted-apply journal folder (``gitops.pipeline.journal``)."""
    remove: bool = False
    """Load each service's ``remove.py`` (a removal, ``gitops.pipeline.prune``), not its
    ``deploy.py``."""
    skip: Skip | None = None
    """Skip the hosts whose fingerprints and recorded facts are unchanged
    (``gitops.pipeline.factskip``); an apply records them."""


def _progress(message: str) -> None:
    print(f"{PROGRESS_PREFIX}{message}", file=sys.stderr, flush=True)


def _connector_data(host: DeclaredHost) -> dict[str, Any]:
    data: dict[str, Any] = dict(host.vars)
    data.update(
        ssh_hostname=host.address,
        ssh_port=host.ssh.port,
        ssh_user=host.ssh.user,
        ssh_strict_host_key_checking=host.ssh.host_key_checking,
        ssh_connect_retries=0,
        ssh_paramiko_connect_kwargs={
            "timeout": host.ssh.connect_timeout,
            "banner_timeout": host.ssh.connect_timeout,
            "auth_timeout": host.ssh.connect_timeout,
        },
    )
    if host.ssh.key_file:
        data["ssh_key"] = str(Path(host.ssh.key_file).expanduser())
    if host.ssh.known_hosts_file:
        data["ssh_known_hosts_file"] = host.ssh.known_hosts_file
    return data


_NO_HOST_KEY = "No host key for %s found in known_hosts"
"""What pyinfra's ``WarningPolicy`` (host key checking off) logs at every connection."""


class _Capture(logging.Handler):
    """Keeps pyinfra's log: per-op diffs during prepare, per-host errors, everything else."""

    def __init__(self, names: list[str], unchecked: frozenset[str] = frozenset()) -> None:
        super().__init__(logging.INFO)
        self.diffs: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.host_errors: dict[str, list[str]] = defaultdict(list)
        self.names = names
        self.unchecked = unchecked
        """Addresses whose host keys are not checked (``host_key_checking: "no"``)."""
        self.collecting = False

    def emit(self, record: logging.LogRecord) -> None:
        if (record.msg == _NO_HOST_KEY and record.levelno == logging.WARNING
                and isinstance(record.args, tuple) and record.args
                and record.args[0] in self.unchecked):
            return  # the key is not checked, as asked: nothing to warn about
        message = record.getMessage()
        host = ctx_host.get() if ctx_host.isset() else None
        if self.collecting and host is not None and host.current_op_hash:
            self.diffs[(host.name, host.current_op_hash)].append(message)
            return
        if record.levelno < logging.WARNING:
            return
        for name in self.names:
            if message.startswith(f"[{name}]"):
                text = message[len(name) + 2 :].strip()
                # Errors only: pyinfra also echoes a failed command's output at warning level.
                if (record.levelno >= logging.ERROR or text.lower().startswith("error")
                        or remote.SUDO_PROMPT in text):
                    self.host_errors[name].append(text[:300])
                return
        _progress(message)


def _no_delay(host: Any) -> None:
    """Turn off Nagle's algorithm on the host's SSH socket.

    paramiko leaves it on, and every pyinfra command is a burst of small SSH messages (channel
    open, exec, EOF, close): with Nagle and the peer's delayed ACK each command waits ~40 ms
    (measured here: a converged 1-host apply of the sample 3.35 s with it, 0.92 s without).
    """
    client = getattr(host.connector, "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _stop_reason(state: State, capture: _Capture, exc: PyinfraError) -> str | None:
    """Why pyinfra stopped, or None when its "No hosts remaining!" only sums up hosts that
    each failed with their own error (reported per host: the summary would bury them)."""
    if not state.active_hosts and all(capture.host_errors.get(h.name)
                                      for h in state.failed_hosts):
        return None
    return str(exc)


def _describe(exc: BaseException) -> str:
    """An exception as one line; some of pyinfra's (click-based) errors fail in ``str()``."""
    try:
        text = str(exc)
    except Exception:
        text = ", ".join(str(a) for a in getattr(exc, "args", ()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _deploy_error(exc: BaseException, root: Path) -> str:
    """An exception a deploy raised, at the user's line: ``deploys/web/deploy.py:12: NameError:
    name 'x' is not defined``, the deepest frame inside the repository (an included task file,
    not pyinfra's internals), paths relative to the repository, not to the snapshot."""
    while isinstance(exc, UnexpectedExternalError):  # pyinfra's wrapper, once per exec'd file
        exc = exc.exception
    prefix = f"{root}{os.sep}"
    where: tuple[str, int | None] | None = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = (exc.filename, exc.lineno)
        text = f"SyntaxError: {exc.msg}"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename.startswith(prefix):
                where = (frame.filename, frame.lineno)
        text = _describe(exc)
    text = text.replace(prefix, "")
    if where is None or not where[0].startswith(prefix):
        return text
    return f"{where[0].removeprefix(prefix)}:{where[1]}: {text}"


def _service_of(name: str) -> str | None:
    return name.split(" | ", 1)[0] if " | " in name else None


def _op_name(state: State, op_hash: str) -> str:
    names = sorted(state.op_meta[op_hash].names)
    return names[0] if names else op_hash


def _sudo_said(dh: DeclaredHost, error: str | None, *stderr: str) -> str | None:
    """``error``, or one line saying what to do when sudo asked for a password on ``dh``
    (a fact or an operation run with ``_sudo``, or the guard's own commands)."""
    said = remote.sudo_failure(dh.name, dh.ssh.user, " ".join([error or "", *stderr]))
    return said or error


def _stderr_tail(meta: Any, lines: int = 20) -> str:
    output = getattr(meta, "_combined_output", None)
    if output is None:
        return ""
    err = [line.line for line in output if getattr(line, "buffer_name", "") == "stderr"]
    return "\n".join((err or [line.line for line in output])[-lines:])


_did_change = OperationMeta.did_change
_forced: set[int] = set()
"""``id()`` of the operations that count as changed while executing (see ``_Journal``)."""


def _did_change_or_forced(self: OperationMeta) -> bool:
    return bool(_did_change(self) or (id(self) in _forced and self.did_succeed(False)))


class _Journal(BaseStateCallback):
    """Journals each host's operations as they run (``gitops.pipeline.journal``), and makes the
    operations an interrupted apply changed count as changed once, so what depends on them
    (``_if=``: a restart after a configuration change) runs although the change is done;
    every operation of a host whose apply was cut on another controller (``journal.ANY``)."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        self.folder = folder
        self.pending = {name: journal.pending(folder, name) for name in names}
        self.undone_services: dict[str, frozenset[str]] = {}
        """host -> the guarded services whose operations are not forced there (reverted)."""
        self.writers: dict[str, journal.Writer] = {}
        self.journaled: set[str] = set()
        """The hosts this apply journaled (an operation started)."""
        self.interrupted = journal.interrupted(folder)
        self.current: dict[str, str] = {}
        # before the deploy files bind ``meta.did_change`` for their ``_if=`` arguments
        OperationMeta.did_change = _did_change_or_forced  # type: ignore[method-assign]

    def undone(self, reverted: dict[str, str], services: frozenset[str]) -> None:
        """Hosts where a guard's revert ran (``gitops.pipeline.guard``): what the interrupted apply
        changed in the guarded services was undone there, so it is not forced again; the
        next apply finds those changes to make, and what depends on them follows."""
        for host in reverted:
            self.undone_services[host] = services

    def forced(self, state: State, host: Any) -> list[str]:
        """The hashes of ``host``'s operations that count as changed once: those the
        interrupted apply changed (all of them after a cut elsewhere), but for the services
        a guard's revert undid."""
        wanted = self.pending.get(host.name) or set()
        undone = self.undone_services.get(host.name, frozenset())
        return [op_hash for op_hash in _host_ops(state, host)
                if (journal.ANY in wanted or _op_name(state, op_hash) in wanted)
                and _service_of(_op_name(state, op_hash)) not in undone]

    def arm(self, state: State) -> None:
        """Before executing: journal from now on; force what the interrupted apply changed."""
        state.add_callback_handler(self)
        for host in state.inventory:
            forced = self.forced(state, host)
            if not forced:
                continue
            _forced.update(id(state.ops[host][h].operation_meta) for h in forced)
            if journal.ANY in self.pending.get(host.name, set()):
                _progress(f"{host.name}: an interrupted apply on another controller may have "
                          f"changed any of its {len(forced)} operations; what depends on them "
                          "runs again")
            else:
                earlier = ("an interrupted apply" if host.name in self.interrupted
                           else "the last apply, which failed,")
                _progress(f"{host.name}: {earlier} changed "
                          f"{', '.join(_op_name(state, h) for h in forced)}; what depends on "
                          "it runs again")

    def operation_host_start(self, state: State, host: Any, op_hash: str) -> None:  # type: ignore[override]
        self._done(state, host)
        if op_hash in state.ops[host]:
            if host.name not in self.writers:
                self.writers[host.name] = journal.Writer(self.folder, host.name)
                self.journaled.add(host.name)
            self.writers[host.name].start(_op_name(state, op_hash))
            self.current[host.name] = op_hash

    def _done(self, state: State, host: Any) -> None:
        op_hash = self.current.pop(host.name, None)
        meta = state.ops[host][op_hash].operation_meta if op_hash else None
        if op_hash and meta is not None and meta.is_complete():
            self.writers[host.name].done(_op_name(state, op_hash),
                                         changed=meta.did_succeed(False) and _did_change(meta))

    def stop(self, state: State) -> None:
        """After executing: nothing is forced any more (the report says what changed)."""
        _forced.clear()
        for host in state.inventory:
            if host.name in self.writers:
                self._done(state, host)
                self.writers.pop(host.name).close()

    def finish(self, report: ApplyReport) -> None:
        """A host whose apply completed has nothing pending any more; one whose apply ended
        failed is marked so (not cut: the next run is an ordinary one)."""
        for h in report.hosts:
            if h.status == "ok":
                journal.clear(self.folder, h.host)
            elif h.host in self.journaled:
                why = (h.error or h.status).splitlines()
                journal.failed(self.folder, h.host, why[0] if why else h.status)


class _Guards:
    """The guarded applies of one worker (``gitops.pipeline.guard``): which operations of guarded
    services change which files and units (read while the deploys load), and, per host, the
    revert armed before its first change."""

    def __init__(self, declared: DeclaredState) -> None:
        self.services = frozenset(declared.guarded)
        self.declared = {h.name: h for h in declared.hosts}
        self.files = declared.guard_files
        self.timeout = declared.settings.guard.confirm_timeout
        self.targets: dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        """(host, op hash) -> the service, the files and the units the operation changes."""
        self.token: dict[str, str] = {}
        self.saved: dict[str, dict[str, int]] = defaultdict(dict)
        self.units: dict[str, list[str]] = defaultdict(list)
        self.earlier: dict[str, str] = {}
        self.contact: dict[str, str] = {}
        self.applied: dict[str, set[str]] = defaultdict(set)
        self.beats: list[Any] = []

    def note(self, host: str, op_hash: str, service: str) -> None:
        """Called from inside an operation's call in a guarded service's deploy: read what
        it changes from the operation's own arguments."""
        frame = sys._getframe(2)  # recording() <- pyinfra's decorated operation
        func, args, kwargs = (frame.f_locals.get(k) for k in ("func", "args", "kwargs"))
        files: tuple[str, ...] = ()
        units: tuple[str, ...] = ()
        if callable(func) and isinstance(args, tuple) and isinstance(kwargs, dict):
            try:
                bound = inspect.signature(func).bind_partial(*args, **kwargs).arguments
            except (TypeError, ValueError):
                bound = {}
            module = str(getattr(func, "__module__", "")).rsplit(".", 1)[-1]
            files, units = guard.targets(module, getattr(func, "__name__", ""), bound)
        self.targets[(host, op_hash)] = (service, files, units)
        self.applied[host].add(service)

    def restores(self, host: str, op_hash: str, seen: set[str]) -> list[str]:
        """What a revert would restore for this operation (``gitops plan``)."""
        service, files, units = self.targets.get((host, op_hash), ("", (), ()))
        out = []
        for path in (*self.files.get(service, ()), *files):
            if path not in seen:
                seen.add(path)
                out.append(path)
        for unit in units:
            if f"restart {unit}" not in seen:
                seen.add(f"restart {unit}")
                out.append(f"restart {unit}")
        return out

    def wrap(self, host: str, op_hash: str, generator: Any) -> Any:
        """``generator`` that, before its first command (the operation changes the host),
        arms the host's revert and saves what the operation changes."""
        if (host, op_hash) not in self.targets:
            return generator

        def guarded() -> Any:
            inner = generator()
            first = next(inner, None)
            if first is None:
                return  # nothing to change: nothing armed, nothing saved
            yield StringCommand(self._before_change(host, op_hash))
            yield first
            yield from inner

        return guarded

    def _before_change(self, host: str, op_hash: str) -> str:
        service, files, units = self.targets[(host, op_hash)]
        parts = []
        if host not in self.token:
            self.token[host] = token_source.token_hex(8)
            parts.append(guard.arm_command(self.token[host], self.timeout))
            _progress(f"{host}: guard armed (reverts by itself {self.timeout} s after the "
                      "apply unless the controller reaches it again)")
            self.beats.append(gevent.spawn(self._beat, ctx_host.get()))
        saved = self.saved[host]
        new = [p for p in (*self.files.get(service, ()), *files) if p not in saved]
        for path in new:
            saved[path] = len(saved) + 1
        if new:
            parts.append(guard.save_command((saved[p], p) for p in new))
        fresh = [u for u in units if u not in self.units[host]]
        if fresh:
            self.units[host] += fresh
            parts.append(guard.unit_command(fresh))
        parts.append(guard.extend_command(self.timeout))
        # a step that fails (no systemd-run, a file that cannot be saved) fails the
        # operation before it changes anything: never a change without its guard
        return self._root(host, " && ".join(f"( {p} )" for p in parts))

    def _root(self, host: str, command: str) -> str:
        """``command`` as root on ``host`` (``gitops.pipeline.remote``: sudo when declared)."""
        return remote.as_root(self.declared[host], command)

    def _beat(self, host: Any) -> None:
        """While the apply goes on, keep moving the host's deadline (an operation may take
        longer than the timeout: an install); stopped when the apply ends (``settle``) or
        dies with the worker, so the timeout then runs from the last beat."""
        beat = StringCommand(self._root(host.name, guard.extend_command(self.timeout)))
        aside = getattr(host.connector, "run_aside", None)  # beside a long command
        while True:
            gevent.sleep(max(1.0, self.timeout / 4))
            with contextlib.suppress(Exception):
                if aside is not None:
                    aside(beat)
                else:
                    host.run_shell_command(beat)

    def hosts(self, state: State) -> list[Any]:
        return [h for h in state.active_hosts if self.applied.get(h.name)]

    def preflight(self, state: State) -> dict[Any, str]:
        """Before executing: a revert an earlier run armed on a host is run now (never two
        guards at once), and what any earlier revert restored is recorded once. Returns the
        hosts where the guard cannot run as root (sudo wants a password), each with its
        one-line message: they must not apply."""
        refused: dict[Any, str] = {}

        def one(host: Any) -> None:
            dh = self.declared[host.name]
            try:
                ok, output = host.run_shell_command(StringCommand(
                    self._root(host.name, guard.preflight_command())))
            except Exception as exc:  # the host's own operations report a lost connection
                why = remote.sudo_failure(dh.name, dh.ssh.user, str(exc))
                if why is not None:
                    refused[host] = why
                return
            why = None if ok else remote.sudo_failure(dh.name, dh.ssh.user, output.stderr)
            if why is not None:
                refused[host] = why
                return
            answer = guard.parse_answer(output.stdout) if ok else None
            if answer is not None:
                how = (f"a revert armed by an earlier apply ({answer.earlier}) was run before "
                       "this one" if answer.earlier else
                       "an earlier guarded apply had been reverted by the host")
                self.earlier[host.name] = f"{how}: {'; '.join(answer.restored) or 'nothing'}"
                _progress(f"{host.name}: {self.earlier[host.name]}")

        hosts = self.hosts(state)
        gevent.joinall([state.pool.spawn(one, h) for h in hosts])
        return refused

    def settle(self, state: State) -> None:
        """After executing: the confirm window of each armed host starts now."""
        gevent.killall(self.beats)

        def one(host: Any) -> None:
            with contextlib.suppress(Exception):
                ok, _ = host.run_shell_command(StringCommand(
                    self._root(host.name, guard.extend_command(self.timeout))))
                if ok:
                    self.contact[host.name] = guard.utc_now()

        armed = [h for h in state.inventory if h.name in self.token]
        for h in armed:
            self.contact.setdefault(h.name, guard.utc_now())
        gevent.joinall([state.pool.spawn(one, h) for h in armed])

    def record(self, host: str) -> HostGuard | None:
        if not self.applied.get(host):
            return None
        return HostGuard(token=self.token.get(host, ""), saved=tuple(self.saved.get(host, {})),
                         units=tuple(self.units.get(host, ())),
                         last_contact=self.contact.get(host, ""),
                         earlier=self.earlier.get(host, ""),
                         services=tuple(sorted(self.applied[host])))


def run(job: Job) -> WorkerResult:
    declared = job.state
    root = Path(declared.root).absolute()  # deploys join __file__ with state.cwd
    names = [h.name for h in declared.hosts]
    capture = _Capture(names, frozenset(h.address for h in declared.hosts
                                        if h.ssh.host_key_checking == "no"))
    pyinfra_logger = logging.getLogger("pyinfra")
    pyinfra_logger.handlers[:] = [capture]
    pyinfra_logger.setLevel(logging.INFO)
    pyinfra_logger.propagate = False

    pyinfra.is_cli = True  # operation order and file loading as the CLI does them
    pyinfra_local.include = _include
    # A dry run evaluates every operation while preparing (change detection, diffs). An apply
    # does not: it executes each operation once, reading its facts once, as ``pyinfra -y``
    # does; the plan of an apply is what the execution changed, with the diffs it logged.
    state = State(check_for_changes=job.dry)
    state.cwd = str(root)
    ctx_state.set(state)
    config = Config()
    config.PARALLEL = declared.settings.parallel
    config.FAIL_PERCENT = declared.settings.fail_percent
    config.DIFF = job.diff
    ctx_config.set(config)

    groups: dict[str, tuple[list[str], dict[str, Any]]] = defaultdict(lambda: ([], {}))
    for h in declared.hosts:
        for g in h.groups:
            groups[g][0].append(h.name)
    inventory = Inventory(
        ([(h.name, _connector_data(h)) for h in declared.hosts], {}), **dict(groups)
    )
    ctx_inventory.set(inventory)
    connector.install(inventory)  # one remote shell per host, facts read once
    state.init(inventory, config)
    recorder = _Journal(Path(job.journal), names) if job.journal and not job.dry else None
    facts = factcheck.Recorder(job.skip, declared) if job.skip and not job.remove else None
    if facts is not None:
        facts.install()
    guards = _Guards(declared) if declared.guarded else None

    started = time.monotonic()
    stopped: str | None = None
    state.set_stage(StateStage.Connect)
    try:
        connect_all(state)
    except PyinfraError as exc:
        stopped = _stop_reason(state, capture, exc)
    for host in state.active_hosts:
        _no_delay(host)
    _progress(f"connected to {len(state.active_hosts)}/{len(names)} hosts")

    by_name = {h.name: h for h in inventory}
    skipped: set[str] = set()
    if facts is not None and stopped is None:
        skipped = facts.check(state, lambda name: bool(recorder and recorder.pending.get(name)))
        if skipped:
            _progress(f"{len(skipped)} host(s) unchanged by fingerprint: their operations "
                      "are not run")
    capture.collecting = True
    if stopped is None:
        state.set_stage(StateStage.Prepare)
        try:
            for index, service in enumerate(declared.service_order):
                targets = [
                    h
                    for h in declared.hosts
                    if service in h.services and by_name[h.name] in state.active_hosts
                    and h.name not in skipped
                ]
                if targets:
                    _load_service(state, config, index, root, service, targets, by_name,
                                  guards if guards and service in guards.services else None,
                                  job.dry, script="remove.py" if job.remove else "deploy.py",
                                  watch=facts)
                    _progress(f"{'planned' if job.dry else 'loaded'} "
                              f"{'removal of ' if job.remove else ''}{service} on "
                              f"{len(targets)} host(s)")
        except PyinfraError as exc:
            stopped = _stop_reason(state, capture, exc)

    if job.dry:
        plan = _plan(state, declared, capture, guards)
        _disconnect(state)
        return WorkerResult(plan=facts.annotate_plan(plan) if facts else plan, apply=None)

    if stopped is None and state.active_hosts:
        _progress(f"applying on {len(state.active_hosts)} host(s)")
        if guards is not None:
            refused = guards.preflight(state)
            for host, why in refused.items():
                capture.host_errors[host.name].append(why)
            try:  # a host whose guard cannot run as root applies nothing
                state.fail_hosts(set(refused))
            except PyinfraError as exc:
                stopped = _stop_reason(state, capture, exc)
            if recorder is not None:  # what a revert undid is not pending any more
                recorder.undone(guards.earlier, guards.services)
    if stopped is None and state.active_hosts:
        if recorder is not None:
            recorder.arm(state)
        state.set_stage(StateStage.Execute)
        try:
            run_ops(state)
        except PyinfraError as exc:
            stopped = _stop_reason(state, capture, exc)
        except Exception as exc:  # a connection dying mid-run must not lose the other hosts'
            stopped = _describe(exc)
    if guards is not None:
        guards.settle(state)
    state.set_stage(StateStage.Disconnect)
    if recorder is not None:
        recorder.stop(state)
    report = _report(state, declared, capture, stopped, started, guards)
    if recorder is not None:
        recorder.finish(report)
    plan = _executed_plan(report, capture, state, declared)
    if facts is not None:
        facts.finish(report, skipped)
        report, plan = facts.annotate_report(report), facts.annotate_plan(plan)
    _disconnect(state)
    return WorkerResult(plan=plan, apply=report)


def _load_service(
    state: State,
    config: Config,
    index: int,
    root: Path,
    service: str,
    targets: list[DeclaredHost],
    by_name: dict[str, Any],
    guards: _Guards | None = None,
    dry: bool = True,
    script: str = "deploy.py",
    watch: factcheck.Recorder | None = None,
) -> None:
    """Load ``deploys/<service>/<script>`` (``deploy.py``, or ``remove.py`` for a removal)
    for each target host, as the CLI loads a file.

    Relative paths in the deploy (``local.include("tasks/web.py")``,
    ``files.template(src="templates/site.j2")``) resolve against the service's folder, as
    the ``pyinfra`` CLI run in that folder resolves them, also when an apply executes them.
    """
    folder = str(root / "deploys" / service)
    filename = str(Path(folder) / script)
    config.lock_current_state()
    state.current_op_file_number = index
    state.current_deploy_filename = filename
    state.cwd = folder
    known = {h.name: set(state.ops[by_name[h.name]]) for h in targets}
    calls: dict[str, str] = {}
    record = state.set_op_data_for_host

    def recording(host: Any, op_hash: str, op_data: Any) -> None:
        calls.setdefault(op_hash, _call_site(root))
        if guards is not None:
            guards.note(host.name, op_hash, service)
        record(host, op_hash, op_data)

    state.set_op_data_for_host = recording  # type: ignore[method-assign]

    def load(declared: DeclaredHost) -> BaseException | None:
        host = by_name[declared.name]
        try:
            with (
                ctx_config.use(state.config.copy()),
                ctx_host.use(host),
                host.deploy(service, None, dict(declared.services[service])),
                watch.deploying_on(declared.name) if watch else contextlib.nullcontext(),
            ):
                exec_file(filename)
        except BaseException as exc:  # reported per host below
            return exc
        return None

    greenlets = {state.pool.spawn(load, h): h for h in targets}
    failed = set()
    for greenlet in gevent.iwait(list(greenlets)):
        exc = greenlet.get()
        if exc is not None:
            host = by_name[greenlets[greenlet].name]
            host.log(_deploy_error(exc, root), logging.getLogger("pyinfra").error)
            failed.add(host)
    config.reset_locked_state()
    del state.set_op_data_for_host
    for declared in targets:
        for op_hash, data in state.ops[by_name[declared.name]].items():
            if op_hash not in known[declared.name]:
                data.command_generator = _in_folder(state, folder, data.command_generator,
                                                     root, calls.get(op_hash, ""))
                if watch is not None:
                    data.command_generator = watch.body(declared.name, data.command_generator)
                if guards is not None and not dry:
                    data.command_generator = guards.wrap(declared.name, op_hash,
                                                         data.command_generator)
    if failed:
        state.fail_hosts(failed)


def _call_site(root: Path) -> str:
    """``deploys/<svc>/FILE:LINE`` of the innermost repository frame calling an operation."""
    prefix = f"{root}{os.sep}"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(prefix):
            return f"{frame.f_code.co_filename.removeprefix(prefix)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _in_folder(state: State, folder: str, generator: Any, root: Path, call: str) -> Any:
    """``generator`` run with ``state.cwd`` at ``folder``: an apply runs an operation's body
    (where pyinfra joins relative paths with ``state.cwd``) only when it executes it. An
    exception there (a template that is not in the repository) fails that operation on that
    host, reported at the user's line, instead of ending the whole apply."""

    def in_folder() -> Any:
        state.cwd = folder
        try:
            yield from generator()
        except Exception as exc:
            error = _deploy_error(exc, root)
            if call and not error.startswith("deploys/"):
                error = f"{call}: {error}"
            yield FunctionCommand(_fail_operation, (error,), {})

    return in_folder


def _fail_operation(state: State, host: Any, message: str) -> bool:
    host.log(message, logging.getLogger("pyinfra").error)
    return False


_pyinfra_include = pyinfra_local.include


def _include(filename: str, data: dict[str, Any] | None = None) -> None:
    """``local.include`` that hands the service's parameters on to the included file.

    The parameters are the service's pyinfra deploy data, and pyinfra's own ``include``
    replaces the deploy data with ``data`` (none by default): a task file would lose
    ``host.data.port``. Given ``data`` is merged over them.
    """
    current = ctx_host.get().current_deploy_data or {}
    _pyinfra_include(filename, {**current, **(data or {})})


def _host_ops(state: State, host: Any) -> list[str]:
    """The hashes of the operations ``host`` has, in operation order."""
    return [op_hash for op_hash in state.get_op_order() if op_hash in state.ops[host]]


def _conditions(data: Any) -> list[Any]:
    ifs = data.global_arguments.get("_if")
    if not ifs:
        return []
    return list(ifs) if isinstance(ifs, (list, tuple)) else [ifs]


def _predict(state: State, host: Any) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Per operation of ``host``: whether the apply would change it, and the operations its
    ``_if=`` condition reads.

    A dry run evaluates every operation as if its ``_if=`` held, so a handler such as
    ``_if=unit.did_change`` always looks like a change. Here each condition is evaluated, in
    operation order, with ``did_change()`` answering what the plan predicts for that operation
    (pyinfra's ``any_changed``/``all_changed`` and hand-written lambdas alike). A condition
    that reads something only an execution knows (a command's output) counts as holding.
    """
    predicted: dict[str, bool] = {}
    result: dict[str, tuple[bool, tuple[str, ...]]] = {}
    consulted: list[str] = []

    def did_change(self: OperationMeta) -> bool:
        consulted.append(self._hash)
        return predicted.get(self._hash, bool(self._maybe_is_change))

    original = OperationMeta.did_change
    OperationMeta.did_change = did_change  # type: ignore[method-assign]
    try:
        with ctx_host.use(host):
            for op_hash in _host_ops(state, host):
                data = state.get_op_data_for_host(host, op_hash)
                change = bool(data.operation_meta._maybe_is_change)
                consulted.clear()
                for condition in _conditions(data):
                    meta = getattr(condition, "__self__", None)
                    if isinstance(meta, OperationMeta):  # ``_if=op.did_change``, bound before
                        condition = getattr(meta, condition.__func__.__name__)
                    try:
                        holds = bool(condition())
                    except Exception:
                        holds = True
                    if not holds:
                        change = False
                        break
                reads = tuple(dict.fromkeys(h for h in consulted if h != op_hash))
                predicted[op_hash] = change
                result[op_hash] = (change, reads)
    finally:
        OperationMeta.did_change = original  # type: ignore[method-assign]
    return result


def _plan(state: State, declared: DeclaredState, capture: _Capture,
          guards: _Guards | None = None) -> Plan:
    hosts = []
    for dh in declared.hosts:
        host = state.inventory.get_host(dh.name)
        error = _sudo_said(dh, "; ".join(capture.host_errors.get(dh.name, [])) or None)
        if host in state.failed_hosts and error is None:
            error = "failed while planning"
        predictions = _predict(state, host)
        ops = []
        restores: list[str] = []
        seen: set[str] = set()
        for op_hash in _host_ops(state, host):
            if guards is not None and predictions[op_hash][0]:
                restores += guards.restores(dh.name, op_hash, seen)
            data = state.get_op_data_for_host(host, op_hash)
            name = _op_name(state, op_hash)
            change, reads = predictions[op_hash]
            diff = capture.diffs.get((dh.name, op_hash)) if change else None
            ops.append(
                OpPlan(
                    name=name,
                    service=_service_of(name),
                    would_change=change,
                    conditional=bool(_conditions(data)),
                    depends_on=tuple(_op_name(state, h) for h in reads
                                     if predictions.get(h, (False, ()))[0]),
                    diff="\n".join(diff) if diff else None,
                )
            )
        hosts.append(HostPlan(host=dh.name, ops=tuple(ops), error=error,
                              guard_restores=tuple(restores)))
    return Plan(hosts=tuple(hosts), guarded=declared.guarded,
                confirm_timeout=declared.settings.guard.confirm_timeout
                if declared.guarded else None)


def _executed_plan(
    report: ApplyReport, capture: _Capture, state: State, declared: DeclaredState
) -> Plan:
    """The plan of an apply: per host, the operations that changed, with their diffs."""
    hosts = []
    for dh, applied in zip(declared.hosts, report.hosts, strict=True):
        host = state.inventory.get_host(dh.name)
        ops = []
        for op_hash, result in zip(_host_ops(state, host), applied.ops, strict=True):
            changed = result.status == "changed"
            diff = capture.diffs.get((dh.name, op_hash)) if changed else None
            ops.append(OpPlan(
                name=result.name,
                service=result.service,
                would_change=changed,
                conditional=bool(state.get_op_data_for_host(host, op_hash)
                                 .global_arguments.get("_if")),
                diff="\n".join(diff) if diff else None,
            ))
        hosts.append(HostPlan(host=dh.name, ops=tuple(ops), error=applied.error))
    return Plan(hosts=tuple(hosts))


def _report(
    state: State,
    declared: DeclaredState,
    capture: _Capture,
    stopped: str | None,
    started: float,
    guards: _Guards | None = None,
) -> ApplyReport:
    hosts = []
    for dh in declared.hosts:
        host = state.inventory.get_host(dh.name)
        results = []
        failed_op = False
        for op_hash in _host_ops(state, host):
            meta = state.ops[host][op_hash].operation_meta
            name = _op_name(state, op_hash)
            if not meta.is_complete():
                status = "skipped"
            elif meta.did_succeed(_raise_if_not_complete=False):
                status = "changed" if meta.did_change() else "unchanged"
            else:
                status = "failed"
                failed_op = True
            results.append(
                OpResult(
                    name=name,
                    service=_service_of(name),
                    status=status,
                    stderr=_stderr_tail(meta) if status == "failed" else "",
                )
            )
        error = _sudo_said(dh, "; ".join(capture.host_errors.get(dh.name, [])[-5:]) or None,
                           *(r.stderr for r in results))
        connected = host.connected if hasattr(host, "connected") else True
        if host in state.failed_hosts:
            status_h = "failed" if failed_op or connected else "unreachable"
        elif stopped and any(r.status == "skipped" for r in results):
            status_h = "skipped"
        else:
            status_h = "ok"
        hosts.append(
            HostApply(
                host=dh.name,
                status=status_h,
                error=error if status_h != "ok" else None,
                ops=tuple(results),
                guard=guards.record(dh.name) if guards is not None else None,
            )
        )
    return ApplyReport(hosts=tuple(hosts), stopped=stopped, duration_s=time.monotonic() - started)


def _disconnect(state: State) -> None:
    with contextlib.suppress(Exception):  # disconnect problems change nothing that happened
        disconnect_all(state)


def main() -> None:
    die_with_parent()
    job = Job.model_validate_json(sys.stdin.read())
    secrets.serve_decrypted_files(job.state)  # *.sops.* deploy files, uploaded decrypted
    sys.stderr = secrets.RedactingStream(sys.stderr, job.state.redact)
    # Deploy code may print: keep stdout for the one JSON result.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    result = secrets.redact(run(job), job.state.redact)
    with os.fdopen(result_fd, "w") as out:
        out.write(result.model_dump_json())


if __name__ == "__main__":
    main()
