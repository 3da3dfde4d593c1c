"""The interrupted-apply journal: what a cut apply may have changed, and what a failure after
recovering from one means."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gitops.errors import InterruptedApply
from gitops.pipeline import journal
from gitops.pipeline.reconcile import Outcome
from gitops.pipeline.rollout import recovered
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


def _lines(folder: Path, host: str, entries: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{host}.jsonl").open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(e) + "\n" for e in entries))


def test_a_host_whose_apply_was_cut_on_another_controller_has_everything_pending(
        tmp_path: Path) -> None:
    """A share applied again after its controller died: what that attempt changed is on the
    dead machine, so every operation of each of its hosts is pending (``ANY``), the host is
    recovering; the others are not, and nothing is pending once its apply here completes."""
    folder = tmp_path / "journal" / "lab"
    journal.cut_elsewhere(folder, "lab-1", "attempt 1 of share 7")
    assert journal.pending(folder, "lab-1") == {journal.ANY}
    assert journal.pending(folder, "lab-2") == set()
    assert journal.interrupted(folder) == {"lab-1"}
    w = journal.Writer(folder, "lab-1")  # the apply here, until it completes
    w.start(CODE)
    w.done(CODE, changed=False)
    w.close()
    assert journal.pending(folder, "lab-1") == {journal.ANY}
    journal.clear(folder, "lab-1")
    assert journal.pending(folder, "lab-1") == set()
    assert journal.interrupted(folder) == set()


def test_a_cut_elsewhere_and_an_ordinary_cut_add_up(tmp_path: Path) -> None:
    """A host cut here earlier and then cut on another controller (or the other way round):
    what the cut here changed, what it left started, and everything else, all pending; an
    apply here cut after the mark keeps the mark."""
    folder = tmp_path / "journal" / "lab"
    _lines(folder, "lab-1", [{"run": 1}, {"start": CONFIG}, {"done": CONFIG, "changed": True},
                             {"start": RESTART}])
    journal.cut_elsewhere(folder, "lab-1")
    assert journal.pending(folder, "lab-1") == {CONFIG, RESTART, journal.ANY}
    journal.cut_elsewhere(folder, "lab-2")
    _lines(folder, "lab-2", [{"run": 2}, {"start": CODE}, {"done": CODE, "changed": False},
                             {"start": CONFIG}])
    assert journal.pending(folder, "lab-2") == {CONFIG, journal.ANY}


def test_an_apply_that_failed_is_not_read_as_cut(tmp_path: Path) -> None:
    """An apply that ended with the host failed (an apt error) marks its journal so: the host
    is not interrupted (the next run is an ordinary one, no crash to recover from), what
    that apply changed is still pending for what depends on it; an apply cut after that is
    interrupted again, and a failed apply of a host with no journal writes none."""
    folder = tmp_path / "journal" / "lab"
    w = journal.Writer(folder, "lab-1")
    w.start(CONFIG)
    w.done(CONFIG, changed=True)
    w.start("app | Install packages")
    w.done("app | Install packages", changed=False)
    w.close()
    journal.failed(folder, "lab-1", "Unable to locate package redis-server")
    journal.failed(folder, "lab-2", "an error before any operation started")
    assert journal.interrupted(folder) == set()
    assert journal.journaled(folder) == {"lab-1"}
    assert journal.pending(folder, "lab-1") == {CONFIG}
    w = journal.Writer(folder, "lab-1")  # the next apply, cut this time
    w.start(RESTART)
    w.close()
    assert journal.interrupted(folder) == {"lab-1"}
    assert journal.pending(folder, "lab-1") == {CONFIG, RESTART}
    journal.forget_others(folder, set())
    assert journal.journaled(folder) == set()


ARMED = """
from gitops.workers import apply_worker  # first, as in the worker (gevent's patching)
from gitops.workers import apply_journal as w, apply_ops
import json, sys
from pathlib import Path
from pyinfra.api import Config, Inventory, State
from pyinfra.api.operation import add_op
from pyinfra.api.state import StateStage
from pyinfra.operations import server

folder, hosts, ops = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
recorder = w.Journal(folder, hosts)  # as the worker makes it: before the deploys load
state = State(Inventory((hosts, {})), Config())
state.set_stage(StateStage.Prepare)
for host in state.inventory:
    state.activate_host(host)
for name in ops:  # loaded, not connected: nothing runs
    add_op(state, server.shell, name=name, commands=["true"])
recorder.undone({"lab-2": "a revert armed by an earlier apply was run"}, frozenset({"web"}))
recorder.arm(state)
forced = {h.name: sorted(apply_ops.op_name(state, op) for op in state.ops[h]
                         if id(state.ops[h][op].operation_meta) in w._forced)
          for h in state.inventory}
recorder.stop(state)
print(json.dumps({"forced": forced, "after": len(w._forced)}))
"""


def test_the_apply_worker_forces_every_operation_of_a_host_cut_elsewhere(
        tmp_path: Path) -> None:
    """The apply worker's journal (``apply_journal.Journal``), in a worker process of its
    own, before executing: on a host whose apply was cut on another controller every
    operation counts as changed once (said in the progress), but for a guarded service whose
    revert ran there (lab-2); a host with no journal (lab-3): nothing."""
    folder = tmp_path / "journal" / "lab"
    journal.cut_elsewhere(folder, "lab-1")
    journal.cut_elsewhere(folder, "lab-2")
    hosts, ops = ["lab-1", "lab-2", "lab-3"], [CONFIG, RESTART, "web | Site"]
    proc = subprocess.run([sys.executable, "-c", ARMED, str(folder), json.dumps(hosts),
                           json.dumps(ops)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["forced"] == {"lab-1": sorted(ops), "lab-2": sorted([CONFIG, RESTART]),
                             "lab-3": []}
    assert out["after"] == 0  # once: nothing forced after this apply
    assert ("lab-1: an interrupted apply on another controller may have changed any of its 3 "
            "operations; what depends on them runs again") in proc.stderr
    assert "lab-2: an interrupted apply on another controller may have changed any of its 2 " \
        "operations" in proc.stderr
    assert "lab-3:" not in proc.stderr


def _failed(*hosts: str) -> Outcome:
    return Outcome("failed", apply=ApplyReport(hosts=tuple(
        HostApply(host=h, status="ok") for h in ("lab-1", "lab-2"))),
        verify=VerifyReport(results=tuple(
            CheckResult(host=h, service="app", check="message", status="fail")
            for h in hosts)))


def test_a_failure_only_where_a_crash_cut_the_apply_is_temporary() -> None:
    """Hosts failing right after recovering from a crash: a temporary error, not a failed
    rollout (never rolled back, not a change failure); any other failure stays a failure."""
    crash = recovered(_failed("lab-1"), frozenset({"lab-1"}))
    assert crash.result == "error" and isinstance(crash.error, InterruptedApply)
    assert crash.recovering == {"lab-1"}
    assert "lab-1 failed right after recovering" in str(crash.error)
    mixed = recovered(_failed("lab-1", "lab-2"), frozenset({"lab-1"}))
    assert mixed.result == "failed" and mixed.error is None
    assert recovered(_failed("lab-2"), frozenset()).result == "failed"
