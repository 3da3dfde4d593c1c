"""Stages 3 and 4: plan (pyinfra dry run) and apply, through pyinfra worker processes.

``plan`` reports per host and operation whether it would change, with file diffs; ``apply``
executes every operation once (each fact read once, like ``pyinfra -y``) and returns what
changed, with diffs, as its plan, and the per-operation results. Hosts
run in parallel; a failed host stops the others only past the environment's fail percentage.
Called by ``reconcile`` and the CLI; never imports pyinfra itself.

A big batch is split across worker processes (``settings.workers``, by default as many as
the controller has cores, each with at least ``MIN_HOSTS_PER_WORKER`` hosts): one worker
process runs on one core, and its cost per host is mostly the controller's CPU. Each worker
applies its share of the hosts; the results are put back in the state's host order. The fail
percentage holds within each worker's share.

A guarded apply (``gitops.pipeline.guard``) is confirmed here, after the workers have gone:
each host where a worker armed a revert is reached again over a new SSH connection, which
disarms it; a host that reverted by itself is ``RevertedByHost``, one never reached again
``Unreachable``. A ``Spread`` handed in (the daemon's fan-out across controllers) may take a
batch's shares to other controllers' workers instead.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gitops.errors import WorkerError
from gitops.model import DeclaredState
from gitops.pipeline import guard, hints
from gitops.pipeline.factskip import Skip
from gitops.pipeline.worker import Confined, Progress, run_worker
from gitops.records import ApplyReport, Plan, VerifyReport, WorkerResult

__all__ = ["MIN_HOSTS_PER_WORKER", "WORKER", "Applied", "Spread", "apply", "apply_then_verify",
           "job", "plan", "shares"]

WORKER = "gitops.workers.apply_worker"
MIN_HOSTS_PER_WORKER = 10
"""Below this many hosts per worker another worker costs more (its start) than it saves."""


class Spread(Protocol):
    """A fan-out of batches across controllers' workers (the daemon's
    ``gitops.daemon.fanout.Spread``): what ``apply`` and ``plan`` need of it."""

    def apply(self, state: DeclaredState, timeout: float, on_progress: Progress | None, *,
              dry: bool, journal: bool) -> list[WorkerResult] | None:
        """Each share's worker result, in share order, applied by the controllers'
        workers; None when this batch stays here."""
        ...


def job(state: DeclaredState, *, dry: bool, diff: bool, journal: Path | None = None,
        remove: bool = False, skip: Skip | None = None,
        verify: DeclaredState | None = None) -> str:
    return json.dumps({"state": state.model_dump(mode="json"), "dry": dry, "diff": diff,
                       "journal": str(journal) if journal else None, "remove": remove,
                       "skip": skip.model_dump(mode="json") if skip else None,
                       "verify": verify.model_dump(mode="json") if verify else None})


def shares(state: DeclaredState, controllers: int = 1) -> list[DeclaredState]:
    """``state`` split into the parts the worker processes apply: ``settings.workers``
    parts per controller when set, else one per core (of each of ``controllers``, this
    one's count) with at least ``MIN_HOSTS_PER_WORKER`` hosts each; consecutive hosts,
    sizes differing by one at most."""
    hosts = [h.name for h in state.hosts]
    wanted = state.settings.workers
    if wanted is None:
        wanted = min((os.cpu_count() or 1) * controllers, len(hosts) // MIN_HOSTS_PER_WORKER)
    else:
        wanted *= controllers
    count = max(1, min(wanted, len(hosts)))
    if count == 1:
        return [state]
    size, extra = divmod(len(hosts), count)
    parts, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        parts.append(state.limit(set(hosts[start:end])))
        start = end
    return parts


def _run(state: DeclaredState, timeout: float, on_progress: Progress | None, *, dry: bool,
         journal: Path | None = None, remove: bool = False,
         confined: Confined | None = None, spread: Spread | None = None,
         skip: Skip | None = None, verify: DeclaredState | None = None) -> list[WorkerResult]:
    """Each share's worker result, in share order; a failed worker fails the whole stage
    once every other worker has finished (none is stopped halfway through an apply). With
    a ``spread`` (the daemon's fan-out across controllers), the shares go to their workers
    through the database (never ``confined`` ones: a preview's, nor removals)."""
    if spread is not None and not remove and confined is None:
        remote = spread.apply(state, timeout, on_progress, dry=dry, journal=journal is not None)
        if remote is not None:
            return remote
    parts = shares(state)
    if len(parts) == 1:
        out = run_worker(WORKER, job(state, dry=dry, diff=True, journal=journal, remove=remove,
                                     skip=skip, verify=verify),
                         timeout=timeout, on_progress=on_progress, confined=confined)
        return [WorkerResult.model_validate_json(out)]
    lock = threading.Lock()

    def one(index: int, part: DeclaredState) -> WorkerResult:
        def say(line: str) -> None:
            if on_progress is not None:
                with lock:
                    on_progress(f"worker {index}/{len(parts)}: {line}")

        mine = verify.limit({h.name for h in part.hosts}) if verify is not None else None
        out = run_worker(WORKER, job(part, dry=dry, diff=True, journal=journal, remove=remove,
                                     skip=skip, verify=mine),
                         timeout=timeout, on_progress=say, confined=confined)
        return WorkerResult.model_validate_json(out)

    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="apply") as pool:
        futures = [pool.submit(one, i, part) for i, part in enumerate(parts, 1)]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        if len(failed) == 1 or not all(isinstance(e, WorkerError) for e in failed):
            raise failed[0]
        raise WorkerError("\n".join(str(e) for e in failed))
    return [f.result() for f in futures]


def _merged_plan(state: DeclaredState, results: list[WorkerResult]) -> Plan:
    by_host = {h.host: h for r in results for h in r.plan.hosts}
    return results[0].plan.model_copy(update={
        "hosts": tuple(by_host[h.name] for h in state.hosts if h.name in by_host)})


def plan(
    state: DeclaredState, *, timeout: float = 900, on_progress: Progress | None = None,
    remove: bool = False, confined: Confined | None = None, spread: Spread | None = None,
    skip: Skip | None = None,
) -> Plan:
    """What would change on each host; changes nothing. ``remove``: what running each
    service's ``remove.py`` would change (a removal state,
    ``gitops.pipeline.prune.removal_state``). ``confined``: the workers run untrusted code (a
    preview's, ``gitops.pipeline.sandbox``). ``spread``: see ``Spread``. ``skip``: a host
    whose fingerprints and recorded facts are unchanged is planned ``no change, by
    fingerprint`` without evaluating its operations (``gitops.pipeline.factskip``)."""
    return _merged_plan(state, _run(state, timeout, on_progress, dry=True, remove=remove,
                                    confined=confined, spread=spread, skip=skip))


def apply(
    state: DeclaredState, *, timeout: float = 1800, on_progress: Progress | None = None,
    journal: Path | None = None, remove: bool = False, confined: Confined | None = None,
    spread: Spread | None = None, skip: Skip | None = None,
) -> tuple[Plan, ApplyReport]:
    """Apply; return what changed (as a plan, with diffs) and the per-operation results.
    ``remove``: run each service's ``remove.py`` instead
    (``gitops.pipeline.prune.removal_state``). ``spread``: see ``Spread``.

    With ``journal`` (a folder, ``gitops.pipeline.journal``), each host's operations are
    journaled as they run, and what an interrupted apply changed counts as changed for what
    depends on it. With ``skip`` (``gitops.pipeline.factskip``), a host whose fingerprints and
    recorded facts are unchanged is reported ``no change, by fingerprint`` without running
    its operations, and each applied host's facts are recorded for the next apply.
    """
    done = apply_then_verify(state, None, timeout=timeout, on_progress=on_progress,
                             journal=journal, remove=remove, confined=confined, spread=spread,
                             skip=skip)
    return done.plan, done.apply


@dataclass(frozen=True)
class Applied:
    """An apply's plan and report and, when it verified, the checks and the hosts they cover."""

    plan: Plan
    apply: ApplyReport
    verify: VerifyReport | None = None
    verified: frozenset[str] = frozenset()


def apply_then_verify(
    state: DeclaredState, verify: DeclaredState | None, *, timeout: float = 1800,
    on_progress: Progress | None = None, journal: Path | None = None, remove: bool = False,
    confined: Confined | None = None, spread: Spread | None = None, skip: Skip | None = None,
) -> Applied:
    """``apply``, then, in the same worker processes, the checks of ``verify``'s hosts (all
    their services) that the apply left ``ok``, each over the SSH connection the apply
    opened to it: one connection per host for both. Not for a removal, nor by a worker that
    armed a guarded apply (confirmed after the workers end, it must not wait for checks);
    the hosts a share applied on another controller (``spread``), or the workers did not
    verify, are left out of ``verified`` for the caller to verify."""
    if verify is not None and (remove or confined is not None):
        verify = None
    results = _run(state, timeout, on_progress, dry=False, journal=journal, remove=remove,
                   confined=confined, spread=spread, skip=skip, verify=verify)
    reports = [r.apply for r in results]
    assert all(r is not None for r in reports)
    by_host = {h.host: h for r in reports if r is not None for h in r.hosts}
    stopped = "; ".join(r.stopped for r in reports if r is not None and r.stopped) or None
    report = ApplyReport(
        hosts=tuple(by_host[h.name] for h in state.hosts if h.name in by_host),
        stopped=stopped,
        duration_s=max(r.duration_s for r in reports if r is not None),
    )
    report = hints.lab_packages(state, report)  # apt's "Unable to locate" on a lab host
    confirmed = guard.confirm_guards(state, report, on_progress=on_progress)
    checked = [r.verify for r in results if r.verify is not None]
    verified = frozenset(h for r in results for h in r.verified)
    if verify is None or not checked:
        return Applied(_merged_plan(state, results), confirmed)
    order = {h.name: i for i, h in enumerate(state.hosts)}
    checks = VerifyReport(
        results=tuple(sorted((c for v in checked for c in v.results),
                             key=lambda c: order.get(c.host, len(order)))),
        host_errors={k: v for c in checked for k, v in c.host_errors.items()},
        duration_s=max(c.duration_s for c in checked))
    return Applied(_merged_plan(state, results), confirmed, checks, verified)
