"""The interrupted-apply journal: what a cut apply may have changed, and what a failure after
recovering from one means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitops import journal
from gitops.errors import InterruptedApply
from gitops.reconcile import Outcome, _recovered
from gitops.records import ApplyReport, CheckResult, HostApply, VerifyReport

CONFIG, RESTART, CODE = "app | App configuration", "app | Restart app", "app | App code"

PENDING = [
    ("a change done, the next operation cut while running: both pending",
     [{"run": 1}, {"start": CODE}, {"done": CODE, "changed": False}, {"start": CONFIG},
      {"done": CONFIG, "changed": True}, {"start": "app | Pause"}], {CONFIG, "app | Pause"}),
    ("cut after the change, before the next start: the change pending",
     [{"run": 1}, {"start": CONFIG}, {"done": CONFIG, "changed": True}], {CONFIG}),
    ("an operation started whose end was not written counts as changed",
     [{"run": 1}, {"start": CONFIG}], {CONFIG}),
    ("two cut applies: what the first changed stays pending after the second",
     [{"run": 1}, {"start": CONFIG}, {"done": CONFIG, "changed": True}, {"run": 2},
      {"start": CONFIG}, {"done": CONFIG, "changed": False}, {"start": RESTART}],
     {CONFIG, RESTART}),
    ("nothing changed: nothing pending", [{"run": 1}, {"start": CODE},
                                          {"done": CODE, "changed": False}], set()),
]


@pytest.mark.parametrize(("case", "entries", "expected"), PENDING, ids=[c[0] for c in PENDING])
def test_pending(tmp_path: Path, case: str, entries: list[dict[str, object]],
                 expected: set[str]) -> None:
    """What a cut apply may have changed: changes done, and operations started, not done."""
    (tmp_path / "lab-1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries)
                                          + '{"start": "app | Cut li')  # the crash's last line
    assert journal.pending(tmp_path, "lab-1") == expected
    assert journal.interrupted(tmp_path) == {"lab-1"}


def test_writer_then_clear(tmp_path: Path) -> None:
    """A journal written as operations run reads back; cleared, the host is not recovering."""
    folder = tmp_path / "journal" / "lab"
    w = journal.Writer(folder, "lab-2")
    w.start(CONFIG)
    w.done(CONFIG, changed=True)
    w.start(RESTART)
    w.close()
    assert journal.pending(folder, "lab-2") == {CONFIG, RESTART}
    journal.forget_others(folder, {"lab-1", "lab-2"})
    assert journal.interrupted(folder) == {"lab-2"}
    journal.clear(folder, "lab-2")
    assert journal.interrupted(folder) == set()
    assert journal.pending(folder, "lab-2") == set()


def _failed(*hosts: str) -> Outcome:
    return Outcome("failed", apply=ApplyReport(hosts=tuple(
        HostApply(host=h, status="ok") for h in ("lab-1", "lab-2"))),
        verify=VerifyReport(results=tuple(
            CheckResult(host=h, service="app", check="message", status="fail")
            for h in hosts)))


def test_a_failure_only_where_a_crash_cut_the_apply_is_temporary() -> None:
    """Hosts failing right after recovering from a crash: a temporary error, not a failed
    rollout (never rolled back, not a change failure); any other failure stays a failure."""
    crash = _recovered(_failed("lab-1"), frozenset({"lab-1"}))
    assert crash.result == "error" and isinstance(crash.error, InterruptedApply)
    assert crash.recovering == {"lab-1"}
    assert "lab-1 failed right after recovering" in str(crash.error)
    mixed = _recovered(_failed("lab-1", "lab-2"), frozenset({"lab-1"}))
    assert mixed.result == "failed" and mixed.error is None
    assert _recovered(_failed("lab-2"), frozenset()).result == "failed"
