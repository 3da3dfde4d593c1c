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

The worker's parts: ``apply_deploys`` loads the deploy files, ``apply_guards`` runs a guarded
apply's remote steps, ``apply_journal`` journals an apply, ``factcheck`` skips and records
unchanged hosts, ``apply_results`` shapes what pyinfra did into the result.
"""

from __future__ import annotations

# isort: off
from gitops.workers import startup  # noqa: F401  # first: gevent's patching (see there)
# isort: on
import contextlib
import functools
import logging
import os
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gevent
import pyinfra
from pydantic import BaseModel
from pyinfra import local as pyinfra_local
from pyinfra.api.config import Config
from pyinfra.api.connect import disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State, StateStage
from pyinfra.context import ctx_config, ctx_inventory, ctx_state

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline.factskip import Skip
from gitops.pipeline.worker import die_with_parent
from gitops.records import ApplyReport, Plan, VerifyReport, WorkerResult
from gitops.workers import (
    apply_results,
    connector,
    factcheck,
    secrets,
    verify_channel,
    verify_worker,
)
from gitops.workers.apply_deploys import describe, include, load_service
from gitops.workers.apply_guards import Guards
from gitops.workers.apply_journal import Journal
from gitops.workers.apply_ops import progress

__all__ = ["Job", "main", "run"]


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
    checks_only: bool = False
    """Apply nothing: connect, run the checks of every host of ``state`` (``verify``), end."""
    verify: DeclaredState | None = None
    """After an apply, run the checks of these hosts (all their services) where the apply
    left them ``ok``, over the apply's own SSH connections (``verify_channel``)."""




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


def run(job: Job) -> WorkerResult:
    declared = job.state
    root = Path(declared.root).absolute()  # deploys join __file__ with state.cwd
    names = [h.name for h in declared.hosts]
    capture = apply_results.Capture(names, frozenset(h.address for h in declared.hosts
                                                     if h.ssh.host_key_checking == "no"))
    pyinfra_logger = logging.getLogger("pyinfra")
    pyinfra_logger.handlers[:] = [capture]
    pyinfra_logger.setLevel(logging.INFO)
    pyinfra_logger.propagate = False

    pyinfra.is_cli = True  # operation order and file loading as the CLI does them
    pyinfra_local.include = include
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
    recorder = Journal(Path(job.journal), names) if job.journal and not job.dry else None
    facts = factcheck.Recorder(job.skip, declared) if job.skip and not job.remove else None
    if facts is not None:
        facts.install()
    guards = Guards(declared) if declared.guarded else None

    started = time.monotonic()
    stopped: str | None = None
    executed = False
    state.set_stage(StateStage.Connect)
    try:
        _connect_all(state, capture)
    except PyinfraError as exc:
        stopped = apply_results.stop_reason(state, capture, exc)
    for host in state.active_hosts:
        _no_delay(host)
    progress(f"connected to {len(state.active_hosts)}/{len(names)} hosts")

    by_name = {h.name: h for h in inventory}
    if job.checks_only:
        return _checks_only(declared, state, capture, by_name)
    skipped: set[str] = set()
    if facts is not None and stopped is None:
        skipped = facts.check(state, lambda name: bool(recorder and recorder.pending.get(name)))
        if skipped:
            progress(f"{len(skipped)} host(s) unchanged by fingerprint: their operations "
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
                    load_service(state, config, index, root, service, targets, by_name,
                                 guards if guards and service in guards.services else None,
                                 job.dry, script="remove.py" if job.remove else "deploy.py",
                                 watch=facts)
                    progress(f"{'planned' if job.dry else 'loaded'} "
                             f"{'removal of ' if job.remove else ''}{service} on "
                             f"{len(targets)} host(s)")
        except PyinfraError as exc:
            stopped = apply_results.stop_reason(state, capture, exc)

    if job.dry:
        plan = apply_results.plan(state, declared, capture, guards)
        _disconnect(state)
        return WorkerResult(plan=facts.annotate_plan(plan) if facts else plan, apply=None)

    if stopped is None and state.active_hosts:
        applying = sum(1 for h in state.active_hosts if h.name not in skipped)
        if applying:  # hosts skipped by fingerprint were said above
            progress(f"applying on {applying} host(s)")
        if guards is not None:
            refused = guards.preflight(state)
            for host, why in refused.items():
                capture.host_errors[host.name].append(why)
            try:  # a host whose guard cannot run as root applies nothing
                state.fail_hosts(set(refused))
            except PyinfraError as exc:
                stopped = apply_results.stop_reason(state, capture, exc)
            if recorder is not None:  # what a revert undid is not pending any more
                recorder.undone(guards.earlier, guards.services)
    if stopped is None and state.active_hosts:
        if recorder is not None:
            recorder.arm(state)
        state.set_stage(StateStage.Execute)
        executed = True
        try:
            run_ops(state)
        except PyinfraError as exc:
            stopped = apply_results.stop_reason(state, capture, exc)
        except Exception as exc:  # a connection dying mid-run must not lose the other hosts'
            stopped = describe(exc)
    if guards is not None:
        guards.settle(state)
    state.set_stage(StateStage.Disconnect)
    if recorder is not None:
        recorder.stop(state)
    not_run = frozenset() if executed or stopped is None else frozenset(
        h.name for h in declared.hosts if h.name not in skipped)
    report = apply_results.report(state, declared, capture, stopped, started, guards, not_run)
    if recorder is not None:
        recorder.finish(report)
    plan = apply_results.executed_plan(report, capture, state, declared)
    if facts is not None:
        facts.finish(report, skipped)
        report, plan = facts.annotate_report(report), facts.annotate_plan(plan)
    checks, verified = (_verify(job.verify, report, by_name) if job.verify is not None
                        else (None, ()))
    _disconnect(state)
    return WorkerResult(plan=plan, apply=report, verify=checks, verified=verified)


def _verify(wanted: DeclaredState, report: ApplyReport, by_name: dict[str, Any]
            ) -> tuple[VerifyReport | None, tuple[str, ...]]:
    """The checks of ``wanted``'s hosts that this apply left ``ok`` and connected, each in
    a session of the host's apply connection; and which hosts those are. None when the
    apply armed a guard on a host: its confirmation, after this worker ends, must not wait
    for checks (the host would revert by itself)."""
    if any(h.guard is not None and h.guard.token for h in report.hosts):
        return None, ()
    ok = {h.host for h in report.hosts if h.status == "ok"}
    opens: dict[str, verify_worker.Opener] = {}
    for h in wanted.hosts:
        host = by_name.get(h.name)
        client = getattr(getattr(host, "connector", None), "client", None)
        transport = client.get_transport() if client is not None else None
        if h.name in ok and transport is not None and transport.is_active():
            opens[h.name] = functools.partial(verify_channel.connect_over, h.name, transport)
    if not opens:
        return VerifyReport(results=()), ()
    progress(f"verifying {len(opens)} host(s) over the apply's connections")
    checks = verify_worker.run_over(wanted, opens, progress)
    return checks, tuple(h.name for h in wanted.hosts if h.name in opens)



def _checks_only(declared: DeclaredState, state: State, capture: apply_results.Capture,
                 by_name: dict[str, Any]) -> WorkerResult:
    """The checks of every host of ``declared`` over the connections just opened; a host
    not connected is reported with why."""
    connected = {host.name for host in state.active_hosts}
    failed = {h.name: verify_worker.HostOutcome(
        h.name, (), "; ".join(capture.host_errors.get(h.name, ())) or "cannot connect", 0.0)
        for h in declared.hosts if h.name not in connected}
    for outcome in failed.values():
        progress(verify_worker.summary(outcome))
    opens = {name: functools.partial(verify_channel.connect_over, name,
                                     by_name[name].connector.client.get_transport())
             for name in connected}
    checks = verify_worker.run_over(declared, opens, progress, failed)
    _disconnect(state)
    return WorkerResult(plan=Plan(hosts=()), verify=checks,
                        verified=tuple(h.name for h in declared.hosts))


def _connect_all(state: State, capture: apply_results.Capture) -> None:
    """pyinfra's ``connect_all``, each host on its own: a connector that raises (a key file
    it cannot read, say) fails that host with the reason, where pyinfra's stops at the
    first such host and leaves every host after it neither connected nor failed (then
    reported ``ok`` with nothing applied)."""
    hosts = [host for host in state.inventory if state.is_host_in_limit(host)]
    greenlets = {state.pool.spawn(host.connect): host for host in hosts}
    gevent.joinall(list(greenlets))
    failed = set()
    for greenlet, host in greenlets.items():
        if greenlet.exception is not None:
            capture.host_errors[host.name].append(f"cannot connect: {greenlet.exception}")
            failed.add(host)
        elif host.connected:
            state.activate_host(host)
        else:
            failed.add(host)
    state.fail_hosts(failed, activated_count=len(hosts))


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
