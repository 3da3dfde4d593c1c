"""One reconcile: source -> load -> plan -> apply -> verify -> record, the record on every path.

Guards first (the environment lock), then the named stages in order; whatever happens, the
run and the status record are finalized before returning (Flux's deferred finalize). A bad
declaration is permanent (``Stalled``, nothing applied); a fetch or SSH failure is temporary.
An apply a crash cut short is resumed from its journal (``journal``): every service applied on
those hosts, and a failure only there is temporary. Snapshots are pruned after each run
(``retention``). A service the record has on a host that the revision no longer declares
there is removed by its ``remove.py`` before the batch's apply, or reported (``prune``); hosts
that left the inventory leave the status record, untouched.
Called by the CLI (and the daemon, later); the stages it calls keep pyinfra and testinfra in
worker processes, so this module is safe in a long-lived process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gitops.daemon import control, retention
from gitops.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    GitopsError,
    InterruptedApply,
    InvalidDeclaration,
    LockHeld,
    PermanentError,
)
from gitops.model import DeclaredState
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import depends, journal, prune, source
from gitops.pipeline import load as load_stage
from gitops.pipeline import verify as verify_stage
from gitops.private import private_dir
from gitops.record.store import ENVIRONMENT, Condition, Database, NoStore, Store, StoreOutdated, now
from gitops.records import (
    APPLY_KINDS,
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    Installed,
    Plan,
    Removal,
    Revision,
    RunKind,
    RunResult,
    VerifyReport,
)
from gitops.settings import SigningPolicy, SopsSettings

Progress = Callable[[str], None]

NOT_VERIFIED = "AppliedNotVerified"
"""The Ready reason of a host (or environment) applied without a failure on which no check
ran: not verified, so never a rollback target nor promoted (``not_verified``)."""

__all__ = ["NOT_VERIFIED", "Cut", "Outcome", "Request", "Target", "declared", "not_verified",
           "plan", "reconcile", "recover_unfinished", "run", "verify"]


@dataclass(frozen=True)
class Target:
    """What to reconcile: a repository (URL or path), a branch, an environment."""

    repo: str
    branch: str
    environment: str
    state_dir: Path
    actor: str = field(default_factory=lambda: control.who())
    vagrant_dir: Path | None = None
    connections: Path | None = None
    """Keep SSH connections of verifies here (the daemon's ``verify.SshConnections``)."""
    keep_snapshots: int = 20
    """Snapshots kept after a run besides those in use (``settings.Retention.snapshots``)."""
    sops: SopsSettings | None = None
    """The keys of the repository's SOPS-encrypted values and files."""
    database: Database | None = None
    """Where the record is (default: SQLite in ``state_dir``)."""
    prune: bool | None = None
    """Run removals (``gitops.pipeline.prune``): the daemon settings' ``prune`` of the environment;
    None: the inventory's ``settings.prune``."""
    upstream: str | None = None
    """The environment this one promotes from (recorded with its verified revisions)."""


@dataclass(frozen=True)
class Outcome:
    """What a run did; ``exit_code`` is what the CLI exits with."""

    result: RunResult
    run_id: int | None = None
    revision: Revision | None = None
    plan: Plan | None = None
    apply: ApplyReport | None = None
    verify: VerifyReport | None = None
    error: GitopsError | None = None
    stopped_at: str | None = None
    """Why a rollout stopped before its last batch."""
    recovering: frozenset[str] = frozenset()
    """Hosts whose previous apply was cut by a crash of the controller (see ``journal``)."""
    removals: tuple[Removal, ...] = ()
    """Services the record has on a host that the revision no longer declares (``prune``)."""

    @property
    def exit_code(self) -> int:
        if self.result == "succeeded":
            return EXIT_OK
        if self.result == "invalid" or isinstance(self.error, PermanentError):
            return EXIT_INVALID
        return EXIT_FAILED

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "run_id": self.run_id,
            "revision": self.revision.ref if self.revision else None,
            "error": str(self.error) if self.error else None,
            "problems": [str(p) for p in self.error.problems]
            if isinstance(self.error, InvalidDeclaration) else [],
            "plan": self.plan.model_dump(mode="json") if self.plan else None,
            "apply": self.apply.model_dump(mode="json") if self.apply else None,
            "verify": self.verify.model_dump(mode="json") if self.verify else None,
            "stopped": self.stopped_at,
        }


@contextmanager
def environment_lock(target: Target, kind: str) -> Iterator[None]:
    """One run at a time per environment. The kernel drops the lock when its holder dies,
    so a lock left by ``kill -9`` is recovered without guessing from timestamps."""
    folder = private_dir(target.state_dir) / "locks"
    folder.mkdir(exist_ok=True)
    path = folder / f"{target.environment}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            raise LockHeld(
                f"environment {target.environment!r} is locked by {holder.get('actor', '?')} "
                f"(pid {holder.get('pid', '?')}, {holder.get('kind', 'run')} since "
                f"{holder.get('since', '?')})"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "actor": target.actor, "kind": kind,
                "since": now().isoformat(timespec="seconds")}
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Cut:
    """A run left unfinished (its process killed, its end refused by a full disk, its
    controller's lease lost), now recorded interrupted."""

    run_id: int
    kind: str
    sha: str | None


def recover_unfinished(store: Store, target: Target, say: Progress, *, held: bool = False,
                       by: str = "") -> list[Cut]:
    """Record interrupted the runs of ``target``'s environment left unfinished, saying each;
    returns them. Under the environment lock, no run of the environment is in progress, so
    an unfinished one was cut: the lock is taken here unless ``held`` (the caller holds it,
    or holds the environment's lease, ``by`` naming whom the runs were left by). Raises
    ``LockHeld`` when a run holds the lock (its row is not touched). Called by ``run``, and by
    the daemon at its start, when it takes a lease and before a cycle reads the history."""
    with contextlib.nullcontext() if held else environment_lock(target, "recover"):
        cuts: list[Cut] = []
        for run_id in store.recover_unfinished(target.environment):
            detail = store.run(run_id)
            cuts.append(Cut(run_id, detail.run.kind if detail else "",
                            detail.run.sha if detail else None))
        # a cut apply may have changed a host after its verified fingerprints were recorded
        # (cut during the verify): nothing is known converged, the next apply does it all
        forget = (any(c.kind in APPLY_KINDS for c in cuts)
                  and store.forget_converged(target.environment))
    for cut in cuts:
        say(f"run {cut.run_id} was {f'left unfinished by {by}' if by else 'cut before its end'}"
            ": recorded as interrupted")
    if forget:
        say("a cut apply may have changed what was verified: every service is applied next")
    return cuts


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


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
    return revision, _load(target, revision, progress or (lambda _: None), keep=keep)


def _load(target: Target, revision: Revision, say: Progress, *,
          keep: bool = True) -> DeclaredState:
    say(f"revision {revision.ref} by {revision.author}: {revision.message.splitlines()[0]}")
    with (contextlib.nullcontext(source.snapshot(target.repo, revision, target.state_dir))
          if keep else source.passing_snapshot(target.repo, revision, target.state_dir)) as snap:
        state = load_stage.load(Path(snap.path), target.environment, revision=revision.ref,
                                host_source=_host_source(target), keys=target.sops)
    say(f"{len(state.hosts)} hosts, services: {', '.join(state.service_order)}")
    for warning in state.warnings:
        say(f"warning: {warning}")
    return state


def plan(target: Target, progress: Progress | None = None) -> Outcome:
    """Fetch, validate and dry-run; changes nothing and records nothing. The removals the
    record calls for are listed, those that would run dry-run with their ``remove.py``."""
    try:
        revision, state = declared(target, progress)
        result = apply_stage.plan(state, on_progress=progress)
        installed = _read_installed(target)
        found = prune.removals(state, installed, _prunes(target, state))
        doing = prune.removal_state(state, found, installed)
        if doing.hosts:
            removing = apply_stage.plan(doing, on_progress=progress, remove=True)
            result = result.model_copy(update={"hosts": _merge_plan_hosts(removing.hosts,
                                                                          result.hosts)})
        result = result.model_copy(update={"removals": found})
    except InvalidDeclaration as exc:
        return Outcome("invalid", error=exc)
    except GitopsError as exc:
        return Outcome("error", error=exc)
    failed = any(h.error for h in result.hosts)
    return Outcome("failed" if failed else "succeeded", revision=revision, plan=result)


def _prunes(target: Target, state: DeclaredState) -> bool:
    """Whether removals run: the daemon settings' ``prune``, else the inventory's."""
    return target.prune if target.prune is not None else state.settings.prune


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


def _merge_plan_hosts(first: tuple[HostPlan, ...],
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


def _pruned(removals: tuple[Removal, ...], host: str | None = None) -> list[Condition]:
    """The ``Pruned`` condition of a host (or, with None, the environment): False naming what
    the host keeps that the revision no longer declares; nothing when there is none."""
    kept = [r for r in removals if r.action != "remove" and (host is None or r.host == host)]
    if not kept:
        return []
    reason = "PruneDisabled" if all(r.action == "not pruned" for r in kept) else "LeftInPlace"
    notes = [r.note if host is not None else f"{r.host}/{r.note}" for r in kept]
    return [Condition("Pruned", "False", reason, "; ".join(notes)[:300])]


@dataclass(frozen=True)
class Request:
    """What one run should do beyond "the branch head, every host"."""

    kind: RunKind = "reconcile"
    reason: str = ""
    revision: str | None = None
    """Apply this commit instead of the branch head (rollback)."""
    hosts: frozenset[str] | None = None
    """Only these hosts (retry of the failed ones)."""
    signing: SigningPolicy | None = None
    """Refuse a commit not signed by one of these keys."""
    stop: threading.Event | None = None
    """Set to stop between batches: the run is recorded as interrupted."""
    actor: str | None = None
    changed_only: bool = False
    """Apply on each host only the services that changed since its last apply that verified
    (the daemon, for a new commit); every service is still verified."""


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
                retention.prune_snapshots(store, target.state_dir, target.keep_snapshots)
            return outcome
    except LockHeld as exc:
        return Outcome("error", error=exc)
    finally:
        store.close()


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
        state = _load(target, revision, say)
        hosts = [h.name for h in state.hosts]
        store.set_owners(env, "inventory", state.settings.team, state.settings.service_teams)
        stages["source+load"] = time.monotonic() - t
        targeted = state.limit(set(request.hosts) if request.hosts is not None else None)
        prints = fingerprints(targeted, _fingerprint_key(target.state_dir))
        installed = store.installed(env)
        removals = prune.removals(targeted, installed, _prunes(target, state))
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
            recovering = frozenset(journal.interrupted(folder) & {h.name for h in targeted.hosts})
            if recovering:
                say(f"the last apply on {', '.join(sorted(recovering))} was interrupted: "
                    "every service is applied there")
            unchanged = {h: set() if h in recovering else kept
                         for h, kept in _unchanged(targeted, prints, converged).items()}

            def batch_done(applied: ApplyReport, checks: VerifyReport) -> None:
                store.record_batch(run_id, applied, checks)
                _record_installed(store, env, revision.ref, targeted, applied, removals)
                _host_status(store, env, Outcome("succeeded", apply=applied, verify=checks),
                             revision.ref, revision.ref, prints, removals)

            def reverted(applied: ApplyReport) -> ApplyReport:
                return _check_reverts(store, target, revision, applied, say)

            outcome = _recovered(_rollout(targeted, revision, run_id, request, stages, say,
                                          target.connections, unchanged, batch_done, folder,
                                          removals, installed, reverted),
                                 recovering)
            outcome = replace(outcome, removals=removals, plan=outcome.plan.model_copy(
                update={"removals": removals}) if outcome.plan is not None else None)
            _quarantine_reverted(store, env, outcome, say)
            _record_earlier_reverts(store, env, outcome, actor)
    except InvalidDeclaration as exc:
        outcome = Outcome("invalid", run_id=run_id, revision=outcome.revision, error=exc)
    except GitopsError as exc:
        outcome = Outcome("error", run_id=run_id, revision=outcome.revision, error=exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: still finalize the record
        interrupted = Outcome("interrupted", run_id=run_id, revision=outcome.revision)
        _finalize(store, target, kind, interrupted, prints, stages, f"{type(exc).__name__}")
        raise
    _finalize(store, target, kind, outcome, prints, stages, None)
    if kind != "verify" and outcome.result == "succeeded" and hosts is not None:
        _record_verified(store, target, outcome, hosts)
    return outcome


def _record_verified(store: Store, target: Target, outcome: Outcome, hosts: list[str]) -> None:
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
    _drop_superseded(store, target, revision)


def _drop_superseded(store: Store, target: Target, revision: Revision) -> None:
    """The quarantined revisions ``revision`` (now verified on every host) descends from
    leave the quarantine: a newer commit fixed what they broke, and no cycle applies an
    older commit than the head again."""
    quarantined = {q.sha for q in store.quarantined(target.environment)} - {revision.sha}
    if quarantined:
        before = set(source.lineage(target.repo, target.state_dir, revision.sha))
        store.drop_quarantined(target.environment, sorted(quarantined & before))


def _fingerprint_key(state_dir: Path) -> bytes:
    """This state folder's key for fingerprints (created once, readable by its owner only).

    Fingerprints cover service parameters, which may hold secrets: keyed, the digests kept
    in the database say nothing about them."""
    path = state_dir / "fingerprint.key"
    if not path.exists():
        # written whole under another name, then linked: two first runs (of two environments)
        # cannot see a half-written key or make two
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".fingerprint.key.")
        try:
            os.write(fd, secrets.token_bytes(32))
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def fingerprints(state: DeclaredState, key: bytes) -> dict[str, dict[str, str]]:
    """host -> service -> keyed digest of everything that service's apply on that host reads:
    the service's files (``service_digests``), its parameters, the host's variables, groups,
    address and SSH user and port, and the gitops version. Equal: the same apply."""
    from gitops import __version__

    out: dict[str, dict[str, str]] = {}
    for h in state.hosts:
        common = {"gitops": __version__, "address": h.address, "user": h.ssh.user,
                  "port": h.ssh.port, "groups": list(h.groups), "vars": h.vars}
        out[h.name] = {
            service: hmac.new(key, json.dumps(
                {**common, "files": state.service_digests.get(service, ""), "params": params},
                sort_keys=True, default=str).encode(), hashlib.sha256).hexdigest()
            for service, params in h.services.items()
        }
    return out


def _unchanged(state: DeclaredState, prints: dict[str, dict[str, str]],
               converged: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    """host -> the services whose fingerprint is the one its last verified apply had."""
    return {h.name: {s for s in h.services
                     if converged.get(h.name, {}).get(s) == prints[h.name][s]}
            for h in state.hosts}


def _rollout(
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
) -> Outcome:
    """Apply then verify batch by batch (canary first); stop past the fail percentage, or
    at a guarded apply that was not confirmed (``gitops.pipeline.guard``: the host reverted it, or
    was not reached again), whose reverts ``reverted`` checks.

    A host's services in ``unchanged`` are not applied (all of them are verified);
    ``removals`` to run (``gitops.pipeline.prune``) run on each batch's hosts before its apply, with
    the parameters ``installed`` (the record) has; ``batch_done`` records each batch's hosts
    as soon as it is verified."""
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
        plan_, applied = (apply_stage.apply(todo, on_progress=say, journal=journal_dir)
                          if todo.hosts
                          else (Plan(hosts=()), ApplyReport(hosts=())))
        applied = _with_removals(removed, _with_unchanged(part, applied, unchanged))
        if reverted is not None and applied.reverted_hosts:
            applied = reverted(applied)
        stages["plan+apply"] = stages.get("plan+apply", 0) + time.monotonic() - t
        plan_hosts += plan_.hosts
        report = _merge_apply(report, applied)
        ok = {h.host for h in applied.hosts if h.status == "ok"}
        t = time.monotonic()
        batch_checks = verify_stage.verify(part.limit(ok), on_progress=say,
                                           connections=connections)
        batch_checks = _not_applied(part, applied, batch_checks)
        stages["verify"] = stages.get("verify", 0) + time.monotonic() - t
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
                state = _load(target, prev, lambda _: None).limit({h.host})
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


def _quarantine_reverted(store: Store, env: str, outcome: Outcome, say: Progress) -> None:
    """A revision a host reverted by itself is quarantined, as a rollback quarantines one:
    not applied again until a newer commit."""
    hosts = outcome.apply.reverted_hosts if outcome.apply else []
    if hosts and outcome.revision is not None:
        store.quarantine(env, outcome.revision.sha,
                         f"RevertedByHost: {', '.join(hosts)} reverted its guarded apply")
        say(f"{outcome.revision.short} quarantined: {', '.join(hosts)} reverted its guarded "
            "apply by itself")


def _record_earlier_reverts(store: Store, env: str, outcome: Outcome, actor: str) -> None:
    """A revert an earlier run left on a host, run before this apply (or found fired), is
    recorded in the history as a ``guard`` event: what it restored, on which host."""
    for h in outcome.apply.hosts if outcome.apply else ():
        if h.guard is not None and h.guard.earlier:
            store.record_event(env, "guard", actor=actor, reason=f"{h.host}: {h.guard.earlier}",
                               sha=outcome.revision.sha if outcome.revision else None)


def journal_folder(target: Target) -> Path:
    """Where the applies of ``target``'s environment journal their operations."""
    return target.state_dir / "journal" / target.environment


def _recovered(outcome: Outcome, recovering: frozenset[str]) -> Outcome:
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


def _finalize(
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
        _host_status(store, env, outcome, ref, attempted, prints, removals)
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


def not_verified(outcome: Outcome) -> list[str]:
    """The hosts the run applied (without a failure) on which no check ran: applied, not
    verified (``VerifyReport.not_verified``)."""
    return outcome.verify.not_verified(outcome.apply) if outcome.verify else []


def _record_installed(store: Store, env: str, ref: str, state: DeclaredState,
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


def _host_status(
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
