"""Delivery metrics (DORA four keys) on recorded histories with known answers.

The history is written through ``Store.start_run``/``finish_run``/``record_event`` with the
same typed reports the reconciler records, then its timestamps are set to fixed values.
``test_incidents`` reuses ``record`` and ``good_bad_fix``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gitops.record.store import Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    OpPlan,
    OpResult,
    Plan,
    Revision,
    RunKind,
    RunResult,
    VerifyReport,
)
from gitops.report.delivery import delivery_metrics

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOSTS = ("host1", "host2", "host3")
ENV = "lab"


def sha_of(name: str) -> str:
    return (name.encode().hex() * 40)[:40]


def record(
    store: Store,
    kind: RunKind,
    commit: str,
    *,
    start: datetime,
    seconds: float,
    result: RunResult,
    hosts: tuple[str, ...] = HOSTS,
    committed: datetime | None = None,
    failed_checks: dict[str, str] | None = None,
    failed_ops: dict[str, str] | None = None,
    reason: str = "",
    actor: str = "gitops-daemon",
    env: str = ENV,
    changed: bool = True,
) -> int:
    """Record one run of ``commit`` (a name; its sha is ``sha_of(name)``) as the reconciler
    would: plan, apply and verify per host, then fix its times. Not ``changed``: the apply
    changed nothing on the hosts."""
    failed_checks = failed_checks or {}
    failed_ops = failed_ops or {}
    revision = Revision(sha=sha_of(commit), branch="main", author=f"{commit.title()} Author",
                        committed_at=committed or start - timedelta(hours=1),
                        message=f"{commit}: change the app\n\nbody of {commit}")
    run_id = store.start_run(env, kind, revision, actor=actor, reason=reason)
    if result == "invalid":
        store.finish_run(run_id, "invalid", error="inventories/lab.yml:3: bad field")
    else:
        plan = Plan(hosts=tuple(HostPlan(host=h, ops=(
            OpPlan(name="Deploy app config", service="app", would_change=True),
            OpPlan(name="Install nginx", service="web", would_change=False),
        )) for h in hosts))
        applied = ApplyReport(hosts=tuple(
            HostApply(host=h, status="failed" if h in failed_ops else "ok",
                      error="operation failed" if h in failed_ops else None,
                      ops=(OpResult(name="Deploy app config", service="app",
                                    status="failed" if h in failed_ops else
                                    "changed" if changed else "unchanged",
                                    stderr=failed_ops.get(h, "")),))
            for h in hosts))
        checks = VerifyReport(results=tuple(
            r for h in hosts if h not in failed_ops for r in (
                CheckResult(host=h, service="app", check="running", status="pass"),
                CheckResult(host=h, service="app", check="http_200",
                            status="fail" if h in failed_checks else "pass",
                            message=failed_checks.get(h, "")),
            )))
        if kind == "verify":
            store.finish_run(run_id, result, verify=checks)
        else:
            store.finish_run(run_id, result, plan=plan, apply=applied, verify=checks,
                             error="batch 1/2 (canary) failed" if result == "failed" else None)
    store.db.execute(
        "UPDATE runs SET started_at=?, finished_at=?, duration_s=? WHERE id=?",
        (start.isoformat(), (start + timedelta(seconds=seconds)).isoformat(), seconds, run_id))
    return run_id


def event(store: Store, kind: str, at: datetime, *, commit: str | None = None,
          reason: str = "operator rollback", env: str = ENV) -> int:
    """An operator request (``record_event``) at a fixed time."""
    run_id = store.record_event(env, kind, actor="alice", reason=reason,
                                sha=sha_of(commit) if commit else None)
    store.db.execute("UPDATE runs SET started_at=?, finished_at=? WHERE id=?",
                     (at.isoformat(), at.isoformat(), run_id))
    return run_id


BAD_CHECK = "GET http://localhost:8080/ -> 502 Bad Gateway\nupstream: connection refused"


@dataclass(frozen=True)
class GoodBadFix:
    good: int
    bad: int
    rollback: int
    fix: int


def good_bad_fix(store: Store) -> GoodBadFix:
    """Good commit (day 0), bad commit failing its canary and rolled back (day 1), fix (day 2).

    Lead times: good 2 h + 60 s, fix 1 h + 90 s. The bad run ends at T0+1d+120s, its rollback
    at T0+1d+190s: 70 s to restore."""
    good = record(store, "reconcile", "good", start=T0, seconds=60, result="succeeded",
                  committed=T0 - timedelta(hours=2), reason="new commit")
    day1 = T0 + timedelta(days=1)
    bad = record(store, "reconcile", "bad", start=day1, seconds=120, result="failed",
                 hosts=("host1",), committed=day1 - timedelta(minutes=30),
                 failed_checks={"host1": BAD_CHECK}, reason="new commit")
    rollback = record(store, "rollback", "good", start=day1 + timedelta(seconds=150),
                      seconds=40, result="succeeded", hosts=("host1",),
                      committed=T0 - timedelta(hours=2),
                      reason=f"automatic rollback of {sha_of('bad')[:10]}")
    store.quarantine(ENV, sha_of("bad"), "verification failed on host1")
    day2 = T0 + timedelta(days=2)
    fix = record(store, "reconcile", "fix", start=day2, seconds=90, result="succeeded",
                 committed=day2 - timedelta(hours=1), reason="new commit")
    return GoodBadFix(good, bad, rollback, fix)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def test_good_bad_fix_known_answers(store: Store) -> None:
    """Good, bad (rolled back) and fix commits: 2 deployments, CFR 1/3, 70 s to restore."""
    good_bad_fix(store)
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert m.deployments == 2
    assert m.deployment_frequency_per_day == pytest.approx(2 / 7)
    assert m.lead_times_s == (3690.0, 7260.0)
    assert m.lead_time_median_s == 5475.0
    assert m.lead_time_p90_s == 7260.0
    assert (m.rollouts, m.failed_rollouts, m.rollouts_pending) == (3, 1, 0)
    assert m.change_failure_rate == pytest.approx(1 / 3)
    assert m.restore_intervals_s == (70.0,)
    assert m.time_to_restore_median_s == 70.0
    assert m.unrestored_since is None


def test_as_dict_keys_and_series(store: Store) -> None:
    """as_dict is JSON-ready; the series has one entry per UTC day with deployments/failures."""
    good_bad_fix(store)
    d = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV].as_dict()
    assert d["window_end"] == (T0 + timedelta(days=3)).isoformat()
    assert d["change_failure_rate"] == pytest.approx(1 / 3)
    series = {s["day"]: (s["deployments"], s["failures"]) for s in d["series"]}
    assert len(series) == 8  # 2026-02-23 .. 2026-03-05
    assert series["2026-03-02"] == (1, 0)
    assert series["2026-03-03"] == (0, 1)
    assert series["2026-03-04"] == (1, 0)
    assert sum(v[0] for v in series.values()) == 2


def test_window_excludes_older_rollouts(store: Store) -> None:
    """A 1.5-day window ending a day after the fix holds only the fix: 1 deployment, CFR 0."""
    good_bad_fix(store)
    m = delivery_metrics(store, days=1.5, now=T0 + timedelta(days=3))[ENV]
    assert (m.deployments, m.rollouts, m.failed_rollouts) == (1, 1, 0)
    assert m.change_failure_rate == 0.0
    assert m.lead_time_median_s == m.lead_time_p90_s == 3690.0
    assert m.restore_intervals_s == () and m.time_to_restore_median_s is None


def test_invalid_declarations_are_not_rollouts(store: Store) -> None:
    """An invalid commit never reached a host: neither a deployment nor a change failure."""
    good_bad_fix(store)
    record(store, "reconcile", "broken", start=T0 + timedelta(days=2, hours=5), seconds=2,
           result="invalid", reason="new commit")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert (m.deployments, m.rollouts, m.failed_rollouts) == (2, 3, 1)


def test_drift_correction_and_reapply_are_not_rollouts(store: Store) -> None:
    """A drift correction or a re-apply of an applied sha adds no deployment."""
    good_bad_fix(store)
    later = T0 + timedelta(days=2, hours=3)
    record(store, "verify", "fix", start=later, seconds=5, result="failed",
           hosts=("host2",), failed_checks={"host2": "service app is not running"},
           reason="drift check")
    record(store, "reconcile", "fix", start=later + timedelta(seconds=10), seconds=20,
           result="succeeded", hosts=("host2",), reason="drift correction")
    record(store, "reconcile", "fix", start=later + timedelta(hours=1), seconds=20,
           result="succeeded", reason="forced by alice")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert (m.deployments, m.rollouts, m.failed_rollouts) == (2, 3, 1)
    assert m.restore_intervals_s == (70.0,)


def test_operator_rollback_of_verified_rollout_is_a_failure(store: Store) -> None:
    """A rollback after a verified rollout counts that rollout as a change failure."""
    good_bad_fix(store)
    event(store, "rollback", T0 + timedelta(days=2, hours=2), commit="good")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert (m.deployments, m.rollouts, m.failed_rollouts) == (2, 3, 2)
    assert m.change_failure_rate == pytest.approx(2 / 3)


def test_retry_completes_a_rollout_and_errors_stay_pending(store: Store) -> None:
    """A failed rollout restored by a retry is deployed at the retry; an errored one is pending."""
    start = T0 + timedelta(days=1)
    record(store, "reconcile", "one", start=start, seconds=30, result="failed",
           committed=start - timedelta(seconds=100),
           failed_ops={"host3": "E: Unable to locate package app"})
    record(store, "retry", "one", start=start + timedelta(seconds=60), seconds=20,
           result="succeeded", hosts=("host3",))
    record(store, "reconcile", "two", start=start + timedelta(hours=1), seconds=5,
           result="error")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert m.deployments == 1
    assert m.lead_times_s == (180.0,)
    assert (m.rollouts, m.failed_rollouts, m.rollouts_pending) == (1, 1, 1)
    assert m.restore_intervals_s == (50.0,)


def test_a_commit_that_only_made_a_check_stricter_is_counted_apart(store: Store) -> None:
    """A commit whose checks failed while its apply changed nothing on the hosts (it only
    made a check stricter) found the hosts short of the new check: not a failed change (not
    in the rate, no restore interval, not pending), counted in ``short_of_checks``; a commit
    that changed a host and broke it is a failed change."""
    good_bad_fix(store)
    day3 = T0 + timedelta(days=2, hours=2)
    record(store, "reconcile", "stricter", start=day3, seconds=30, result="failed",
           failed_checks={"host1": "maxmemory is 0", "host2": "maxmemory is 0"},
           changed=False, reason="new commit")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert (m.rollouts, m.failed_rollouts, m.rollouts_pending) == (3, 1, 0)
    assert m.short_of_checks == 1 and m.as_dict()["short_of_checks"] == 1
    assert m.restore_intervals_s == (70.0,) and m.unrestored_since is None
    record(store, "reconcile", "broke", start=day3 + timedelta(hours=1), seconds=30,
           result="failed", failed_checks={"host1": "maxmemory is 0"}, reason="new commit")
    m = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))[ENV]
    assert (m.rollouts, m.failed_rollouts, m.short_of_checks) == (4, 2, 1)


def test_unrestored_failure_is_reported_open(store: Store) -> None:
    """A failed rollout with no verified success after it is ``unrestored_since`` its end."""
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    record(store, "reconcile", "bad", start=T0 + timedelta(hours=1), seconds=10,
           result="failed", failed_checks={"host2": "boom"})
    m = delivery_metrics(store, days=1, now=T0 + timedelta(hours=2))[ENV]
    assert m.unrestored_since == T0 + timedelta(hours=1, seconds=10)
    assert m.restore_intervals_s == () and m.change_failure_rate == 0.5


def test_environments_are_separate_and_filterable(store: Store) -> None:
    """Metrics are per environment; ``environment=`` limits to one (empty if it has no runs)."""
    good_bad_fix(store)
    record(store, "reconcile", "other", start=T0, seconds=10, result="succeeded", env="prod")
    both = delivery_metrics(store, days=7, now=T0 + timedelta(days=3))
    assert sorted(both) == ["lab", "prod"]
    assert both["prod"].deployments == 1 and both["prod"].change_failure_rate == 0.0
    empty = delivery_metrics(store, environment="staging", days=7, now=T0)["staging"]
    assert (empty.deployments, empty.rollouts, empty.change_failure_rate) == (0, 0, None)


def build_large_history(store: Store, runs: int = 1000, hosts: int = 20,
                        seed: int = 5) -> None:
    """``runs`` recorded runs on ``hosts`` hosts over ~80 days: rollouts (1 in 5 failing and
    rolled back), drift checks and corrections. Shared with ``bench/delivery_metrics.py``."""
    rng = random.Random(seed)
    names = tuple(f"host{i:02d}" for i in range(1, hosts + 1))
    at = T0 - timedelta(days=80)
    step = timedelta(days=80) / runs
    count = commit = 0
    while count < runs:
        at += step
        commit += 1
        name = f"c{commit}"
        if rng.random() < 0.2:
            bad = rng.sample(names, 2)
            record(store, "reconcile", name, start=at, seconds=120, result="failed",
                   hosts=names, failed_checks={h: BAD_CHECK for h in bad})
            record(store, "rollback", f"c{commit - 1}", start=at + timedelta(minutes=3),
                   seconds=40, result="succeeded", hosts=tuple(bad))
            count += 2
        elif rng.random() < 0.3:
            drifted = rng.choice(names)
            record(store, "verify", f"c{commit - 1}", start=at, seconds=8, result="failed",
                   hosts=names, failed_checks={drifted: "not running"}, reason="drift check")
            record(store, "reconcile", f"c{commit - 1}", start=at + timedelta(seconds=20),
                   seconds=15, result="succeeded", hosts=(drifted,),
                   reason="drift correction")
            count += 2
        else:
            record(store, "reconcile", name, start=at, seconds=90, result="succeeded",
                   hosts=names)
            count += 1


def test_large_history(store: Store) -> None:
    """A 1,000-run history on 20 hosts gives consistent metrics (no timing asserted here)."""
    build_large_history(store)
    assert store.db.execute("SELECT count(*) FROM runs").fetchone()[0] >= 1000
    m = delivery_metrics(store, days=90, now=T0)[ENV]
    assert m.rollouts == m.deployments + m.failed_rollouts
    assert m.failed_rollouts > 0 and m.deployments > 0
    assert len(m.restore_intervals_s) == m.failed_rollouts
    assert set(m.restore_intervals_s) == {100.0}  # rollback ends 100 s after the failed run
    assert sum(d.deployments for d in m.series) == m.deployments
    assert sum(d.failures for d in m.series) == m.failed_rollouts
