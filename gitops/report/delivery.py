"""Delivery metrics (the DORA four keys) computed from the reconciler's own run history.

Read by the CLI (``gitops metrics``), the API, the Prometheus exporter and the status page
(wired elsewhere). A pure function of the run history and its verified hosts (read through
``Store.runs`` and ``Store.verified_hosts``) and of ``now`` (injected, so tests are exact).
Definitions, per environment and window ``[now - days, now]`` (times are the store's UTC
timestamps):

- **Rollout**: the first ``reconcile`` run of a sha never applied successfully before in the
  environment (no earlier ``succeeded`` reconcile/rollback/retry run of it), with every later
  ``reconcile`` or ``retry`` run of that sha as further attempts. Drift corrections (reason
  "drift correction") re-apply an applied sha and are not rollouts. ``invalid`` runs are left
  out entirely: an invalid declaration never reached a host, so it is neither a deployment nor
  a change failure.
- **Deployment**: a rollout verified on all targeted hosts, i.e. one of its attempts
  ``succeeded``; it is deployed at that run's ``finished_at``. **Deployment frequency** =
  deployments in the window / ``days``.
- **Lead time for changes**: ``finished_at`` of the verifying run - the commit's
  ``committed_at``, over the window's deployments; median (``statistics.median``) and p90
  (nearest rank: the ``ceil(0.9 n)``-th smallest).
- **Change failure rate**: failed rollouts / decided rollouts, over rollouts first attempted in
  the window. A rollout *failed* when an attempt ended ``failed`` before it was verified, or when
  a ``rollback`` (run or operator request) came while it was the latest rollout. A rollout is
  *decided* once deployed or failed; rollouts that only errored, were interrupted or are still
  running are counted in ``rollouts_pending`` and left out of the rate. An attempt that failed
  only because hosts fell short of the checks while nothing changed on them
  (``summary.checks_only``: a commit that made a check stricter) is no failed change: such a
  rollout, not deployed since, is counted in ``short_of_checks``, left out of the rate, and
  opens no restore interval.
- **Time to restore**: from a failed rollout (the failed run's ``finished_at``; later failures
  before the restore belong to the same interval) to the next verified success in the
  environment: a ``succeeded`` reconcile/rollback/retry run that verified every host still
  failing (see ``gitops.report.incidents``); median over the intervals that started in the window,
  with the list of intervals; an interval not yet closed is ``unrestored_since``.
- **Series**: per UTC day of the window, deployments (by verified time) and failed rollouts
  (by the time of the failure).
- **Lead time per stage** (an environment with ``promote_from``): over the revisions it
  verified on every host in the window (``Store.verified_revisions``) that its upstream
  verified too, the wait of each stage: commit -> verified on every host of the first
  environment of the chain, then -> verified on every host of each next one (commit ->
  staging -> production); median, p90 and count per stage. A revision promoted by force
  (never verified upstream) is left out.

``compare`` puts groups side by side: per owning team (``gitops.report.teams``) or per environment,
the same keys pooled over the group's environments, this window against the one before
(``trend``), in buckets for the charts; ``DORA_BANDS`` is what the page and the CLI show
beside them as a reference.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

from gitops.record.store import Store
from gitops.records import RunRow, VerifiedRevision
from gitops.report.episodes import Episode, episodes, load_runs, verified_hosts
from gitops.report.summary import RunSummary, checks_only

__all__ = ["DORA_BANDS", "NO_TEAM", "DayCount", "DeliveryMetrics", "Group", "Keys", "Rollout",
           "StageLeadTime", "checks_only_runs", "compare", "delivery_metrics", "rollouts",
           "stage_lead_times", "trend"]


@dataclass(frozen=True)
class DayCount:
    day: date
    deployments: int
    failures: int

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "deployments": self.deployments,
                "failures": self.failures}


@dataclass(frozen=True)
class StageLeadTime:
    """How long revisions waited in one stage of the promotion pipeline."""

    start: str
    """"commit", or the environment the stage starts at (verified on every host there)."""
    end: str
    """The environment the stage ends at (verified on every host there)."""
    count: int
    median_s: float | None
    p90_s: float | None

    def as_dict(self) -> dict[str, Any]:
        start = "commit" if self.start == "commit" else f"verified on {self.start}"
        return {"stage": f"{start} -> verified on {self.end}", "from": self.start,
                "to": self.end, "count": self.count, "median_s": self.median_s,
                "p90_s": self.p90_s}


@dataclass
class Rollout:
    """One new sha through its attempts (built by ``rollouts``, then read-only)."""

    sha: str
    first_attempt: RunRow
    committed_at: datetime | None
    deployed_at: datetime | None = None
    deployed_by: int | None = None
    failed_at: datetime | None = None
    short_at: datetime | None = None
    """When an attempt failed only because hosts fell short of the checks (``checks_only``)."""

    @property
    def decided(self) -> bool:
        return self.deployed_at is not None or self.failed_at is not None

    @property
    def lead_time_s(self) -> float | None:
        if self.deployed_at is None or self.committed_at is None:
            return None
        return (self.deployed_at - self.committed_at).total_seconds()


@dataclass(frozen=True)
class DeliveryMetrics:
    """The four keys of one environment over one window; ``as_dict()`` is JSON-ready."""

    environment: str
    window_start: datetime
    window_end: datetime
    days: float
    deployments: int
    deployment_frequency_per_day: float
    lead_time_median_s: float | None
    lead_time_p90_s: float | None
    rollouts: int
    """Decided rollouts first attempted in the window (the rate's denominator)."""
    failed_rollouts: int
    change_failure_rate: float | None
    rollouts_pending: int
    time_to_restore_median_s: float | None
    restore_intervals_s: tuple[float, ...]
    unrestored_since: datetime | None
    lead_times_s: tuple[float, ...] = ()
    series: tuple[DayCount, ...] = field(default=())
    stages: tuple[StageLeadTime, ...] = ()
    """Lead time per stage of the promotion pipeline (``promote_from``); empty without."""
    short_of_checks: int = 0
    """Rollouts first attempted in the window that failed only because hosts fell short of
    the checks (nothing changed on them) and were not deployed since: not in the rate."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "days": self.days,
            "deployments": self.deployments,
            "deployment_frequency_per_day": self.deployment_frequency_per_day,
            "lead_time_median_s": self.lead_time_median_s,
            "lead_time_p90_s": self.lead_time_p90_s,
            "lead_times_s": list(self.lead_times_s),
            "rollouts": self.rollouts,
            "failed_rollouts": self.failed_rollouts,
            "change_failure_rate": self.change_failure_rate,
            "rollouts_pending": self.rollouts_pending,
            "short_of_checks": self.short_of_checks,
            "time_to_restore_median_s": self.time_to_restore_median_s,
            "restore_intervals_s": list(self.restore_intervals_s),
            "unrestored_since": self.unrestored_since.isoformat()
            if self.unrestored_since else None,
            "series": [d.as_dict() for d in self.series],
            "stages": [st.as_dict() for st in self.stages],
        }


def rollouts(runs: list[RunRow], short: Collection[int] = ()) -> list[Rollout]:
    """The rollouts of one environment's runs (oldest first), per the module's definitions;
    ``short``: the ids of the failed runs that failed only because hosts fell short of the
    checks (``checks_only_runs``)."""
    applied: set[str] = set()
    by_sha: dict[str, Rollout] = {}
    current: Rollout | None = None
    for run in runs:
        if run.kind == "rollback" and run.result not in ("invalid", None):
            if current is not None and current.failed_at is None:
                current.failed_at = run.at
        elif (run.kind in ("reconcile", "retry") and run.sha and run.result != "invalid"
              and not run.drift_correction):
            rollout = by_sha.get(run.sha)
            if rollout is None and run.kind == "reconcile" and run.sha not in applied:
                rollout = by_sha[run.sha] = Rollout(run.sha, run, run.committed_at)
                current = rollout
            if rollout is not None and rollout.deployed_at is None:
                if run.result == "failed" and run.id in short:
                    rollout.short_at = rollout.short_at or run.at
                elif run.result == "failed" and rollout.failed_at is None:
                    rollout.failed_at = run.at
                elif run.verified_success:
                    rollout.deployed_at, rollout.deployed_by = run.at, run.id
        if run.verified_success and run.sha:
            applied.add(run.sha)
    return list(by_sha.values())


def stage_lead_times(verified: list[VerifiedRevision], environment: str, start: datetime,
                     end: datetime) -> tuple[StageLeadTime, ...]:
    """The lead time per stage of ``environment``'s revisions verified in ``[start, end]``
    (every environment's verified revisions given, for the chain upstream)."""
    by_env: dict[str, dict[str, VerifiedRevision]] = {}
    for v in verified:
        by_env.setdefault(v.environment, {})[v.sha] = v
    waits: dict[tuple[str, str], list[float]] = {}
    order: list[tuple[str, str]] = []
    for v in by_env.get(environment, {}).values():
        if v.upstream is None or not start <= v.verified_at <= end:
            continue
        chain = [v]
        while chain[-1].upstream is not None and len(chain) <= len(by_env):
            above = by_env.get(chain[-1].upstream, {}).get(v.sha)
            if above is None:
                break
            chain.append(above)
        if chain[-1].upstream is not None:
            continue  # promoted by force somewhere: not verified all the way up
        chain.reverse()
        points = [("commit", v.committed_at)] + [(c.environment, c.verified_at) for c in chain]
        for (a, t0), (b, t1) in pairwise(points):
            if (a, b) not in waits:
                order.append((a, b))
            waits.setdefault((a, b), []).append((t1 - t0).total_seconds())
    return tuple(StageLeadTime(a, b, len(waits[(a, b)]), statistics.median(waits[(a, b)]),
                               _p90(waits[(a, b)])) for a, b in _chain_order(order))


def _chain_order(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The stages from the commit onwards, each after the one it follows."""
    out: list[tuple[str, str]] = []
    at = "commit"
    left = list(pairs)
    while left:
        nxt = next((p for p in left if p[0] == at), None)
        if nxt is None:
            out += left
            break
        out.append(nxt)
        left.remove(nxt)
        at = nxt[1]
    return out


def _failed_rollout(run: RunRow) -> str | None:
    if run.kind in ("reconcile", "retry") and run.result == "failed" and not run.drift_correction:
        return "failed rollout"
    return None


def checks_only_runs(store: Store, runs: Iterable[RunRow]) -> set[int]:
    """The failed reconcile and retry runs of ``runs`` that failed only because hosts fell
    short of the checks while nothing changed on them (``checks_only``)."""
    return {run.id for run in runs if _failed_rollout(run) is not None and checks_only(
        RunSummary.from_hosts("failed", store.host_results(run.id)))}


def _failed_change(short: Collection[int]) -> Callable[[RunRow], str | None]:
    """What opens a restore interval: a failed rollout, but one that only fell short of the
    checks."""
    return lambda run: None if run.id in short else _failed_rollout(run)


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.9 * len(ordered))) - 1]


def delivery_metrics(
    store: Store,
    *,
    environment: str | None = None,
    days: float = 90,
    now: datetime | None = None,
) -> dict[str, DeliveryMetrics]:
    """The four keys per environment (only ``environment`` when given) over the last ``days``."""
    if days <= 0:
        raise ValueError("days must be positive")
    end = now or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    start = end - timedelta(days=days)
    by_env = load_runs(store, environment)
    if environment is not None:
        by_env.setdefault(environment, [])
    verified = verified_hosts(store, environment)
    everywhere = store.verified_revisions()

    def inside(t: datetime | None) -> bool:
        return t is not None and start <= t <= end

    out: dict[str, DeliveryMetrics] = {}
    for env, runs in sorted(by_env.items()):
        short = checks_only_runs(store, runs)
        found = rollouts(runs, short)
        deployed = [r for r in found if inside(r.deployed_at)]
        lead = [t for r in deployed if (t := r.lead_time_s) is not None]
        attempted = [r for r in found if inside(r.first_attempt.started_at)]
        decided = [r for r in attempted if r.decided]
        failed = [r for r in decided if r.failed_at is not None]
        fell_short = [r for r in attempted if not r.decided and r.short_at is not None]
        restores = [e for e in episodes(runs, verified, _failed_change(short))
                    if inside(e.opened_at)]
        intervals = [(e.closed_at - e.opened_at).total_seconds()
                     for e in restores if e.closed_at is not None]
        open_since = next((e.opened_at for e in restores if e.closed_at is None), None)
        per_day: dict[date, list[int]] = {}
        day = start.astimezone(UTC).date()
        while day <= end.astimezone(UTC).date():
            per_day[day] = [0, 0]
            day += timedelta(days=1)
        for r in deployed:
            assert r.deployed_at is not None
            per_day[r.deployed_at.astimezone(UTC).date()][0] += 1
        for r in found:
            if r.failed_at is not None and inside(r.failed_at):
                per_day[r.failed_at.astimezone(UTC).date()][1] += 1
        out[env] = DeliveryMetrics(
            environment=env, window_start=start, window_end=end, days=days,
            deployments=len(deployed), deployment_frequency_per_day=len(deployed) / days,
            lead_time_median_s=statistics.median(lead) if lead else None,
            lead_time_p90_s=_p90(lead), lead_times_s=tuple(sorted(lead)),
            rollouts=len(decided), failed_rollouts=len(failed),
            change_failure_rate=len(failed) / len(decided) if decided else None,
            rollouts_pending=len(attempted) - len(decided) - len(fell_short),
            time_to_restore_median_s=statistics.median(intervals) if intervals else None,
            restore_intervals_s=tuple(intervals), unrestored_since=open_since,
            series=tuple(DayCount(d, c[0], c[1]) for d, c in per_day.items()),
            stages=stage_lead_times(everywhere, env, start, end),
            short_of_checks=len(fell_short),
        )
    return out



# -- teams and environments side by side ------------------------------------------------------

NO_TEAM = "(none)"
"""The group of environments no team owns (not a valid team name, so it never collides)."""

LOWER_IS_BETTER = {"deployment_frequency_per_day": False, "lead_time_median_s": True,
                   "change_failure_rate": True, "time_to_restore_median_s": True}
"""The four keys as compared, and which way is an improvement."""

DORA_BANDS: dict[str, list[tuple[str, str]]] = {
    "deployment_frequency_per_day": [
        ("elite", "on demand (several deployments a day)"),
        ("high", "between once a week and once a month"),
        ("medium", "between once a month and once every six months"),
        ("low", "fewer than once every six months")],
    "lead_time_median_s": [
        ("elite", "less than one hour"), ("high", "between one day and one week"),
        ("medium", "between one month and six months"), ("low", "more than six months")],
    "change_failure_rate": [
        ("elite", "0-15%"), ("high", "16-30%"), ("medium", "16-30%"), ("low", "16-30%")],
    "time_to_restore_median_s": [
        ("elite", "less than one hour"), ("high", "less than one day"),
        ("medium", "between one day and one week"), ("low", "more than six months")],
}
"""What good looks like: the performance bands of the DORA "Accelerate State of DevOps"
report (2021), per key. Shown beside the figures as a reference, never as a verdict."""


@dataclass(frozen=True)
class Keys:
    """The four keys of a group of environments over one interval (pooled: the medians are
    over all the group's lead times and restores, the rate over all its rollouts)."""

    start: datetime
    end: datetime
    deployments: int
    deployment_frequency_per_day: float
    lead_time_median_s: float | None
    rollouts: int
    failed_rollouts: int
    change_failure_rate: float | None
    restores: int
    time_to_restore_median_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "deployments": self.deployments,
                "deployment_frequency_per_day": self.deployment_frequency_per_day,
                "lead_time_median_s": self.lead_time_median_s, "rollouts": self.rollouts,
                "failed_rollouts": self.failed_rollouts,
                "change_failure_rate": self.change_failure_rate, "restores": self.restores,
                "time_to_restore_median_s": self.time_to_restore_median_s}


def trend(key: str, now: float | None, before: float | None) -> dict[str, Any]:
    """How ``key`` moved from the previous window: ``change`` (now - before), ``direction``
    (up, down, same) and ``better`` (True, False; None when either side has no figure or it
    did not move)."""
    if now is None or before is None:
        return {"previous": before, "change": None, "direction": None, "better": None}
    change = now - before
    direction = "same" if abs(change) < 1e-9 else ("up" if change > 0 else "down")
    better = None if direction == "same" else (direction == "down") == LOWER_IS_BETTER[key]
    return {"previous": before, "change": change, "direction": direction, "better": better}


@dataclass(frozen=True)
class Group:
    """One team (or environment) compared: this window, the one before, a trend per key and
    the keys per bucket of the window (for the charts)."""

    name: str
    environments: tuple[str, ...]
    current: Keys
    previous: Keys
    series: tuple[Keys, ...]

    def trends(self) -> dict[str, dict[str, Any]]:
        return {key: trend(key, getattr(self.current, key), getattr(self.previous, key))
                for key in LOWER_IS_BETTER}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "environments": list(self.environments),
                **self.current.as_dict(), "previous": self.previous.as_dict(),
                "trends": self.trends(), "series": [k.as_dict() for k in self.series]}


@dataclass(frozen=True)
class _History:
    rollouts: list[Rollout]
    restores: list[Episode]


def _keys(parts: list[_History], start: datetime, end: datetime, *, closed: bool = True) -> Keys:
    """The pooled keys of ``parts`` over ``[start, end]`` (``[start, end)`` unless closed),
    by the module's definitions (the same as ``delivery_metrics``)."""

    def inside(t: datetime | None) -> bool:
        return t is not None and start <= t and (t <= end if closed else t < end)

    lead: list[float] = []
    deployments = decided = failed = 0
    intervals: list[float] = []
    for part in parts:
        for r in part.rollouts:
            if inside(r.deployed_at):
                deployments += 1
                if (t := r.lead_time_s) is not None:
                    lead.append(t)
            if inside(r.first_attempt.started_at) and r.decided:
                decided += 1
                failed += r.failed_at is not None
        intervals += [(e.closed_at - e.opened_at).total_seconds() for e in part.restores
                      if inside(e.opened_at) and e.closed_at is not None]
    days = (end - start).total_seconds() / 86400
    return Keys(start, end, deployments, deployments / days if days > 0 else 0.0,
                statistics.median(lead) if lead else None, decided, failed,
                failed / decided if decided else None, len(intervals),
                statistics.median(intervals) if intervals else None)


def compare(
    store: Store,
    owners: dict[str, str],
    *,
    by: str = "team",
    days: float = 90,
    now: datetime | None = None,
) -> dict[str, Group]:
    """The four keys per team (``by="team"``, from ``owners``: environment -> team; an
    environment without one is in ``NO_TEAM``) or per environment, over the last ``days``
    and the ``days`` before, with a series of buckets (a day each for windows up to 14 days,
    else a week) for the charts."""
    if days <= 0:
        raise ValueError("days must be positive")
    if by not in ("team", "environment"):
        raise ValueError("by is team or environment")
    end = now or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    start = end - timedelta(days=days)
    by_env = load_runs(store)
    verified = verified_hosts(store)
    members: dict[str, list[str]] = {}
    histories: dict[str, _History] = {}
    for env, runs in sorted(by_env.items()):
        short = checks_only_runs(store, runs)
        histories[env] = _History(rollouts(runs, short),
                                  episodes(runs, verified, _failed_change(short)))
        group = (owners.get(env) or NO_TEAM) if by == "team" else env
        members.setdefault(group, []).append(env)
    step = timedelta(days=1 if days <= 14 else 7)
    buckets: list[tuple[datetime, datetime]] = []
    edge = end
    while edge > start:
        buckets.append((max(start, edge - step), edge))
        edge -= step
    buckets.reverse()
    out: dict[str, Group] = {}
    for name, envs in sorted(members.items()):
        parts = [histories[e] for e in envs]
        out[name] = Group(
            name, tuple(envs), _keys(parts, start, end), _keys(parts, start - (end - start), start,
                                                           closed=False),
            tuple(_keys(parts, a, b, closed=b != end) for a, b in buckets))
    return out
