"""Stages 3 and 4: plan (pyinfra dry run) and apply, through the pyinfra worker process.

``plan`` reports per host and operation whether it would change, with file diffs; ``apply``
executes every operation once (each fact read once, like ``pyinfra -y``) and returns what
changed, with diffs, as its plan, and the per-operation results. Hosts
run in parallel; a failed host stops the others only past the environment's fail percentage.
A guarded apply (``gitops.guard``) is confirmed here, after the worker has gone: each host
where the worker armed a revert is reached again over a new SSH connection, which disarms it;
a host that reverted by itself is ``RevertedByHost``, one never reached again ``Unreachable``.
Called by ``reconcile`` and the CLI; never imports pyinfra itself.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gitops import guard
from gitops.model import DeclaredState
from gitops.records import ApplyReport, HostApply, Plan, WorkerResult
from gitops.worker import Progress, run_worker

_WORKER = "gitops.workers.apply_worker"


def _job(state: DeclaredState, *, dry: bool, diff: bool, journal: Path | None = None,
         remove: bool = False) -> str:
    return json.dumps({"state": state.model_dump(mode="json"), "dry": dry, "diff": diff,
                       "journal": str(journal) if journal else None, "remove": remove})


def plan(
    state: DeclaredState, *, timeout: float = 900, on_progress: Progress | None = None,
    remove: bool = False,
) -> Plan:
    """What would change on each host; changes nothing. ``remove``: what running each
    service's ``remove.py`` would change (a removal state, ``gitops.prune.removal_state``)."""
    out = run_worker(_WORKER, _job(state, dry=True, diff=True, remove=remove), timeout=timeout,
                     on_progress=on_progress)
    return WorkerResult.model_validate_json(out).plan


def apply(
    state: DeclaredState, *, timeout: float = 1800, on_progress: Progress | None = None,
    journal: Path | None = None, remove: bool = False,
) -> tuple[Plan, ApplyReport]:
    """Apply; return what changed (as a plan, with diffs) and the per-operation results.
    ``remove``: run each service's ``remove.py`` instead (``gitops.prune.removal_state``).

    With ``journal`` (a folder, ``gitops.journal``), each host's operations are journaled as
    they run, and what an interrupted apply changed counts as changed for what depends on it.
    """
    out = run_worker(_WORKER, _job(state, dry=False, diff=True, journal=journal, remove=remove),
                     timeout=timeout, on_progress=on_progress)
    result = WorkerResult.model_validate_json(out)
    assert result.apply is not None
    return result.plan, confirm_guards(state, result.apply, on_progress=on_progress)


def confirm_guards(state: DeclaredState, report: ApplyReport, *,
                   on_progress: Progress | None = None) -> ApplyReport:
    """Reach each host where the apply armed a revert again, over a new SSH connection, in
    parallel; record how each guarded apply ended (``HostGuard.result``)."""
    armed = [h for h in report.hosts if h.guard is not None and h.guard.token]
    if not armed:
        return report
    say = on_progress or (lambda _: None)
    settings = state.settings.guard
    say(f"confirming the guarded apply on {', '.join(h.host for h in armed)} over new SSH "
        f"connections (each host reverts by itself after {settings.confirm_timeout} s)")

    def one(h: HostApply) -> HostApply:
        assert h.guard is not None
        done = guard.confirm(state.host(h.host), h.guard.token,
                             timeout=settings.confirm_timeout, margin=settings.margin)
        detail = done.describe(h.guard.last_contact or "unknown")
        say(f"{h.host}: {detail}")
        update: dict[str, object] = {"guard": h.guard.model_copy(
            update={"result": done.result, "detail": detail})}
        if done.result == "Unreachable":
            update.update(status="unreachable", error=detail)
        elif done.result != "Confirmed":
            update.update(status="failed", error=detail)
        return h.model_copy(update=update)

    with ThreadPoolExecutor(max_workers=min(len(armed), state.settings.parallel)) as pool:
        confirmed = {h.host: h for h in pool.map(one, armed)}
    return report.model_copy(update={"hosts": tuple(confirmed.get(h.host, h)
                                                    for h in report.hosts)})
