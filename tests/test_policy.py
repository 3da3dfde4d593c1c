"""The daemon's decisions (``gitops.daemon.policy``) as tables: inputs in, the decision expected
out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from gitops.daemon import policy
from gitops.daemon.policy import (
    After,
    Controls,
    Cycle,
    CycleInput,
    EnvStatus,
    HostRevision,
    LastRun,
    RunOrder,
    RunSummary,
    Trigger,
)
from gitops.record.store import ENVIRONMENT
from gitops.records import Condition, Ref, RunRow, StatusRow
from gitops.schedule import WindowState
from gitops.settings import EnvironmentConfig

A, B, C = "a" * 40, "b" * 40, "c" * 40
CFG = EnvironmentConfig(name="lab", repo="/srv/state", interval=60, jitter=0.1, retry_base=2,
                        retry_max=20)
NO_ROLLBACK = CFG.model_copy(update={"auto_rollback": False})
APPLIED_A = EnvStatus(attempted=A, applied=A, ready=True)
STALLED_B = EnvStatus(attempted=B, applied=A, stalled=True)
HELD = Controls(held_sha=A, held_head=B)
OPERATOR = Trigger("operator request", "api:127.0.0.1")
WEBHOOK = Trigger("github push bbbbbbbbbb", "webhook:github")


def cycle(head: str = B, controls: Controls = Controls(), last: LastRun | None = None,
          quarantined: frozenset[str] = frozenset(), status: EnvStatus | None = APPLIED_A,
          pending: Trigger | None = None, retry: frozenset[str] | None = None,
          released: policy.Release | None = None) -> CycleInput:
    return CycleInput(head, controls, last, quarantined, status, pending, retry,
                      released=released)


def new_commit(sha: str = B, **kw: Any) -> Cycle:
    order = {"kind": "reconcile", "revision": sha, "reason": f"new commit {sha[:10]}",
             "actor": "gitops-daemon", "changed_only": True, "previous": A, **kw}
    return Cycle(RunOrder(**order))


NEXT_RUN = [
    ("a new commit: changed services only, force-push checked against the applied one",
     cycle(last=LastRun(A, "succeeded")), new_commit()),
    ("the head already applied: nothing, no SSH",
     cycle(head=A, last=LastRun(A, "succeeded")), Cycle(None, why="aaaaaaaaaa is up to date")),
    ("a first run ever",
     cycle(status=None), new_commit(previous=None)),
    ("an interrupted run of the head is run again",
     cycle(head=A, last=LastRun(A, "interrupted")), new_commit(A)),
    ("a temporary error of the head is run again (after the backoff)",
     cycle(head=A, last=LastRun(A, "error")), new_commit(A)),
    ("a failed head is not re-run on its own (it was rolled back or retried)",
     cycle(head=A, last=LastRun(A, "failed")), Cycle(None, why="aaaaaaaaaa is up to date")),
    ("a stalled head waits for a new commit",
     cycle(last=LastRun(B, "invalid"), status=STALLED_B),
     Cycle(None, why="bbbbbbbbbb is up to date")),
    ("a stalled head, then a new commit",
     cycle(head=C, last=LastRun(B, "invalid"), status=STALLED_B), new_commit(C)),
    ("suspended: nothing, even for an operator",
     cycle(controls=Controls(suspended=True, actor="alice"), pending=OPERATOR),
     Cycle(None, why="suspended by alice")),
    ("a quarantined head is left alone",
     cycle(quarantined=frozenset({B})), Cycle(None, why="bbbbbbbbbb is quarantined")),
    ("an operator's run: everything, with the operator as actor",
     cycle(head=A, last=LastRun(A, "succeeded"), pending=OPERATOR),
     new_commit(A, reason="operator request", actor="api:127.0.0.1", changed_only=False)),
    ("a webhook only says look: the applied head runs nothing",
     cycle(head=A, last=LastRun(A, "succeeded"), pending=WEBHOOK),
     Cycle(None, why="aaaaaaaaaa is up to date")),
    ("a webhook for a new commit: its reason and actor, changed services only",
     cycle(last=LastRun(A, "succeeded"), pending=WEBHOOK),
     new_commit(reason=WEBHOOK.reason, actor=WEBHOOK.actor)),
    ("a retry of some hosts: everything on those hosts only",
     cycle(head=A, last=LastRun(A, "failed"), retry=frozenset({"h2"})),
     new_commit(A, kind="retry", hosts=frozenset({"h2"}), changed_only=False)),
    ("a retry of some hosts when the head moved on: the new head on every host",
     cycle(last=LastRun(A, "failed"), retry=frozenset({"h2"})), new_commit()),
    ("a rollback hold: the held revision, no force-push check",
     cycle(controls=HELD, last=LastRun(B, "failed")),
     new_commit(A, kind="rollback", changed_only=False, previous=None)),
    ("a held revision already applied: nothing",
     cycle(controls=HELD, last=LastRun(A, "succeeded")),
     Cycle(None, why="aaaaaaaaaa is up to date")),
    ("a commit newer than the hold releases it and is applied",
     cycle(head=C, controls=HELD, last=LastRun(A, "succeeded")),
     Cycle(new_commit(C).run, release_hold=True)),
    ("a hold of a quarantined revision is still applied (the operator chose it)",
     cycle(controls=HELD, quarantined=frozenset({A}), last=LastRun(B, "failed")),
     new_commit(A, kind="rollback", changed_only=False, previous=None)),
]


@pytest.mark.parametrize(("case", "given", "expected"), NEXT_RUN, ids=[c[0] for c in NEXT_RUN])
def test_next_run(case: str, given: CycleInput, expected: Cycle) -> None:
    """What a cycle runs (or why nothing) follows from head, controls, history and status."""
    assert policy.next_run(given) == expected


HALF = 0.5  # the random draw: jitter factor 1, half the backoff ceiling
AFTER_RUN = [
    ("success: the poll interval, failures reset",
     RunSummary("succeeded", revision=B), 3, After("done", 60, 0)),
    ("an invalid declaration: stalled, no backoff",
     RunSummary("invalid", permanent=True), 2, After("stalled", 60, 0)),
    ("a permanent error (unsigned commit): stalled",
     RunSummary("error", permanent=True), 0, After("stalled", 60, 0)),
    ("a temporary error: backoff, one more failure",
     RunSummary("error"), 0, After("backoff", 1, 1)),
    ("interrupted: backoff grows with the failures",
     RunSummary("interrupted"), 3, After("backoff", 8, 4)),
    ("a failed check: roll that host back and quarantine",
     RunSummary("failed", revision=B, broken=frozenset({"h1"})), 0,
     After("rollback", 60, 0, rollback=frozenset({"h1"}),
           quarantine="verification failed on h1")),
    ("a failed apply: quarantined as an apply failure, not a verification failure",
     RunSummary("failed", revision=B, broken=frozenset({"h1", "h2"}),
                apply_failed=frozenset({"h1", "h2"})), 0,
     After("rollback", 60, 0, rollback=frozenset({"h1", "h2"}),
           quarantine="apply failed on h1, h2")),
    ("one host's apply failed, another's checks: each reason with its hosts",
     RunSummary("failed", revision=B, broken=frozenset({"h1", "h2"}),
                apply_failed=frozenset({"h2"}), unchanged=frozenset({"h3"})), 0,
     After("rollback", 60, 0, rollback=frozenset({"h1", "h2"}),
           quarantine="apply failed on h2; verification failed on h1")),
    ("only a stricter check failed, nothing changed on the hosts: not rolled back",
     RunSummary("failed", revision=B, broken=frozenset({"h1", "h2"}),
                unchanged=frozenset({"h1", "h2", "h3"})), 0,
     After("done", 60, 0, short=frozenset({"h1", "h2"}))),
    ("a host that changed and failed is rolled back, one that only fell short is not",
     RunSummary("failed", revision=B, broken=frozenset({"h1", "h2"}),
                unchanged=frozenset({"h2"})), 0,
     After("rollback", 60, 0, rollback=frozenset({"h1"}), quarantine="verification failed on h1",
           short=frozenset({"h2"}))),
    ("a failed apply that changed nothing is still the commit's: rolled back",
     RunSummary("failed", revision=B, broken=frozenset({"h1"}), apply_failed=frozenset({"h1"}),
                unchanged=frozenset({"h1"})), 0,
     After("rollback", 60, 0, rollback=frozenset({"h1"}), quarantine="apply failed on h1")),
    ("a failed check without auto_rollback: nothing more",
     RunSummary("failed", revision=B, broken=frozenset({"h1"})), 0, After("done", 60, 0)),
    ("unreachable hosts: retried with backoff, never rolled back",
     RunSummary("failed", revision=B, unreachable=frozenset({"h3"})), 1,
     After("retry", 2, 2, retry=frozenset({"h3"}))),
    ("broken and unreachable: roll back one, retry the other",
     RunSummary("failed", revision=B, broken=frozenset({"h1"}), unreachable=frozenset({"h3"})),
     0, After("retry", 1, 1, rollback=frozenset({"h1"}), retry=frozenset({"h3"}),
              quarantine="verification failed on h1")),
    ("a host failing right after a controller crash is retried, not rolled back",
     RunSummary("failed", revision=B, broken=frozenset({"h1", "h2"}),
                recovering=frozenset({"h2"})), 0,
     After("retry", 1, 1, rollback=frozenset({"h1"}), retry=frozenset({"h2"}),
           quarantine="verification failed on h1")),
]


@pytest.mark.parametrize(("case", "summary", "failures", "expected"), AFTER_RUN,
                         ids=[c[0] for c in AFTER_RUN])
def test_after_run(case: str, summary: RunSummary, failures: int, expected: After) -> None:
    """What follows a run: done, stalled, rollback and quarantine, retry, or backoff."""
    cfg = NO_ROLLBACK if "without auto_rollback" in case else CFG
    assert policy.after_run(summary, cfg, failures, HALF) == expected


@pytest.mark.parametrize(("failures", "rand", "expected"), [
    (1, 1.0, 2), (2, 1.0, 4), (3, 1.0, 8), (4, 1.0, 16), (5, 1.0, 20), (9, 1.0, 20),
    (1, 0.0, 1), (6, 0.0, 1), (4, 0.5, 8),
])
def test_backoff(failures: int, rand: float, expected: float) -> None:
    """Backoff doubles up to the cap, a random share of it, never below half the base."""
    assert policy.backoff(failures, 2, 20, rand) == expected


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 54), (0.5, 60), (1.0, 66)])
def test_jitter(rand: float, expected: float) -> None:
    """Each wait is the interval times a factor in [1 - jitter, 1 + jitter]."""
    assert policy.jitter(60, 0.1, rand) == pytest.approx(expected)


ROLLBACK_TARGETS = [
    ("each failed host to its own last verified revision",
     ["h1", "h2"], [HostRevision("h1", A), HostRevision("h2", C), HostRevision("h3", A)],
     {A: frozenset({"h1"}), C: frozenset({"h2"})}),
    ("hosts on the same revision go together",
     ["h1", "h2"], [HostRevision("h1", A), HostRevision("h2", A)], {A: frozenset({"h1", "h2"})}),
    ("a host never verified, or verified only with the bad commit, is left as it is",
     ["h1", "h2"], [HostRevision("h1", None), HostRevision("h2", B)], {}),
]


@pytest.mark.parametrize(("case", "hosts", "status", "expected"), ROLLBACK_TARGETS,
                         ids=[c[0] for c in ROLLBACK_TARGETS])
def test_rollback_targets(case: str, hosts: list[str], status: list[HostRevision],
                          expected: dict[str, frozenset[str]]) -> None:
    """A rollback gives each failed host the revision last verified on it."""
    assert policy.rollback_targets(B, hosts, status) == expected


@pytest.mark.parametrize(("result", "mode", "notify", "correct"), [
    ("succeeded", "report", False, frozenset()),
    ("succeeded", "correct", False, frozenset()),
    ("failed", "report", True, frozenset()),
    ("failed", "correct", True, frozenset({"h2"})),
    ("error", "correct", False, frozenset()),
])
def test_after_drift(result: Any, mode: Any, notify: bool, correct: frozenset[str]) -> None:
    """Drift is reported; with ``drift: correct`` the drifted hosts are re-applied."""
    assert policy.after_drift(result, ["h2"], mode) == policy.DriftAction(notify, correct)


@pytest.mark.parametrize(("result", "was_ready", "expected"), [
    ("succeeded", True, "success"), ("succeeded", False, "recovery"),
    ("failed", True, "failure"), ("invalid", True, "failure"), ("error", False, "failure"),
    ("interrupted", True, None),
])
def test_event_kind(result: Any, was_ready: bool, expected: str | None) -> None:
    """A run's end is notified as success, recovery or failure; an interrupted one is not."""
    assert policy.event_kind(result, was_ready=was_ready) == expected


SUSPENDED = Controls(suspended=True, actor="alice", reason="change freeze",
                     since=datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC))


@pytest.mark.parametrize(("controls", "trigger", "expected"), [
    (Controls(), OPERATOR, None),
    (SUSPENDED, WEBHOOK, None),
    (SUSPENDED, Trigger("commit", "watch"), None),
    (SUSPENDED, OPERATOR, "lab is suspended by alice since 2026-12-01T10:00:00+00:00: change "
                          "freeze; nothing is applied until it is resumed"),
])
def test_refusal(controls: Controls, trigger: Trigger, expected: str | None) -> None:
    """An operator's trigger of a suspended environment is refused with who, why and since."""
    assert policy.refusal("lab", controls, trigger) == expected


SUSPENDED_HERE = "suspended by alice since 2026-12-01T10:00:00.123456+00:00: change freeze"
HELD_HERE = "held at aaaaaaaaaa by a rollback (by ? since ?)"


@pytest.mark.parametrize(("controls", "force", "expected"), [
    (Controls(), False, None),
    (Controls(), True, None),
    (SUSPENDED, False, policy.Override(SUSPENDED_HERE, (
        f"lab is {SUSPENDED_HERE}; `gitops resume` first, or `gitops retry --force --reason "
        "WHY`"))),
    (SUSPENDED, True, policy.Override(SUSPENDED_HERE, None)),
    (HELD, False, policy.Override(HELD_HERE, (
        f"lab is {HELD_HERE}; `gitops resume` first, or `gitops retry --force --reason WHY`"))),
    (HELD, True, policy.Override(HELD_HERE, None)),
    (dataclasses.replace(SUSPENDED, held_sha=A), True, policy.Override(SUSPENDED_HERE, None)),
])
def test_override(controls: Controls, force: bool, expected: policy.Override | None) -> None:
    """The command line's own run (here ``retry``) under a suspension or a rollback hold is
    refused with who, why and since, unless forced: ``--force`` overrides both here, where
    the daemon's ``refusal`` keeps a suspension (the suspension named first)."""
    assert policy.override("lab", "retry", controls, force=force) == expected


def test_the_stores_controls_are_the_decisions_input(tmp_path: Any) -> None:
    """The controls the store reads go into the decision as they are (one type, no
    conversion), and the refusal names who suspended it and since when, to the second."""
    from gitops.daemon import control
    from gitops.record.store import Store

    with Store(tmp_path) as store:
        control.suspend(store, "lab", actor="alice", reason="change freeze")
        controls = store.controls("lab")
    assert isinstance(controls, Controls) and controls.suspended
    assert controls.since is not None
    assert policy.refusal("lab", controls, OPERATOR) == (
        f"lab is suspended by alice since {controls.since.isoformat(timespec='seconds')}: "
        "change freeze; nothing is applied until it is resumed")


def test_status_rows_become_typed_inputs() -> None:
    """Store rows (revisions as refs, typed conditions) give the bare shas and flags."""
    row = StatusRow("lab", ENVIRONMENT,
                    (Condition("Stalled", "True", "ValidationFailed", ""),
                     Condition("Ready", "False", "ValidationFailed", "")),
                    Ref("main", A), Ref("main", B), None, datetime.now(UTC))
    assert EnvStatus.from_row(row) == EnvStatus(attempted=B, applied=A, stalled=True)
    assert EnvStatus.from_row(None) is None

    def run(kind: str, sha: str | None, result: str | None) -> RunRow:
        return RunRow(1, "lab", kind, "t", "", sha, "main", None, None, None,
                      datetime.now(UTC), None, result, None, ())

    history = [run("suspend", None, "succeeded"), run("retry", A, None)]
    assert LastRun.from_history(history) == LastRun(A, None)


# -- an operator's release of a quarantined revision (gitops unquarantine) ---------------

RELEASED_B = policy.Release(B, "alice", "web1 was down, not the commit's fault")
BY_ALICE = {"reason": "released from quarantine by alice: web1 was down, not the commit's "
            "fault", "actor": "alice", "changed_only": False}
FAILED_B_ROLLED_BACK = {"last": LastRun(A, "succeeded")}  # the rollback after B failed
FAILED_B_NOT_ROLLED_BACK = {"last": LastRun(B, "failed")}  # e.g. no verified revision to go to
RELEASES = [
    ("a released head is reconciled, in full, as the operator's",
     cycle(released=RELEASED_B, **FAILED_B_ROLLED_BACK), new_commit(**BY_ALICE)),
    ("a released head whose own run was the last (failed) one is reconciled again",
     cycle(released=RELEASED_B, **FAILED_B_NOT_ROLLED_BACK), new_commit(**BY_ALICE)),
    ("a webhook's look at a released head: still the operator's run",
     cycle(released=RELEASED_B, pending=WEBHOOK, **FAILED_B_NOT_ROLLED_BACK),
     new_commit(**BY_ALICE)),
    ("the same head still quarantined is left alone, released or not",
     cycle(quarantined=frozenset({B}), **FAILED_B_NOT_ROLLED_BACK),
     Cycle(None, why="bbbbbbbbbb is quarantined")),
    ("a release of another revision does not free the quarantined head",
     cycle(quarantined=frozenset({B}), released=policy.Release(C, "alice", "x"),
           **FAILED_B_NOT_ROLLED_BACK), Cycle(None, why="bbbbbbbbbb is quarantined")),
    ("the head moved on since the release: the new commit as usual",
     cycle(head=C, released=RELEASED_B, **FAILED_B_NOT_ROLLED_BACK), new_commit(C, previous=A)),
    ("a released head of a suspended environment: nothing",
     cycle(controls=Controls(suspended=True, actor="bob"), released=RELEASED_B),
     Cycle(None, why="suspended by bob")),
]


@pytest.mark.parametrize(("case", "given", "expected"), RELEASES, ids=[c[0] for c in RELEASES])
def test_next_run_of_a_released_quarantined_head(case: str, given: CycleInput,
                                                 expected: Cycle) -> None:
    """An operator's release of the quarantined head makes the next cycle reconcile it (even
    after a failed run of its own), as the operator's run; one still quarantined is not."""
    assert policy.next_run(given) == expected


def test_a_release_counts_until_an_apply_run_follows_it() -> None:
    """The history gives the pending release: the newest ``unquarantine`` event, unless an
    apply run (the released one) came after it; other events do not hide it."""
    def run(kind: str, sha: str | None, *, event: bool = False) -> RunRow:
        return RunRow(1, "lab", kind, "alice", "web1 was down", sha, "main", None, None, None,
                      datetime.now(UTC), None, "succeeded", None, (), event=event)

    release = run("unquarantine", B, event=True)
    pending = policy.Release(B, "alice", "web1 was down")
    assert policy.Release.from_history([release, run("reconcile", B)]) == pending
    assert policy.Release.from_history([run("suspend", None, event=True), release]) == pending
    assert policy.Release.from_history([run("verify", A), release]) == pending
    assert policy.Release.from_history([run("reconcile", B), release]) is None
    assert policy.Release.from_history([run("rollback", A), release]) is None
    assert policy.Release.from_history([run("reconcile", A)]) is None


# -- maintenance windows ---------------------------------------------------------------

NOW = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
OPENS = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
CLOSED = WindowState(open=False, opens_at=OPENS)
OPEN = WindowState(open=True, closes_at=datetime(2026, 12, 1, 23, 0, tzinfo=UTC))
FORCED = Trigger("hotfix for INC-7", "alice", force=True)
WAITING = "waiting for the maintenance window that opens at 2026-12-01 22:00 UTC"


def windowed(window: WindowState | None, **kw: Any) -> CycleInput:
    return dataclasses.replace(cycle(**kw), window=window)


WINDOWS = [
    ("outside the window a new commit waits, saying when the window opens",
     windowed(CLOSED, last=LastRun(A, "succeeded")), Cycle(None, why=WAITING, waiting=CLOSED)),
    ("inside the window a new commit is applied",
     windowed(OPEN, last=LastRun(A, "succeeded")), new_commit()),
    ("without windows a new commit is applied at any time",
     windowed(None, last=LastRun(A, "succeeded")), new_commit()),
    ("outside the window the head already applied is just up to date (nothing waits)",
     windowed(CLOSED, head=A, last=LastRun(A, "succeeded")),
     Cycle(None, why="aaaaaaaaaa is up to date")),
    ("outside the window an operator's unforced request waits too",
     windowed(CLOSED, head=A, last=LastRun(A, "succeeded"), pending=OPERATOR),
     Cycle(None, why=WAITING, waiting=CLOSED)),
    ("outside the window a retry of unreachable hosts waits",
     windowed(CLOSED, head=A, last=LastRun(A, "failed"), retry=frozenset({"h1"})),
     Cycle(None, why=WAITING, waiting=CLOSED)),
    ("an operator's --force --reason runs despite the window",
     windowed(CLOSED, last=LastRun(A, "succeeded"), pending=FORCED),
     new_commit(reason="hotfix for INC-7", actor="alice", changed_only=False)),
    ("an operator's rollback hold is applied despite the window",
     windowed(CLOSED, head=A, controls=Controls(held_sha=C, held_head=A)),
     new_commit(C, kind="rollback", changed_only=False, previous=None)),
    ("suspended outside the window: suspended is what it says",
     windowed(CLOSED, controls=Controls(suspended=True, actor="bob")),
     Cycle(None, why="suspended by bob")),
]


@pytest.mark.parametrize(("case", "given", "expected"), WINDOWS, ids=[c[0] for c in WINDOWS])
def test_next_run_with_windows(case: str, given: CycleInput, expected: Cycle) -> None:
    """Outside the maintenance window nothing new is applied but a forced run or a hold."""
    assert policy.next_run(given) == expected


@pytest.mark.parametrize(("delay", "window", "expected"), [
    (60.0, CLOSED, 60.0),  # the window opens in an hour: the usual poll
    (7200.0, CLOSED, 3600.0),  # a poll after the opening: woken at the opening instead
    (7200.0, OPEN, 7200.0),
    (7200.0, None, 7200.0),
    (60.0, WindowState(open=False, opens_at=NOW), 0.0),
])
def test_until_window(delay: float, window: WindowState | None, expected: float) -> None:
    """A waiting revision's next cycle is never later than the window's opening."""
    assert policy.until_window(delay, window, NOW) == expected


@pytest.mark.parametrize(("mode", "window", "correct"), [
    ("correct", CLOSED, frozenset()),
    ("correct", OPEN, frozenset({"h2"})),
    ("correct", None, frozenset({"h2"})),
    ("report", OPEN, frozenset()),
])
def test_drift_outside_the_window_is_reported_not_corrected(
        mode: Any, window: WindowState | None, correct: frozenset[str]) -> None:
    """Outside the window drift is reported (notified) but not re-applied."""
    assert policy.after_drift("failed", ["h2"], mode, window) == policy.DriftAction(True, correct)


@pytest.mark.parametrize(("trigger", "window", "refused"), [
    (OPERATOR, CLOSED, True),
    (FORCED, CLOSED, False),
    (OPERATOR, OPEN, False),
    (WEBHOOK, CLOSED, False),
    (Trigger("commit", "watch"), CLOSED, False),
])
def test_refusal_outside_the_window(trigger: Trigger, window: WindowState,
                                    refused: bool) -> None:
    """An operator's unforced trigger outside the window is refused with the opening time."""
    answer = policy.refusal("lab", Controls(), trigger, window)
    assert (answer is not None) == refused
    if refused:
        assert answer == (f"lab is outside its maintenance window: {WAITING}; "
                          "`gitops reconcile --force --reason WHY` runs it now")


def test_a_host_that_reverted_its_guarded_apply_is_rolled_back_whole() -> None:
    """A host that reverted its guarded apply by itself is rolled back, all its services, to
    its last verified revision (auto_rollback); a host that confirmed is left alone, and
    without auto_rollback nothing is rolled back."""
    from gitops.pipeline.reconcile import Outcome
    from gitops.records import ApplyReport, HostApply, HostGuard, Revision

    reverted = HostApply(host="h1", status="failed", error="RevertedByHost: restored ...",
                         guard=HostGuard(result="RevertedByHost", services=("ssh",)))
    confirmed = HostApply(host="h2", status="ok", guard=HostGuard(result="Confirmed"))
    outcome = Outcome("failed", revision=Revision(sha=B, branch="main", author="T",
                                                  committed_at=datetime.now(UTC), message="m"),
                      apply=ApplyReport(hosts=(reverted, confirmed)))
    summary = RunSummary.of(outcome)
    assert policy.after_run(summary, CFG, 0, HALF).rollback == {"h1"}
    assert policy.after_run(summary, CFG, 0, HALF).next == "rollback"
    assert policy.after_run(summary, NO_ROLLBACK, 0, HALF).rollback == frozenset()
    assert policy.rollback_targets(B, {"h1"}, [HostRevision("h1", A), HostRevision("h2", B)]
                                   ) == {A: {"h1"}}


def test_a_run_summary_tells_apply_failures_and_hosts_nothing_changed_on() -> None:
    """From a run's outcome: which failed hosts failed their apply (an exception in
    ``deploy.py``), and which applied with no change (a commit that only made a check
    stricter): the first are quarantined as an apply failure, the second not rolled back."""
    from gitops.pipeline.reconcile import Outcome
    from gitops.records import ApplyReport, CheckResult, HostApply, OpResult, Revision, VerifyReport

    raised = HostApply(host="h1", status="failed", error="deploys/app/deploy.py:3: boom")
    same = HostApply(host="h2", status="ok",
                     ops=(OpResult(name="app | Config", service="app", status="unchanged"),))
    changed = HostApply(host="h3", status="ok",
                        ops=(OpResult(name="app | Config", service="app", status="changed"),))
    checks = VerifyReport(results=(
        CheckResult(host="h2", service="app", check="test_strict", status="fail"),
        CheckResult(host="h3", service="app", check="test_strict", status="fail")))
    outcome = Outcome("failed", revision=Revision(sha=B, branch="main", author="T",
                                                  committed_at=datetime.now(UTC), message="m"),
                      apply=ApplyReport(hosts=(raised, same, changed)), verify=checks)
    summary = RunSummary.of(outcome)
    assert summary.apply_failed == {"h1"} and summary.unchanged == {"h2"}
    after = policy.after_run(summary, CFG, 0, HALF)
    assert after.rollback == {"h1", "h3"} and after.short == {"h2"}
    assert after.quarantine == "apply failed on h1; verification failed on h3"
