"""One reconcile: source -> load -> plan -> apply -> verify -> record, the record on every path.

Guards first (the environment lock, ``runlock``), then the named stages in order; whatever
happens, the run and the status record are finalized before returning (Flux's deferred
finalize, ``finalize``). A bad declaration is permanent (``Stalled``, nothing applied); a fetch
or SSH failure is temporary. An apply a crash cut short is resumed from its journal
(``journal``): every service applied on those hosts, and a failure only there is temporary.
Snapshots are pruned after each run (``snapshots``). A service the record has on a host that
the revision no longer declares there is removed by its ``remove.py`` before the batch's
apply, or reported (``prune``); hosts that left the inventory leave the status record,
untouched. The batches are applied by ``rollout``. Called by the CLI and the daemon; the
stages it calls keep pyinfra and testinfra in worker processes, so this module is safe in a
long-lived process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError, InvalidDeclaration, LockHeld
from gitops.model import DeclaredState
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import factskip, journal, prune, snapshots, source
from gitops.pipeline import load as load_stage
from gitops.pipeline import verify as verify_stage
from gitops.pipeline.finalize import (
    finalize,
    host_status,
    quarantine_reverted,
    record_earlier_reverts,
    record_installed,
    record_verified,
)
from gitops.pipeline.fingerprints import fingerprint_key, fingerprints, unchanged
from gitops.pipeline.rollout import merge_plan_hosts, recovered, rollout
from gitops.pipeline.runlock import Cut, environment_lock, recover_unfinished
from gitops.pipeline.runs import (
    NOT_VERIFIED,
    Outcome,
    Progress,
    Request,
    Target,
    journal_folder,
    not_verified,
)
from gitops.record.store import ENVIRONMENT, Condition, Database, NoStore, Store, StoreOutdated
from gitops.records import ApplyReport, Installed, Revision, RunResult, VerifyReport

__all__ = ["NOT_VERIFIED", "Cut", "Outcome", "Request", "Target", "declared",
           "environment_lock", "fingerprints", "journal_folder", "load_revision",
           "not_verified", "plan", "reconcile", "recover_unfinished", "run", "verify"]


def _host_source(target: Target) -> Callable[[list[str]], dict[str, dict[str, Any]]]:
    def from_vagrant(names: list[str]) -> dict[str, dict[str, Any]]:
        from gitops.pipeline import vagrant  # only environments with ``source: vagrant`` need it

        folder = target.vagrant_dir or (
            Path(target.repo) if Path(target.repo).is_dir() else Path.cwd())
        found = vagrant.read_hosts(folder)
        return {
            name: {"address": h.address, "ssh": {
                "user": h.user, "port": h.port, "key_file": h.key_file,
                "known_hosts_file": "/dev/null", "host_key_checking": "no"}}
            for name, h in found.items() if name in names
        }

    return from_vagrant


def declared(target: Target, progress: Progress | None = None, *,
             keep: bool = True) -> tuple[Revision, DeclaredState]:
    """Stages 1 and 2: fetch, snapshot, load. Raises on a bad source or declaration.
    ``keep=False`` (``gitops validate``): no snapshot is left behind (the state's ``root``
    is gone when this returns, unless a snapshot of that revision was already there)."""
    revision = source.fetch(target.repo, target.branch, target.state_dir)
    return revision, load_revision(target, revision, progress or (lambda _: None), keep=keep)


def load_revision(target: Target, revision: Revision, say: Progress, *,
                  keep: bool = True) -> DeclaredState:
    """Stage 2 of a fetched ``revision``: its snapshot (kept, unless ``keep=False``) loaded
    with ``target``'s keys and host sources (Vagrant, ``target.lab``), said on ``say``."""
    say(f"revision {revision.ref} by {revision.author}: {revision.message.splitlines()[0]}")
    with (contextlib.nullcontext(source.snapshot(target.repo, revision, target.state_dir))
          if keep else source.passing_snapshot(target.repo, revision, target.state_dir)) as snap:
        state = load_stage.load(Path(snap.path), target.environment, revision=revision.ref,
                                host_source=_host_source(target), keys=target.sops,
                                lab=target.lab)
    say(f"{len(state.hosts)} hosts, services: {', '.join(state.service_order)}")
    for warning in state.warnings:
        say(f"warning: {warning}")
    return state


def plan(target: Target, progress: Progress | None = None) -> Outcome:
    """Fetch, validate and dry-run; changes nothing and records nothing. The removals the
    record calls for are listed, those that would run dry-run with their ``remove.py``."""
    try:
        revision, state = declared(target, progress)
        records = factskip.folder(target.state_dir, target.environment)
        skip = (_skip(target, state, fingerprints(state, fingerprint_key(target.state_dir)))
                if records.is_dir() else None)  # a plan creates no key
        result = apply_stage.plan(state, on_progress=progress, spread=target.spread, skip=skip)
        installed = _read_installed(target)
        found = prune.removals(state, installed, target.prunes(state))
        doing = prune.removal_state(state, found, installed)
        if doing.hosts:
            removing = apply_stage.plan(doing, on_progress=progress, remove=True)
            result = result.model_copy(update={"hosts": merge_plan_hosts(removing.hosts,
                                                                         result.hosts)})
        result = result.model_copy(update={"removals": found})
    except InvalidDeclaration as exc:
        return Outcome("invalid", error=exc)
    except GitopsError as exc:
        return Outcome("error", error=exc)
    failed = any(h.error for h in result.hosts)
    return Outcome("failed" if failed else "succeeded", revision=revision, plan=result)


def _read_installed(target: Target) -> dict[str, dict[str, Installed]]:
    """What the record says each host has (nothing when nothing was ever recorded)."""
    try:
        store = (target.database or Database(target.state_dir)).open(readonly=True)
    except (NoStore, StoreOutdated):
        return {}
    try:
        return store.installed(target.environment)
    finally:
        store.close()


def reconcile(target: Target, progress: Progress | None = None, *, reason: str = "",
              request: Request | None = None) -> Outcome:
    """Plan, apply and verify (in the inventory's batches) on every host; record it all."""
    return run(target, request or Request(reason=reason), progress)


def verify(target: Target, progress: Progress | None = None, *, reason: str = "") -> Outcome:
    """Run the checks of the branch head on every host (changes nothing) and record them."""
    return run(target, Request(kind="verify", reason=reason), progress)


def run(target: Target, request: Request, progress: Progress | None = None) -> Outcome:
    """One run under the environment lock; a held lock is reported, not waited for."""
    say = progress or (lambda _: None)
    store = (target.database or Database(target.state_dir)).open()
    try:
        with environment_lock(target, request.kind):
            recover_unfinished(store, target, say, held=True)
            outcome = _locked_run(store, target, request, say)
            if request.kind != "verify":
                snapshots.prune_snapshots(store, target.state_dir, target.keep_snapshots)
            return outcome
    except LockHeld as exc:
        return Outcome("error", error=exc)
    finally:
        store.close()


def _locked_run(store: Store, target: Target, request: Request, say: Progress) -> Outcome:
    env = target.environment
    kind = request.kind
    actor = request.actor or target.actor
    run_id = store.start_run(env, kind, None, actor=actor, reason=request.reason)
    store.set_status(env, ENVIRONMENT, [
        Condition("Reconciling", "True", "Progressing", f"{kind} run {run_id} started"),
    ])
    outcome = Outcome("error", run_id=run_id)
    stages: dict[str, float] = {}
    prints: dict[str, dict[str, str]] = {}
    hosts: list[str] | None = None
    try:
        t = time.monotonic()
        revision = source.fetch(target.repo, target.branch, target.state_dir)
        if request.revision is not None:
            revision = source.revision(target.repo, target.branch, request.revision,
                                       target.state_dir)
        store.set_revision(run_id, revision)
        outcome = Outcome("error", run_id=run_id, revision=revision)
        if request.signing is not None:
            from gitops.pipeline import signatures  # only environments that require signed commits

            mirror = source.mirror_path(target.repo, target.state_dir)
            signer = signatures.verify_commit(mirror, revision.sha, request.signing)
            say(f"signed by {signer}")
        state = load_revision(target, revision, say)
        hosts = [h.name for h in state.hosts]
        store.set_owners(env, "inventory", state.settings.team, state.settings.service_teams)
        stages["source+load"] = time.monotonic() - t
        targeted = state.limit(set(request.hosts) if request.hosts is not None else None)
        prints = fingerprints(targeted, fingerprint_key(target.state_dir))
        installed = store.installed(env)
        removals = prune.removals(targeted, installed, target.prunes(state))
        if kind == "verify":
            t = time.monotonic()
            say(f"verifying {len(targeted.hosts)} host(s)")
            checks = verify_stage.verify(targeted, on_progress=say,
                                         connections=target.connections)
            stages["verify"] = time.monotonic() - t
            result: RunResult = "succeeded" if checks.ok else "failed"
            outcome = Outcome(result, run_id=run_id, revision=revision, verify=checks,
                              removals=removals)
        else:
            converged = store.converged(env) if request.changed_only else {}
            gone = store.forget_hosts(env, {h.name for h in state.hosts})
            if gone:
                say(f"no longer in the inventory (not touched, left the status): "
                    f"{', '.join(gone)}")
            for r in removals:
                say(f"{r.host}: {r.note if r.action != 'remove' else r.service + ': removing'}")
            folder = journal_folder(target)
            journal.forget_others(folder, {h.name for h in state.hosts})
            factskip.forget_others(factskip.folder(target.state_dir, env),
                                   {h.name for h in state.hosts})
            recovering = frozenset(journal.interrupted(folder) & {h.name for h in targeted.hosts})
            if recovering:
                say(f"the last apply on {', '.join(sorted(recovering))} was interrupted: "
                    "every service is applied there")
            kept_as_is = {h: set() if h in recovering else kept
                          for h, kept in unchanged(targeted, prints, converged).items()}
            skip = _skip(target, state, prints)

            def batch_done(applied: ApplyReport, checks: VerifyReport) -> None:
                if skip is not None:  # a host whose checks fail is applied in full next time
                    factskip.forget(Path(skip.folder), checks.failed_hosts)
                store.record_batch(run_id, applied, checks)
                record_installed(store, env, revision.ref, targeted, applied, removals)
                host_status(store, env, Outcome("succeeded", apply=applied, verify=checks),
                            revision.ref, revision.ref, prints, removals)

            def reverted(applied: ApplyReport) -> ApplyReport:
                return _check_reverts(store, target, revision, applied, say)

            outcome = recovered(rollout(targeted, revision, run_id, request, stages, say,
                                        target.connections, kept_as_is, batch_done, folder,
                                        removals, installed, reverted, target.spread,
                                        skip),
                                recovering)
            outcome = replace(outcome, removals=removals, plan=outcome.plan.model_copy(
                update={"removals": removals}) if outcome.plan is not None else None)
            quarantine_reverted(store, env, outcome, say)
            record_earlier_reverts(store, env, outcome, actor)
    except InvalidDeclaration as exc:
        outcome = Outcome("invalid", run_id=run_id, revision=outcome.revision, error=exc)
    except GitopsError as exc:
        outcome = Outcome("error", run_id=run_id, revision=outcome.revision, error=exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: still finalize the record
        interrupted = Outcome("interrupted", run_id=run_id, revision=outcome.revision)
        finalize(store, target, kind, interrupted, prints, stages, f"{type(exc).__name__}")
        raise
    finalize(store, target, kind, outcome, prints, stages, None)
    if kind != "verify" and outcome.result == "succeeded" and hosts is not None:
        record_verified(store, target, outcome, hosts)
    return outcome


def _skip(target: Target, state: DeclaredState,
          prints: dict[str, dict[str, str]]) -> factskip.Skip | None:
    """What the applies need to skip the hosts unchanged by fingerprint
    (``gitops.pipeline.factskip``); None when the environment's ``fingerprint_skip`` is off."""
    if not state.settings.fingerprint_skip:
        return None
    key = fingerprint_key(target.state_dir)
    return factskip.Skip(folder=str(factskip.folder(target.state_dir, target.environment)),
                         key=key.hex(), prints=prints, basis=factskip.basis(state, key))


def _check_reverts(store: Store, target: Target, revision: Revision, applied: ApplyReport,
                   say: Progress) -> ApplyReport:
    """Verify each host that reverted a guarded apply by itself: the guarded services'
    checks of the revision last verified there (the one it went back to) must pass; the
    result is added to the host's record."""
    last = {r.host: r.last_verified.sha for r in store.status(target.environment)
            if r.host and r.last_verified is not None and r.last_verified.sha != revision.sha}
    hosts = []
    for h in applied.hosts:
        g = h.guard
        if g is None or g.result != "RevertedByHost":
            hosts.append(h)
            continue
        sha = last.get(h.host)
        if sha is None:
            note = "no earlier verified revision to check it against"
        else:
            try:
                prev = source.revision(target.repo, revision.branch, sha, target.state_dir)
                state = load_revision(target, prev, lambda _: None).limit({h.host})
                wanted = {h.host: set(g.services)}
                checks = verify_stage.verify(state.only_services(wanted),
                                             connections=target.connections)
            except GitopsError as exc:
                note = f"the checks of the previous revision {sha[:10]} could not run: {exc}"
            else:
                bad = [f"{r.service}/{r.check}" for r in checks.failed]
                bad += list(checks.host_errors)
                note = (f"checks of {', '.join(sorted(g.services))} pass on the previous "
                        f"revision {sha[:10]} ({len(checks.results)})" if not bad else
                        f"checks FAIL on the previous revision {sha[:10]}: {', '.join(bad)}")
        say(f"{h.host}: {note}")
        detail = f"{g.detail}; {note}"
        hosts.append(h.model_copy(update={
            "error": detail, "guard": g.model_copy(update={"detail": detail})}))
    return applied.model_copy(update={"hosts": tuple(hosts)})
