"""A run's apply, batch by batch (removals, apply, verify), stopped past the fail percentage or
at an unconfirmed guarded apply; the batches' reports merged into the run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gitops.errors import InterruptedApply
from gitops.model import DeclaredState
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import depends, prune
from gitops.pipeline import verify as verify_stage
from gitops.pipeline.apply import Spread
from gitops.pipeline.factskip import Skip
from gitops.pipeline.runs import Outcome, Progress, Request
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    Installed,
    Plan,
    Removal,
    Revision,
    VerifyReport,
)

__all__ = ["merge_plan_hosts", "recovered", "rollout"]


def rollout(
    state: DeclaredState,
    revision: Revision,
    run_id: int,
    request: Request,
    stages: dict[str, float],
    say: Progress,
    connections: Path | None,
    unchanged: dict[str, set[str]],
    batch_done: Callable[[ApplyReport, VerifyReport], None],
    journal_dir: Path | None = None,
    removals: tuple[Removal, ...] = (),
    installed: dict[str, dict[str, Installed]] | None = None,
    reverted: Callable[[ApplyReport], ApplyReport] | None = None,
    spread: Spread | None = None,
    skip: Skip | None = None,
) -> Outcome:
    """Apply then verify batch by batch (canary first); stop past the fail percentage, or
    at a guarded apply that was not confirmed (``gitops.pipeline.guard``: the host reverted it, or
    was not reached again), whose reverts ``reverted`` checks.

    A host's services in ``unchanged`` are not applied (all of them are verified);
    ``removals`` to run (``gitops.pipeline.prune``) run on each batch's hosts before its apply, with
    the parameters ``installed`` (the record) has; ``batch_done`` records each batch's hosts
    as soon as it is verified; ``spread`` takes the applies' shares to other controllers
    (``apply.Spread``); ``skip``: hosts unchanged by fingerprint are not applied
    (``gitops.pipeline.factskip``), their checks still run."""
    batches = state.settings.rollout.batches([h.name for h in state.hosts])
    plan_hosts: tuple[HostPlan, ...] = ()
    report: ApplyReport | None = None
    checks: VerifyReport | None = None
    stopped: str | None = None
    for index, batch in enumerate(batches, 1):
        if request.stop is not None and request.stop.is_set():
            return Outcome("interrupted", run_id=run_id, revision=revision,
                           plan=Plan(hosts=plan_hosts), apply=report, verify=checks,
                           stopped_at=f"stopped before batch {index}/{len(batches)}")
        part = state.limit(set(batch))
        label = f"batch {index}/{len(batches)}" + (" (canary)" if index == 1 and
                                                  state.settings.rollout.canary else "")
        t = time.monotonic()
        todo = part.only_services({h.name: set(h.services) - unchanged.get(h.name, set())
                                   for h in part.hosts})
        skipped = sorted({s for h in part.hosts for s in unchanged.get(h.name, ())})
        say(f"{label}: applying on {', '.join(batch)}"
            + (f" (unchanged, not applied: {', '.join(skipped)})" if skipped else ""))
        removing = prune.removal_state(part, [r for r in removals if r.host in batch],
                                       installed or {})
        removed: ApplyReport | None = None
        if removing.hosts:
            say(f"{label}: removing "
                + "; ".join(f"{h.name}: {', '.join(h.services)}" for h in removing.hosts))
            removed_plan, removed = apply_stage.apply(removing, on_progress=say, remove=True)
            plan_hosts += removed_plan.hosts
        removal_ok = {h.host for h in removed.hosts if h.status == "ok"} if removed else set()
        checkable = part.limit({h.name for h in part.hosts
                                if h.name not in {r.name for r in removing.hosts}
                                or h.name in removal_ok})
        done = (apply_stage.apply_then_verify(todo, checkable, on_progress=say,
                                              journal=journal_dir, spread=spread, skip=skip)
                if todo.hosts else apply_stage.Applied(Plan(hosts=()), ApplyReport(hosts=())))
        applied = _with_removals(removed, _with_unchanged(part, done.apply, unchanged))
        if reverted is not None and applied.reverted_hosts:
            applied = reverted(applied)
        checked = done.verify.duration_s if done.verify is not None else 0.0
        stages["plan+apply"] = stages.get("plan+apply", 0) + time.monotonic() - t - checked
        plan_hosts += done.plan.hosts
        report = _merge_apply(report, applied)
        ok = {h.host for h in applied.hosts if h.status == "ok"}
        t = time.monotonic()
        rest = ok - done.verified  # hosts the apply's workers did not verify
        batch_checks = (verify_stage.verify(part.limit(rest), on_progress=say,
                                            connections=connections)
                        if rest else VerifyReport(results=()))
        if done.verify is not None:
            batch_checks = _in_order(part, done.verify, batch_checks)
        batch_checks = _not_applied(part, applied, batch_checks)
        stages["verify"] = stages.get("verify", 0) + time.monotonic() - t + checked
        checks = _merge_verify(checks, batch_checks)
        batch_done(applied, batch_checks)
        failed = set(applied.failed_hosts) | set(batch_checks.failed_hosts)
        say(f"{label}: {applied.changed} change(s), failed: {', '.join(sorted(failed)) or 'none'}")
        if (applied.stopped or applied.guard_lost
                or len(failed) * 100 > state.settings.fail_percent * len(batch)):
            stopped = (f"{label} failed on {', '.join(sorted(failed))}"
                       f"{'' if not applied.stopped else ': ' + applied.stopped}")
            if index < len(batches):
                stopped += f"; {sum(len(b) for b in batches[index:])} host(s) not attempted"
            break
    report = report if report is not None else ApplyReport(hosts=())  # an inventory of no host
    checks = checks if checks is not None else VerifyReport(results=())
    failed_any = bool(stopped or report.failed_hosts or checks.failed_hosts)
    return Outcome("failed" if failed_any else "succeeded", run_id=run_id, revision=revision,
                   plan=Plan(hosts=plan_hosts), apply=report, verify=checks, stopped_at=stopped)


def _merge_apply(a: ApplyReport | None, b: ApplyReport) -> ApplyReport:
    if a is None:
        return b
    return ApplyReport(hosts=a.hosts + b.hosts, stopped=b.stopped or a.stopped,
                       duration_s=a.duration_s + b.duration_s)


def _merge_verify(a: VerifyReport | None, b: VerifyReport) -> VerifyReport:
    if a is None:
        return b
    return VerifyReport(results=a.results + b.results,
                        host_errors={**a.host_errors, **b.host_errors},
                        duration_s=a.duration_s + b.duration_s)


def _in_order(part: DeclaredState, a: VerifyReport, b: VerifyReport) -> VerifyReport:
    """Two verifies of different hosts of a batch as one, results in the batch's host order."""
    order = {h.name: i for i, h in enumerate(part.hosts)}
    return VerifyReport(
        results=tuple(sorted(a.results + b.results, key=lambda r: order.get(r.host, len(order)))),
        host_errors={**a.host_errors, **b.host_errors},
        duration_s=a.duration_s + b.duration_s)


def _with_removals(removed: ApplyReport | None, applied: ApplyReport) -> ApplyReport:
    """A batch's apply report with its removals' operations first on each host; a host whose
    removal failed failed."""
    if removed is None or not removed.hosts:
        return applied
    by_host = {h.host: h for h in removed.hosts}
    hosts = []
    for h in applied.hosts:
        r = by_host.get(h.host)
        if r is not None:
            h = h.model_copy(update={
                "ops": r.ops + h.ops, "status": h.status if r.status == "ok" else (
                    "failed" if r.status == "skipped" else r.status),
                "error": "; ".join(e for e in (r.error, h.error) if e) or None,
                "duration_s": r.duration_s + h.duration_s})
        hosts.append(h)
    return applied.model_copy(update={"hosts": tuple(hosts),
                                      "stopped": applied.stopped or removed.stopped,
                                      "duration_s": applied.duration_s + removed.duration_s})


def _with_unchanged(part: DeclaredState, report: ApplyReport,
                    unchanged: dict[str, set[str]]) -> ApplyReport:
    """The apply report of a batch, with the services left out (and hosts with nothing to
    apply, as ok) said per host, in the batch's host order."""
    by_host = {h.host: h for h in report.hosts}
    hosts = []
    for h in part.hosts:
        kept = tuple(s for s in h.services if s in unchanged.get(h.name, set()))
        done = by_host.get(h.name) or HostApply(host=h.name, status="ok")
        hosts.append(done.model_copy(update={"unchanged_services": kept}))
    return report.model_copy(update={"hosts": tuple(hosts)})


def _not_applied(part: DeclaredState, applied: ApplyReport,
                 checks: VerifyReport) -> VerifyReport:
    """``checks`` with a ``DependencyNotReady`` result for each service of a host whose apply
    failed that requires (directly or not) a service whose apply failed there: one pyinfra
    pass applies a host's services in ``service_order`` and stops that host at its first
    failed operation, so those services' operations were skipped (see
    ``gitops.pipeline.depends``)."""
    extra: list[CheckResult] = []
    for h in applied.hosts:
        if h.status != "failed" or h.host not in {d.name for d in part.hosts}:
            continue
        failed = {op.service for op in h.ops if op.status == "failed" and op.service}
        if h.error and h.error.startswith("deploys/"):  # an exception in a deploy file
            failed.add(h.error.split("/", 2)[1])
        services = part.host(h.host).services
        extra += depends.not_ready(h.host, services, part.requires,
                                   {s: "failed its apply on this host" for s in failed})
    if not extra:
        return checks
    return checks.model_copy(update={"results": checks.results + tuple(extra)})


def recovered(outcome: Outcome, recovering: frozenset[str]) -> Outcome:
    """The outcome of a run that resumed interrupted applies on ``recovering``: when only
    those hosts failed, the failure is the crash's, not the commit's: a temporary error
    (applied again, never rolled back, not a change failure)."""
    outcome = replace(outcome, recovering=recovering)
    failed = set(outcome.apply.failed_hosts if outcome.apply else ()) | set(
        outcome.verify.failed_hosts if outcome.verify else ())
    if outcome.result != "failed" or not failed or not failed <= recovering:
        return outcome
    return replace(outcome, result="error", error=InterruptedApply(
        f"{', '.join(sorted(failed))} failed right after recovering from an apply that a "
        "crash of the reconciler interrupted; applying again before anything is rolled back"))


def merge_plan_hosts(first: tuple[HostPlan, ...],
                      then: tuple[HostPlan, ...]) -> tuple[HostPlan, ...]:
    """Host plans of two passes (removals, then the apply) as one per host, ``then``'s order."""
    by_host = {h.host: h for h in first}
    out = []
    for h in then:
        r = by_host.pop(h.host, None)
        if r is not None:
            h = h.model_copy(update={"ops": r.ops + h.ops, "error": "; ".join(
                e for e in (r.error, h.error) if e) or None})
        out.append(h)
    return tuple(out) + tuple(by_host.values())
