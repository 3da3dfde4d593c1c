"""Incidents derived from a recorded history: timeline, failures, restore, Markdown reports."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from test_delivery import BAD_CHECK, ENV, T0, build_large_history, event, good_bad_fix, record
from test_delivery import sha_of as sha

from gitops.record.store import Store
from gitops.report.incidents import incidents, render_markdown, write_reports


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def test_failed_rollout_incident_full_record(store: Store) -> None:
    """The bad commit opens one incident, closed by the rollback, with its whole record."""
    ids = good_bad_fix(store)
    calls: list[tuple[str, str]] = []

    def diff(old: str, new: str) -> str:
        calls.append((old, new))
        return " app/config.yml | 2 +-\n 1 file changed"

    [inc] = incidents(store, diff_summary=diff)
    day1 = T0 + timedelta(days=1)
    assert inc.id == f"INC-{ENV}-{ids.bad}"
    assert inc.cause == "failed rollout"
    assert inc.opened_at == day1 + timedelta(seconds=120)
    assert inc.closed_at == day1 + timedelta(seconds=190)
    assert inc.duration_s == 70.0
    assert calls == [(sha("good"), sha("bad"))]
    assert inc.commit == {
        "sha": sha("bad"), "branch": "main", "author": "Bad Author",
        "committed_at": (day1 - timedelta(minutes=30)).isoformat(),
        "message": "bad: change the app\n\nbody of bad", "previous_sha": sha("good"),
        "diff_summary": " app/config.yml | 2 +-\n 1 file changed",
    }
    assert inc.plan == [{"host": "host1", "changes": ["app: Deploy app config"], "error": None,
                         "diffs": []}]
    assert inc.failures == [{
        "run_id": ids.bad, "kind": "reconcile", "sha": sha("bad"), "host": "host1",
        "error": None, "ops": [],
        "checks": [{"service": "app", "check": "http_200", "status": "fail",
                    "message": BAD_CHECK}],
    }]
    assert [(r["run_id"], r["sha"], r["hosts"], r["result"]) for r in inc.rollbacks] == [
        (ids.rollback, sha("good"), ["host1"], "succeeded")]
    assert inc.restored_by is not None
    assert (inc.restored_by["run_id"], inc.restored_by["kind"], inc.restored_by["sha"]) == (
        ids.rollback, "rollback", sha("good"))
    short_bad, short_good = sha("bad")[:10], sha("good")[:10]
    assert [(e["at"], e["run_id"], e["event"]) for e in inc.timeline] == [
        (day1.isoformat(), ids.bad,
         f"reconcile run {ids.bad} of {short_bad} started by gitops-daemon (new commit)"),
        ((day1 + timedelta(seconds=120)).isoformat(), ids.bad,
         f"reconcile run {ids.bad} failed on host1: batch 1/2 (canary) failed"),
        ((day1 + timedelta(seconds=150)).isoformat(), ids.rollback,
         f"rollback run {ids.rollback} of {short_good} started by gitops-daemon "
         f"(automatic rollback of {short_bad})"),
        ((day1 + timedelta(seconds=190)).isoformat(), ids.rollback,
         f"rollback run {ids.rollback} succeeded"),
        ((day1 + timedelta(seconds=190)).isoformat(), ids.rollback,
         f"restored by rollback run {ids.rollback} of {short_good}"),
    ]
    as_dict = inc.as_dict()
    assert as_dict["status"] == "closed" and as_dict["duration_s"] == 70.0


def test_markdown_holds_commit_check_output_and_restore(store: Store) -> None:
    """The Markdown names the bad commit, shows the check output in a code block and the
    restoring commit, and ends with post-mortem questions."""
    good_bad_fix(store)
    [inc] = incidents(store, diff_summary=lambda old, new: f"diff {old[:4]}..{new[:4]}")
    text = render_markdown(inc)
    assert text.startswith(f"# Incident {inc.id}: failed rollout of {sha('bad')[:10]}")
    assert f"`{sha('bad')}`" in text and "Bad Author" in text
    assert f"```text\n{BAD_CHECK}\n```" in text
    assert f"rollback run {inc.restored_by['run_id'] if inc.restored_by else ''}, commit " \
           f"`{sha('good')}`" in text
    assert "| Duration | 1m 10s |" in text
    assert "diff 676f..6261" in text
    assert "## Questions for the post-mortem" in text


def test_failed_op_stderr_and_open_incident(store: Store) -> None:
    """A failed operation's stderr is reported per host; with no success after, it stays open."""
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    bad = record(store, "reconcile", "bad", start=T0 + timedelta(hours=1), seconds=10,
                 result="failed", failed_ops={"host2": "E: Unable to locate package nginx-x"})
    [inc] = incidents(store)
    assert inc.open and inc.closed_at is None and inc.restored_by is None
    assert inc.duration_s is None
    [failure] = inc.failures
    assert (failure["run_id"], failure["host"], failure["error"]) == (
        bad, "host2", "operation failed")
    assert failure["ops"] == [{"service": "app", "name": "Deploy app config",
                               "stderr": "E: Unable to locate package nginx-x"}]
    text = render_markdown(inc)
    assert "| Status | open |" in text and "E: Unable to locate package nginx-x" in text


def test_drift_correction_opens_at_the_failed_drift_check(store: Store) -> None:
    """A drift correction opens an incident at its failed drift check, closed by itself."""
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    check = record(store, "verify", "good", start=T0 + timedelta(hours=1), seconds=5,
                   result="failed", failed_checks={"host3": "service app is not running"},
                   reason="drift check")
    fix = record(store, "reconcile", "good", start=T0 + timedelta(hours=1, seconds=10),
                 seconds=20, result="succeeded", hosts=("host3",), reason="drift correction")
    [inc] = incidents(store)
    assert inc.id == f"INC-{ENV}-{check}" and inc.cause == "drift correction"
    assert inc.opened_at == T0 + timedelta(hours=1, seconds=5)
    assert inc.duration_s == 25.0
    assert inc.restored_by is not None and inc.restored_by["run_id"] == fix
    assert inc.commit["sha"] == sha("good") and inc.commit["previous_sha"] is None
    assert [f["checks"][0]["message"] for f in inc.failures] == ["service app is not running"]


def test_restore_needs_every_failed_host(store: Store) -> None:
    """A success on some of the failed hosts does not close the incident; one on the rest does."""
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    record(store, "reconcile", "bad", start=T0 + timedelta(hours=1), seconds=10,
           result="failed", failed_checks={"host1": "x", "host2": "y"})
    record(store, "rollback", "good", start=T0 + timedelta(hours=1, minutes=1), seconds=10,
           result="succeeded", hosts=("host1",))
    assert incidents(store)[0].open
    last = record(store, "retry", "good", start=T0 + timedelta(hours=1, minutes=2),
                  seconds=10, result="succeeded", hosts=("host2",))
    [inc] = incidents(store)
    assert inc.restored_by is not None and inc.restored_by["run_id"] == last
    assert len(inc.rollbacks) == 1 and inc.duration_s == 120.0


def test_operator_rollback_request_opens_and_names_rolled_back_commit(store: Store) -> None:
    """An operator's rollback of a verified commit opens an incident about that commit."""
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    record(store, "reconcile", "meh", start=T0 + timedelta(hours=1), seconds=10,
           result="succeeded")
    request = event(store, "rollback", T0 + timedelta(hours=2), commit="good")
    run = record(store, "rollback", "good", start=T0 + timedelta(hours=2, seconds=5),
                 seconds=30, result="succeeded")
    [inc] = incidents(store)
    assert inc.id == f"INC-{ENV}-{request}" and inc.cause == "rollback"
    assert inc.commit["sha"] == sha("meh") and inc.commit["previous_sha"] == sha("good")
    assert [r["request"] for r in inc.rollbacks] == [True, False]
    assert inc.restored_by is not None and inc.restored_by["run_id"] == run
    assert inc.timeline[0]["event"] == "alice: rollback of " + sha("good")[:10] + \
        " (operator rollback)"


def test_write_reports_atomic_and_only_when_changed(tmp_path: Path, store: Store) -> None:
    """One <id>.md per incident; an unchanged incident's file is not rewritten."""
    ids = good_bad_fix(store)
    folder = tmp_path / "reports"
    [path] = write_reports(store, folder)
    assert path == folder / f"INC-{ENV}-{ids.bad}.md"
    first = path.read_text()
    os.utime(path, ns=(1, 1))
    assert write_reports(store, folder) == [path]
    assert path.stat().st_mtime_ns == 1  # not rewritten
    write_reports(store, folder, diff_summary=lambda a, b: "1 file changed")
    assert path.read_text() != first and "1 file changed" in path.read_text()
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temp file left


def test_incidents_filter_and_large_history(store: Store) -> None:
    """On a 1,000-run history every failed rollout and drift correction is one closed incident."""
    build_large_history(store)
    found = incidents(store, ENV)
    assert found and all(not i.open for i in found)
    causes = {i.cause for i in found}
    assert causes == {"failed rollout", "drift correction"}
    assert incidents(store, "other") == []
    assert len({i.id for i in found}) == len(found)


def test_markdown_escapes_html_from_commits_and_postmortems(tmp_path: Path,
                                                           store: Store) -> None:
    """HTML in a commit message, its author, a post-mortem note and an action item reaches
    the report escaped (shown as text by a viewer that renders HTML), not as markup."""
    from gitops.report.incidents import add_action, annotate

    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    record(store, "reconcile", "good", start=T0, seconds=10, result="succeeded")
    record(store, "reconcile", hostile, start=T0 + timedelta(hours=1), seconds=10,
           result="failed", failed_checks={"host1": "check said <b>no</b>"})
    [inc] = incidents(store)
    annotate(store, inc.id, {"summary": "it broke <img src=y onerror=alert(3)>"},
             actor="<script>who</script>")
    add_action(store, inc.id, "fix <script>alert(4)</script>", None, actor="ann")
    [path] = write_reports(store, tmp_path / "reports")
    text = path.read_text()
    outside_code = text.split("```")[::2]  # fenced blocks are shown verbatim by any viewer
    for part in outside_code:
        assert "<script" not in part.lower() and "<img" not in part.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in text
    assert "it broke &lt;img src=y onerror=alert(3)&gt;" in text
    assert "fix &lt;script&gt;alert(4)&lt;/script&gt;" in text
    assert "&lt;script&gt;who&lt;/script&gt;" in text


def test_incident_ids_are_not_host_names_and_the_older_form_still_finds_one(
        store: Store) -> None:
    """An incident's id reads as one (``INC-lab-6``, not ``lab-6`` beside host ``lab-6``); the
    older form typed still finds it, and post-mortem entries recorded under it stay with it."""
    from gitops.report.incidents import annotate, find

    ids = good_bad_fix(store)
    [inc] = incidents(store)
    assert inc.id == f"INC-{ENV}-{ids.bad}"
    store.add_note(f"{ENV}-{ids.bad}", "impact", "written before the ids changed", actor="ann")
    assert find(store, f"{ENV}-{ids.bad}").id == inc.id
    found = annotate(store, f"{ENV}-{ids.bad}", {"summary": "b broke it"}, actor="bo")
    assert found.id == inc.id
    assert found.postmortem["summary"]["text"] == "b broke it"
    assert found.postmortem["impact"]["text"] == "written before the ids changed"
    assert render_markdown(found).startswith(f"# Incident INC-{ENV}-{ids.bad}: ")


def test_the_report_and_history_show_what_the_change_wrote(tmp_path: Path,
                                                           store: Store) -> None:
    """The incident's plan shows the diff of each changed file (the same on two hosts once,
    without terminal colours), and ``history --run N --diff`` shows it too."""
    from click.testing import CliRunner

    from gitops.cli import main
    from gitops.records import HostPlan, OpPlan, Plan

    ids = good_bad_fix(store)
    diff = ("Will modify /etc/redis/redis.conf\n  \x1b[31m- maxmemory 64mb\x1b[0m\n"
            "  \x1b[32m+ maxmemory 6400mb\x1b[0m")
    plan = Plan(hosts=tuple(HostPlan(host=h, ops=(OpPlan(
        name="redis.conf", service="redis", would_change=True, diff=diff),)) for h in
        ("lab-1", "lab-2")))
    store.db.execute("UPDATE runs SET plan=? WHERE id=?", (plan.model_dump_json(), ids.bad))
    [inc] = incidents(store)
    text = render_markdown(inc)
    assert ("Diff of `redis: redis.conf` on lab-1, lab-2:\n\n```diff\nWill modify "
            "/etc/redis/redis.conf\n  - maxmemory 64mb\n  + maxmemory 6400mb\n```") in text
    store.close()
    state = tmp_path / "state"
    out = CliRunner().invoke(main, ["history", "--state-dir", str(state), "--run",
                                    str(ids.bad)])
    assert out.exit_code == 0, out.output
    assert f"1 file diff(s): gitops history --run {ids.bad} --diff" in out.output
    out = CliRunner().invoke(main, ["history", "--state-dir", str(state), "--run",
                                    str(ids.bad), "--diff"])
    assert out.exit_code == 0, out.output
    assert ("diff of redis: redis.conf on lab-1, lab-2:\n    Will modify /etc/redis/redis.conf"
            "\n      - maxmemory 64mb\n      + maxmemory 6400mb\n") in out.output
