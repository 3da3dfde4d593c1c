"""What the apply worker reports: pyinfra's log kept per host and per operation, and the
``Plan`` and ``ApplyReport`` read off pyinfra's State after a dry run or an apply."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import OperationMeta
from pyinfra.api.state import State
from pyinfra.context import ctx_host

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import remote
from gitops.records import ApplyReport, HostApply, HostPlan, OpPlan, OpResult, Plan
from gitops.workers.apply_guards import Guards
from gitops.workers.apply_ops import host_ops, op_name, progress, service_of

__all__ = ["Capture", "executed_plan", "plan", "report", "stop_reason"]

_NO_HOST_KEY = "No host key for %s found in known_hosts"
"""What pyinfra's ``WarningPolicy`` (host key checking off) logs at every connection."""


class Capture(logging.Handler):
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
        progress(message)


def stop_reason(state: State, capture: Capture, exc: PyinfraError) -> str | None:
    """Why pyinfra stopped, or None when its "No hosts remaining!" only sums up hosts that
    each failed with their own error (reported per host: the summary would bury them)."""
    if not state.active_hosts and state.failed_hosts and all(
            capture.host_errors.get(h.name) for h in state.failed_hosts):
        return None
    return str(exc)


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
            for op_hash in host_ops(state, host):
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


def plan(state: State, declared: DeclaredState, capture: Capture,
         guards: Guards | None = None) -> Plan:
    """The plan of a dry run: per host, each operation, whether it would change, its diff,
    and what a guard's revert would restore."""
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
        for op_hash in host_ops(state, host):
            if guards is not None and predictions[op_hash][0]:
                restores += guards.restores(dh.name, op_hash, seen)
            data = state.get_op_data_for_host(host, op_hash)
            name = op_name(state, op_hash)
            change, reads = predictions[op_hash]
            diff = capture.diffs.get((dh.name, op_hash)) if change else None
            ops.append(
                OpPlan(
                    name=name,
                    service=service_of(name),
                    would_change=change,
                    conditional=bool(_conditions(data)),
                    depends_on=tuple(op_name(state, h) for h in reads
                                     if predictions.get(h, (False, ()))[0]),
                    diff="\n".join(diff) if diff else None,
                )
            )
        hosts.append(HostPlan(host=dh.name, ops=tuple(ops), error=error,
                              guard_restores=tuple(restores)))
    return Plan(hosts=tuple(hosts), guarded=declared.guarded,
                confirm_timeout=declared.settings.guard.confirm_timeout
                if declared.guarded else None)


def executed_plan(
    report: ApplyReport, capture: Capture, state: State, declared: DeclaredState
) -> Plan:
    """The plan of an apply: per host, the operations that changed, with their diffs."""
    hosts = []
    for dh, applied in zip(declared.hosts, report.hosts, strict=True):
        host = state.inventory.get_host(dh.name)
        ops = []
        for op_hash, result in zip(host_ops(state, host), applied.ops, strict=True):
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


def report(
    state: State,
    declared: DeclaredState,
    capture: Capture,
    stopped: str | None,
    started: float,
    guards: Guards | None = None,
    not_run: frozenset[str] = frozenset(),
) -> ApplyReport:
    """What an apply did: per host, each operation's status, the host's error and guard.
    ``not_run``: hosts the apply stopped before running any operation on (``skipped``,
    never ``ok``: nothing was applied there, so nothing is recorded or checked)."""
    hosts = []
    for dh in declared.hosts:
        host = state.inventory.get_host(dh.name)
        results = []
        failed_op = False
        for op_hash in host_ops(state, host):
            meta = state.ops[host][op_hash].operation_meta
            name = op_name(state, op_hash)
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
                    service=service_of(name),
                    status=status,
                    stderr=_stderr_tail(meta) if status == "failed" else "",
                )
            )
        error = _sudo_said(dh, "; ".join(capture.host_errors.get(dh.name, [])[-5:]) or None,
                           *(r.stderr for r in results))
        connected = host.connected if hasattr(host, "connected") else True
        if host in state.failed_hosts:
            status_h = "failed" if failed_op or connected else "unreachable"
        elif stopped and dh.name in not_run:
            status_h = "skipped"
            error = error or "not applied: the apply stopped before it ran any operation"
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
