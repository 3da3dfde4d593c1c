"""The daemon's decisions as pure functions: typed values in, a frozen decision out.

``loop.Daemon`` gathers the inputs (the branch head, the environment's controls, its newest
apply run, the quarantine, its status record), calls one of these and carries the decision
out; nothing here touches a thread, the store, Git or a host, and randomness (jitter) comes
in as a number in [0, 1], so each rule is a row of a table in ``tests/test_policy.py``.

- ``next_run``: what a cycle runs (or why nothing), given the head, controls and history;
  outside the maintenance window (``CycleInput.window``) a new revision waits.
- ``until_window``: the next cycle's delay, never past the opening of the window.
- ``after_run``: what follows a run: done, stalled, rollback and quarantine (and why:
  ``quarantine_reason``), retry, backoff; hosts that only fell short of the checks
  (``short_of_checks``) are not rolled back, and a run that failed only so (``checks_only``)
  is no failed change.
- ``rollback_targets``: which revision each failed host goes back to.
- ``after_drift``: tell people, and (``drift: correct``) re-apply on which hosts.
- ``event_kind``: which notification a run's end is.
- ``refusal``: whether an operator's trigger is refused now (suspended), and the answer;
  ``override``: whether a run the command line makes itself is (``--force`` overrides).
- ``promotion``: what an environment with ``promote_from`` may apply now (the newest
  revision verified on every host upstream, in commit order; an operator's promotion first),
  and what waits for the upstream environment; ``next_run`` applies it
  (``CycleInput.promotion``). ``pending_promotion`` finds an operator's promotion not yet
  run; ``promotion_refusal`` says why an operator's promotion is refused.
- ``backoff`` and ``jitter``: the waits.

A new rule (previews, promotion, maintenance windows, guards) is a field of the input it
needs and a branch in the decision it changes, or a function of its own beside these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from gitops import records
from gitops.records import Controls, RunKind, RunResult
from gitops.report.summary import RunSummary, checks_only, short_of_checks
from gitops.schedule import WindowState
from gitops.settings import EnvironmentConfig, EventKind

__all__ = [
    "After",
    "Controls",
    "Cycle",
    "CycleInput",
    "DriftAction",
    "EnvStatus",
    "LastRun",
    "ManualPromotion",
    "Override",
    "Promotion",
    "PromotionInput",
    "Release",
    "RunOrder",
    "RunSummary",
    "Trigger",
    "after_drift",
    "after_run",
    "backoff",
    "checks_only",
    "event_kind",
    "jitter",
    "needs_run",
    "next_run",
    "override",
    "pending_promotion",
    "promotion",
    "promotion_refusal",
    "quarantine_reason",
    "refusal",
    "rollback_targets",
    "short_of_checks",
    "until_window",
]

DAEMON = "gitops-daemon"
"""The actor of the runs the daemon starts on its own."""


# -- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastRun:
    """The environment's newest apply run (reconcile, rollback or retry)."""

    sha: str | None
    result: RunResult | None
    """None: unfinished (still running, or cut by a kill not yet recovered)."""

    @classmethod
    def from_history(cls, rows: Iterable[records.RunRow]) -> LastRun | None:
        for row in rows:
            if row.kind in records.APPLY_KINDS:
                return cls(sha=row.sha, result=cast("RunResult | None", row.result))
        return None


@dataclass(frozen=True)
class Release:
    """An operator's release of a quarantined revision (``gitops unquarantine``) that no
    apply run has followed yet: the revision is applied again, in full, as theirs."""

    sha: str
    actor: str
    reason: str

    @classmethod
    def from_history(cls, rows: Iterable[records.RunRow]) -> Release | None:
        """The newest ``unquarantine`` event, unless an apply run came after it."""
        for row in rows:
            if row.event and row.kind == "unquarantine" and row.sha:
                return cls(row.sha, row.actor, row.reason)
            if not row.event and row.kind in records.APPLY_KINDS:
                return None
        return None


@dataclass(frozen=True)
class EnvStatus:
    """What the environment's own status record says (revisions as bare shas)."""

    attempted: str | None = None
    applied: str | None = None
    stalled: bool = False
    ready: bool = False

    @classmethod
    def from_row(cls, row: records.StatusRow | None) -> EnvStatus | None:
        if row is None:
            return None
        return cls(attempted=row.last_attempted.sha if row.last_attempted else None,
                   applied=row.last_applied.sha if row.last_applied else None,
                   stalled=row.is_true("Stalled"), ready=row.is_true("Ready"))


@dataclass(frozen=True)
class Trigger:
    """Who asked for a cycle and why."""

    reason: str
    actor: str
    force: bool = False
    """An operator's ``--force --reason``: runs outside the maintenance window (recorded)."""

    @property
    def look_only(self) -> bool:
        """A webhook or the repository watcher says "look now"; an operator says "run now"."""
        return self.actor.startswith(("webhook:", "watch"))


@dataclass(frozen=True)
class CycleInput:
    """Everything a cycle's decision depends on."""

    head: str
    controls: Controls
    last: LastRun | None
    quarantined: frozenset[str]
    status: EnvStatus | None
    pending: Trigger | None = None
    retry: frozenset[str] | None = None
    """Hosts an operator (or the last run's unreachable hosts) asked to retry."""
    window: WindowState | None = None
    """The maintenance windows' state at the cycle's ``now``; None: no windows (open)."""
    promotion: Promotion | None = None
    """For an environment with ``promote_from``: what it may apply (``promotion``)."""
    released: Release | None = None
    """A quarantined revision an operator released, not applied since (``Release``)."""


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOrder:
    """A run to start, as ``reconcile.Request`` wants it."""

    kind: RunKind
    revision: str
    reason: str
    actor: str
    hosts: frozenset[str] | None = None
    changed_only: bool = False
    """A new commit: apply what changed; an operator's run or a retry: everything."""
    previous: str | None = None
    """The applied revision to compare with (force-push detection), when it matters."""


@dataclass(frozen=True)
class Cycle:
    """What one poll does: release a rollback hold, run something, or nothing (why)."""

    run: RunOrder | None
    why: str = ""
    release_hold: bool = False
    waiting: WindowState | None = None
    """Set when a run is withheld until the maintenance window opens (``describe()``)."""
    waiting_for: str | None = None
    """What waits for the upstream environment (promotion), shown as a condition."""


def needs_run(wanted: str, last: LastRun | None, status: EnvStatus | None) -> bool:
    """Whether ``wanted`` still has to be reconciled (no SSH is needed to know)."""
    if status is not None and status.attempted == wanted and status.stalled:
        return False  # permanent failure: wait for a new commit
    if last is None or last.sha != wanted:
        return True
    # cut short (a kill, a stop) or a temporary error: again, after the backoff
    return last.result in ("interrupted", "error")


def next_run(i: CycleInput) -> Cycle:
    """What a cycle does. Suspended: nothing. A hold is kept until a newer commit. A
    quarantined head is left alone until an operator releases it (then it runs as theirs,
    even after a failure of its own). Outside the maintenance window nothing is applied but
    an operator's rollback hold or a forced trigger; the decision says when the window
    opens."""
    if i.controls.suspended:
        return Cycle(None, why=f"suspended by {i.controls.actor or '?'}")
    held = i.controls.held_sha
    release = bool(held and i.head != i.controls.held_head)
    if release:
        held = None
    wanted: str | None = held or i.head
    promo = i.promotion
    waiting_for = promo.waiting if promo is not None else None
    trigger = i.pending
    if promo is not None and not held:
        wanted = promo.sha or (i.status.applied if i.status is not None else None)
        if wanted is None:
            return Cycle(None, why=waiting_for or "nothing verified upstream yet",
                         release_hold=release, waiting_for=waiting_for)
        by_hand = promo.actor != DAEMON
        if promo.sha is not None and (trigger is None or trigger.look_only or by_hand) \
                and not (trigger and trigger.force):
            trigger = Trigger(promo.reason, promo.actor)  # an operator's "run now" stays theirs
    assert wanted is not None
    if wanted in i.quarantined and not held:
        return Cycle(None, why=f"{wanted[:10]} is quarantined", release_hold=release,
                     waiting_for=waiting_for)
    # released from quarantine by an operator: theirs, in full, even if it failed last time
    released = i.released is not None and i.released.sha == wanted and not held
    if released and i.released is not None and (trigger is None or trigger.look_only):
        trigger = Trigger(f"released from quarantine by {i.released.actor}: "
                          f"{i.released.reason}", i.released.actor)
    forced = (i.pending is not None and not i.pending.look_only) or released
    # a retry of some hosts is of the revision the last run applied; once the head moved on,
    # every host needs the new one: a reconcile of all of them (the retried ones get all)
    retry = i.retry if i.last is None or i.last.sha == wanted else None
    if not forced and retry is None and not needs_run(wanted, i.last, i.status):
        return Cycle(None, why=f"{wanted[:10]} is up to date", release_hold=release,
                     waiting_for=waiting_for)
    closed = i.window is not None and not i.window.open
    if closed and not held and not (i.pending and i.pending.force):
        assert i.window is not None
        return Cycle(None, why=i.window.describe(), release_hold=release, waiting=i.window,
                     waiting_for=waiting_for)
    kind: RunKind = "rollback" if held else "reconcile"
    trigger = trigger or Trigger(f"new commit {wanted[:10]}", DAEMON)
    return Cycle(RunOrder(
        kind="retry" if retry is not None else kind, revision=wanted, reason=trigger.reason,
        actor=trigger.actor, hosts=retry,
        changed_only=kind == "reconcile" and retry is None and not forced,
        previous=None if held or i.status is None else i.status.applied,
    ), release_hold=release, waiting_for=waiting_for)


# -- promotion between environments ----------------------------------------------------


@dataclass(frozen=True)
class ManualPromotion:
    """An operator's ``gitops promote``: who, why, which revision (a history event)."""

    sha: str
    actor: str
    reason: str
    event: int

    @classmethod
    def from_row(cls, row: records.RunRow) -> ManualPromotion:
        assert row.sha is not None
        return cls(row.sha, row.actor, row.reason, row.id)


@dataclass(frozen=True)
class PromotionInput:
    """What ``promotion`` needs: the downstream branch's commits, the upstream's record."""

    upstream: str
    """The upstream environment's name (for messages)."""
    lineage: tuple[str, ...]
    """The commits of the downstream branch, oldest first, ending with its head."""
    verified: frozenset[str]
    """Revisions applied and verified on every host upstream."""
    quarantined: frozenset[str]
    """Revisions quarantined upstream."""
    applied: str | None
    """The downstream environment's applied revision."""
    by_hand: ManualPromotion | None = None
    """An operator's promotion not run yet (``pending_promotion``)."""


@dataclass(frozen=True)
class Promotion:
    """What a downstream environment may apply now, and what waits for its upstream."""

    sha: str | None
    """The revision to apply; None: nothing new (keep the applied one)."""
    reason: str = ""
    actor: str = DAEMON
    waiting: str | None = None
    """"waiting for staging to verify <sha>" (or why the head is never promoted)."""


def promotion(i: PromotionInput) -> Promotion:
    """An operator's promotion first; else the newest commit of the branch, newer than the
    applied revision in commit order, that the upstream verified on every host and did not
    quarantine. A head beyond it waits for the upstream (or, quarantined there, never
    comes). An applied revision no longer on the branch (a force-push) sets no floor."""
    head = i.lineage[-1] if i.lineage else None
    if i.by_hand is not None:
        return Promotion(i.by_hand.sha, actor=i.by_hand.actor,
                         reason=f"promoted by {i.by_hand.actor}"
                                + (f": {i.by_hand.reason}" if i.by_hand.reason else ""))
    position = {sha: n for n, sha in enumerate(i.lineage)}
    floor = position.get(i.applied, -1) if i.applied else -1
    newer = i.lineage[floor + 1:]
    ready = [sha for sha in newer if sha in i.verified and sha not in i.quarantined]
    target = ready[-1] if ready else None
    waiting = None
    if head is not None and head not in (target, i.applied) and head in newer:
        if head in i.quarantined:
            waiting = f"{head[:10]} is quarantined on {i.upstream}: it is not promoted"
        else:
            waiting = f"waiting for {i.upstream} to verify {head[:10]}"
    reason = f"promoted from {i.upstream}: {target[:10]} verified on every host there" \
        if target else ""
    return Promotion(target, reason=reason, waiting=waiting)


def pending_promotion(history: Iterable[records.RunRow]) -> ManualPromotion | None:
    """The newest operator promotion (``promote`` event, newest first in ``history``) that
    no later apply run of its revision has decided (succeeded, failed or invalid); one cut
    short or in error is run again."""
    decided: set[str] = set()
    for row in history:
        if row.event and row.kind == "promote" and row.sha:
            return None if row.sha in decided else ManualPromotion.from_row(row)
        if (not row.event and row.kind in records.APPLY_KINDS and row.sha
                and row.result in ("succeeded", "failed", "invalid")):
            decided.add(row.sha)
    return None


def promotion_refusal(environment: str, upstream: str, sha: str, *,
                      verified: frozenset[str], quarantined_here: frozenset[str],
                      force: bool, reason: str) -> str | None:
    """Why an operator's promotion of ``sha`` is refused, or None. Not verified on every
    host upstream: refused unless forced with a reason; quarantined here: refused."""
    if not reason.strip():
        return "a promotion needs a reason: who promoted what, and why, is recorded"
    if sha in quarantined_here:
        return (f"{sha[:10]} is quarantined on {environment}: it failed there; promote a "
                "newer revision")
    if sha not in verified and not force:
        return (f"{sha[:10]} is not verified on every host of {upstream}; wait for it, or "
                "`gitops promote --force --reason WHY`")
    return None


Next = Literal["done", "stalled", "backoff", "rollback", "retry"]


@dataclass(frozen=True)
class After:
    """What follows a run."""

    next: Next
    delay_s: float
    failures: int
    """Consecutive temporary failures after this run (the backoff exponent)."""
    rollback: frozenset[str] = frozenset()
    """Roll these hosts back to their last verified revision and quarantine the run's."""
    retry: frozenset[str] | None = None
    """Retry only these hosts at the next cycle."""
    quarantine: str = ""
    """With ``rollback``: why the run's revision is quarantined (``quarantine_reason``)."""
    short: frozenset[str] = frozenset()
    """Hosts that failed checks although nothing changed on them (``short_of_checks``):
    the checks found them short (a stricter check, or drift); not rolled back."""


def quarantine_reason(s: RunSummary, hosts: Iterable[str]) -> str:
    """Why a revision rolled back from ``hosts`` is quarantined: its apply failed there, its
    verification failed there, or both (each with its hosts)."""
    wanted = set(hosts)
    apply = sorted(wanted & s.apply_failed)
    verify = sorted(wanted - s.apply_failed)
    parts = ([f"apply failed on {', '.join(apply)}"] if apply else []) + (
        [f"verification failed on {', '.join(verify)}"] if verify else [])
    return "; ".join(parts)


def after_run(s: RunSummary, cfg: EnvironmentConfig, failures: int, rand: float) -> After:
    """Done, stalled until a new commit, rollback and quarantine, retry, or backoff.

    A host that fails right after recovering from an interrupted apply is retried, never
    rolled back: the crash was the controller's, not the commit's.

    A host that reverted its guarded apply by itself (``RevertedByHost``, a failed host) is
    rolled back like any failed host, its unguarded services of that pass too: the revert
    restored only the guarded services' files, so the host runs half of a revision that is
    quarantined (never applied again) and verified nowhere. The rollback gives the whole host
    its last verified revision, one state the record can name (every service is applied:
    a failed host's convergence record is cleared); the guarded services are already back
    there, so for them it changes nothing. Without ``auto_rollback`` the host
    stays as the revert left it, as any failed host stays.

    A host that failed its checks although nothing changed on it (``short_of_checks``: the
    commit only made a check stricter) is not rolled back: the commit did not change it."""
    if s.result == "succeeded":
        return After("done", jitter(cfg.interval, cfg.jitter, rand), 0)
    if s.result == "invalid" or s.permanent:
        return After("stalled", jitter(cfg.interval, cfg.jitter, rand), 0)
    if s.result in ("error", "interrupted"):
        return After("backoff", backoff(failures + 1, cfg.retry_base, cfg.retry_max, rand),
                     failures + 1)
    retry = s.unreachable | (s.broken & s.recovering)
    short = short_of_checks(s)
    broken = s.broken - s.recovering - short
    rollback = broken if cfg.auto_rollback and s.revision is not None else frozenset()
    why = quarantine_reason(s, rollback) if rollback else ""
    if retry:
        return After("retry", backoff(failures + 1, cfg.retry_base, cfg.retry_max, rand),
                     failures + 1, rollback=rollback, retry=retry, quarantine=why, short=short)
    return After("rollback" if rollback else "done", jitter(cfg.interval, cfg.jitter, rand), 0,
                 rollback=rollback, quarantine=why, short=short)


@dataclass(frozen=True)
class HostRevision:
    """A host's last verified revision (bare sha), from its status record."""

    host: str
    verified: str | None

    @classmethod
    def from_row(cls, row: records.StatusRow) -> HostRevision:
        return cls(row.host, row.last_verified.sha if row.last_verified else None)


def rollback_targets(bad: str, hosts: Iterable[str],
                     status: Iterable[HostRevision]) -> dict[str, frozenset[str]]:
    """revision -> the failed hosts to give it: each host its last verified revision; a
    host never verified, or last verified with ``bad`` itself, is left as it is."""
    wanted = set(hosts)
    out: dict[str, set[str]] = {}
    for row in status:
        if row.host in wanted and row.verified and row.verified != bad:
            out.setdefault(row.verified, set()).add(row.host)
    return {sha: frozenset(names) for sha, names in sorted(out.items())}


@dataclass(frozen=True)
class DriftAction:
    """What a drift check's result asks for."""

    notify: bool
    correct: frozenset[str] = frozenset()
    """Re-apply the checked revision on these hosts (``drift: correct``)."""


def after_drift(result: RunResult, failed_hosts: Iterable[str],
                policy: Literal["report", "correct"],
                window: WindowState | None = None) -> DriftAction:
    """Drift is always reported; corrected (``drift: correct``) only inside the window."""
    if result != "failed":
        return DriftAction(notify=False)
    correct = policy == "correct" and (window is None or window.open)
    return DriftAction(notify=True, correct=frozenset(failed_hosts) if correct
                       else frozenset())


def until_window(delay_s: float, window: WindowState | None, now: datetime) -> float:
    """The next cycle's delay: ``delay_s``, but no later than the window's opening (so a
    waiting revision is applied as it opens, never an interval after)."""
    if window is None or window.open or window.opens_at is None:
        return delay_s
    return max(0.0, min(delay_s, (window.opens_at - now).total_seconds()))


def event_kind(result: RunResult, *, was_ready: bool) -> EventKind | None:
    """The notification a finished reconcile is: success, recovery, failure, or none."""
    if result == "succeeded":
        return "success" if was_ready else "recovery"
    if result in ("failed", "invalid", "error"):
        return "failure"
    return None  # interrupted: the next run says how it ended


def refusal(environment: str, controls: Controls, trigger: Trigger,
            window: WindowState | None = None) -> str | None:
    """Why an operator's "reconcile now" cannot be honoured, or None. A webhook's or the
    watcher's "look now" is never refused: its cycle just applies nothing while suspended
    or outside the window. ``--force`` overrides a closed window, not a suspension."""
    if trigger.look_only:
        return None
    if not controls.suspended:
        if window is None or window.open or trigger.force:
            return None
        return (f"{environment} is outside its maintenance window: {window.describe()}; "
                "`gitops reconcile --force --reason WHY` runs it now")
    why = f": {controls.reason}" if controls.reason else ""
    since = controls.since.isoformat(timespec="seconds") if controls.since else "?"
    return (f"{environment} is suspended by {controls.actor or '?'} since "
            f"{since}{why}; nothing is applied until it is resumed")


@dataclass(frozen=True)
class Override:
    """A control stopping an operator's own run: ``why`` (recorded with a forced run as
    "while {why}"), and the refusal (None: forced)."""

    why: str
    refused: str | None


def override(environment: str, action: str, controls: Controls, *,
             force: bool) -> Override | None:
    """Whether the command line's own run (``reconcile --once``, ``rollback``, ``retry``)
    may go ahead; None: no control stops it. Suspended or held by a rollback: refused unless
    ``force``. Unlike ``refusal`` (the daemon's), ``--force`` overrides a suspension too."""
    since = controls.since.isoformat() if controls.since else "?"
    actor = controls.actor or "?"
    if controls.suspended:
        why = f"suspended by {actor} since {since}: {controls.reason}"
    elif controls.held_sha:
        why = f"held at {controls.held_sha[:10]} by a rollback (by {actor} since {since})"
    else:
        return None
    return Override(why, None if force else (
        f"{environment} is {why}; `gitops resume` first, or `gitops {action} --force "
        "--reason WHY`"))


def jitter(seconds: float, fraction: float, rand: float) -> float:
    """``seconds`` times a factor in [1 - fraction, 1 + fraction] (``rand`` in [0, 1])."""
    return float(seconds * (1 + fraction * (2 * rand - 1)))


def backoff(failures: int, base: float, cap: float, rand: float) -> float:
    """Exponential backoff with full jitter after ``failures`` consecutive failures (>= 1):
    a random share of min(cap, base * 2^(failures-1)), never below half the base."""
    ceiling = min(cap, base * 2 ** (max(failures, 1) - 1))
    return float(max(base / 2, ceiling * rand))
