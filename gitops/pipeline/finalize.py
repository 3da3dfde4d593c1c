"""What a run leaves in the record: its end, each host's and the environment's conditions, what
each host has installed, the revisions verified everywhere, the quarantines of reverts.
"""

from __future__ import annotations

from gitops.errors import InvalidDeclaration, PermanentError
from gitops.model import DeclaredState
from gitops.pipeline import depends, prune, source
from gitops.pipeline.runs import NOT_VERIFIED, Outcome, Progress, Target, not_verified
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import ApplyReport, Removal, Revision, RunKind

__all__ = ["drop_superseded", "finalize", "host_status", "quarantine_reverted",
           "record_earlier_reverts", "record_installed", "record_verified"]


def finalize(
    store: Store,
    target: Target,
    kind: RunKind,
    outcome: Outcome,
    prints: dict[str, dict[str, str]],
    stages: dict[str, float],
    interrupted_by: str | None,
) -> None:
    """Write the run and the status record: called on every path."""
    removals = outcome.removals
    env = target.environment
    assert outcome.run_id is not None
    ref = outcome.revision.ref if outcome.revision else None
    error = str(outcome.error) if outcome.error else interrupted_by
    store.finish_run(outcome.run_id, outcome.result, plan=outcome.plan, apply=outcome.apply,
                     verify=outcome.verify, error=error, stage_s=stages)
    applies = kind != "verify"
    attempted = ref if applies else None
    if outcome.result == "invalid":
        problems = len(outcome.error.problems) if isinstance(outcome.error, InvalidDeclaration) \
            else 0
        store.set_status(env, ENVIRONMENT, [
            Condition("Ready", "False", "ValidationFailed",
                      f"{ref or 'revision'} is invalid ({problems} problem(s)); nothing applied"),
            Condition("Stalled", "True", "ValidationFailed", "waiting for a new commit"),
        ], attempted=attempted)
        return
    if outcome.verify is not None:
        host_status(store, env, outcome, ref, attempted, prints, removals)
    if outcome.result in ("error", "interrupted"):
        reason = "Interrupted" if outcome.result == "interrupted" else (
            "ArtifactFailed" if outcome.revision is None else "ReconciliationFailed")
        stalled = isinstance(outcome.error, PermanentError)
        message = error or outcome.stopped_at or outcome.result
        conditions = [Condition("Ready", "False", reason, message)]
        if stalled:
            conditions.append(Condition("Stalled", "True", reason, "waiting for a new commit"))
        store.set_status(env, ENVIRONMENT, conditions, attempted=attempted)
        return
    assert outcome.verify is not None
    if outcome.result == "succeeded":
        unchecked = not_verified(outcome)
        verb = "Verified" if kind == "verify" else "Applied and verified"
        ready = Condition("Ready", "True", "ReconciliationSucceeded", f"{verb} revision: {ref}")
        if unchecked:
            ready = Condition("Ready", "True", NOT_VERIFIED,
                              f"Applied revision: {ref}; not verified on "
                              f"{', '.join(unchecked)}: no check ran there")
        store.set_status(env, ENVIRONMENT, [ready, *_pruned(removals)],
                         applied=ref if applies else None, attempted=attempted,
                         verified=None if unchecked else ref)
    else:
        bad = sorted(set(outcome.verify.failed_hosts) |
                     set(outcome.apply.failed_hosts if outcome.apply else []))
        why = f"; rollout stopped: {outcome.stopped_at}" if outcome.stopped_at else ""
        store.set_status(env, ENVIRONMENT, [
            Condition("Ready", "False", "ReconciliationFailed",
                      f"{ref}: {len(bad)} host(s) failed: {', '.join(bad)}{why}"),
            *_pruned(removals),
        ], attempted=attempted)


def host_status(
    store: Store, env: str, outcome: Outcome, ref: str | None, attempted: str | None,
    prints: dict[str, dict[str, str]], removals: tuple[Removal, ...] = (),
) -> None:
    """The Ready condition of every host this run touched (others keep theirs), and its
    ``Pruned`` condition when it keeps services the revision no longer declares."""
    assert outcome.verify is not None
    failed_checks: dict[str, list[str]] = {}
    waiting: dict[str, str] = {}  # host -> "; DependencyNotReady: web, proxy"
    for r in outcome.verify.failed:
        if r.status == depends.NOT_READY:
            waiting[r.host] = (waiting.get(r.host) or f"; {depends.NOT_READY}:") + \
                f"{',' if r.host in waiting else ''} {r.service}"
        else:
            failed_checks.setdefault(r.host, []).append(f"{r.service}/{r.check}")
    applied_hosts = {h.host: h for h in outcome.apply.hosts} if outcome.apply else {}
    checked = {r.host for r in outcome.verify.results}
    touched = set(applied_hosts) | checked | set(outcome.verify.host_errors)
    for name in sorted(touched):
        h = applied_hosts.get(name)
        if h is not None and h.guard is not None and h.guard.result in (
                "RevertedByHost", "Unreachable"):
            cond = Condition("Ready", "False", h.guard.result, (h.error or h.status)[:300])
        elif h is not None and h.status != "ok":
            cond = Condition("Ready", "False", "ApplyFailed",
                             (h.error or h.status).splitlines()[0][:300]
                             + waiting.get(name, ""))
        elif name in outcome.verify.host_errors:
            cond = Condition("Ready", "False", "VerificationFailed",
                             outcome.verify.host_errors[name][:300])
        elif name in failed_checks:
            short = (" (nothing changed on this host in this run: the checks found it short "
                     "of them)" if h is not None and h.changed == 0 else "")
            cond = Condition("Ready", "False", "VerificationFailed",
                             "failed checks: " + ", ".join(failed_checks[name])
                             + waiting.get(name, "") + short)
        elif name in waiting:
            cond = Condition("Ready", "False", depends.NOT_READY, waiting[name][2:])
        elif name not in checked:
            cond = Condition("Ready", "True", NOT_VERIFIED,
                             f"{'applied' if h else 'reached'} {ref}, not verified: no check "
                             "ran on this host (its services have no checks.py)")
        else:
            cond = Condition("Ready", "True", "ReconciliationSucceeded",
                             f"{'applied and verified' if h else 'verified'} {ref}")
        applied = ref if (h is not None and h.status == "ok") else None
        verified = ref if cond.status == "True" and name in checked else None
        store.set_status(env, name, [cond, *_pruned(removals, name)], applied=applied,
                         attempted=attempted if h else None, verified=verified)
        if cond.status != "True":
            store.set_converged(env, name, None)  # the next apply does every service
        elif applied is not None and ref is not None:
            store.set_converged(env, name, prints.get(name), ref)


def _pruned(removals: tuple[Removal, ...], host: str | None = None) -> list[Condition]:
    """The ``Pruned`` condition of a host (or, with None, the environment): False naming what
    the host keeps that the revision no longer declares; nothing when there is none."""
    kept = [r for r in removals if r.action != "remove" and (host is None or r.host == host)]
    if not kept:
        return []
    reason = "PruneDisabled" if all(r.action == "not pruned" for r in kept) else "LeftInPlace"
    notes = [r.note if host is not None else f"{r.host}/{r.note}" for r in kept]
    return [Condition("Pruned", "False", reason, "; ".join(notes)[:300])]


def record_installed(store: Store, env: str, ref: str, state: DeclaredState,
                      applied: ApplyReport, removals: tuple[Removal, ...]) -> None:
    """What a batch leaves each host with, in the record (``Store.installed``): the declared
    services its apply ran (all on a host that applied, those with an operation run on one
    that failed), parameters with secrets blanked; removed services gone, kept ones marked."""
    declared = {h.name: h for h in state.hosts}
    for h in applied.hosts:
        host = declared.get(h.host)
        if host is None or h.status in ("unreachable", "skipped"):
            continue
        ran = {op.service for op in h.ops if op.status != "skipped"}
        services = {s: (prune.recordable(p, state.redact), state.requires.get(s, ()))
                    for s, p in host.services.items()
                    if h.status == "ok" or s in ran}
        if services:
            store.set_installed(env, h.host, services, ref)
        for r in removals:
            if r.host != h.host:
                continue
            if r.action == "remove":
                ops = [op.status for op in h.ops if op.service == r.service]
                if h.status == "ok" or (ops and set(ops) <= {"changed", "unchanged"}):
                    store.mark_installed(env, r.host, r.service, None)
            else:
                store.mark_installed(env, r.host, r.service, r.action)


def record_verified(store: Store, target: Target, outcome: Outcome, hosts: list[str]) -> None:
    """Record the run's revision as verified on every host of the environment when each
    host of the inventory now has it applied and verified (a retry of some hosts completes
    an earlier run): what an environment promoting from this one may apply."""
    revision = outcome.revision
    assert revision is not None and outcome.run_id is not None
    rows = {r.host: r for r in store.status(target.environment) if r.host != ENVIRONMENT}
    for name in hosts:
        row = rows.get(name)
        if (row is None or row.last_applied is None or row.last_verified is None
                or row.last_applied.sha != revision.sha
                or row.last_verified.sha != revision.sha):
            return
    store.record_verified(target.environment, revision, outcome.run_id,
                          upstream=target.upstream)
    drop_superseded(store, target, revision)


def drop_superseded(store: Store, target: Target, revision: Revision) -> None:
    """The quarantined revisions ``revision`` (now verified on every host) descends from
    leave the quarantine: a newer commit fixed what they broke, and no cycle applies an
    older commit than the head again."""
    quarantined = {q.sha for q in store.quarantined(target.environment)} - {revision.sha}
    if quarantined:
        before = set(source.lineage(target.repo, target.state_dir, revision.sha))
        store.drop_quarantined(target.environment, sorted(quarantined & before))


def quarantine_reverted(store: Store, env: str, outcome: Outcome, say: Progress) -> None:
    """A revision a host reverted by itself is quarantined, as a rollback quarantines one:
    not applied again until a newer commit."""
    hosts = outcome.apply.reverted_hosts if outcome.apply else []
    if hosts and outcome.revision is not None:
        store.quarantine(env, outcome.revision.sha,
                         f"RevertedByHost: {', '.join(hosts)} reverted its guarded apply")
        say(f"{outcome.revision.short} quarantined: {', '.join(hosts)} reverted its guarded "
            "apply by itself")


def record_earlier_reverts(store: Store, env: str, outcome: Outcome, actor: str) -> None:
    """A revert an earlier run left on a host, run before this apply (or found fired), is
    recorded in the history as a ``guard`` event: what it restored, on which host."""
    for h in outcome.apply.hosts if outcome.apply else ():
        if h.guard is not None and h.guard.earlier:
            store.record_event(env, "guard", actor=actor, reason=f"{h.host}: {h.guard.earlier}",
                               sha=outcome.revision.sha if outcome.revision else None)
