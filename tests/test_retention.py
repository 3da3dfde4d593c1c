"""The state folder stays bounded: snapshots, history, mirrors and reports are pruned."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from builders import commit_file, empty_repo
from test_loop import _record_failure, _record_success
from test_source import _pull_request, _refs

from gitops.daemon import retention
from gitops.daemon.loop import Daemon
from gitops.pipeline import source
from gitops.pipeline.reconcile import Request, Target, run
from gitops.record.store import ENVIRONMENT, Condition, Store, now
from gitops.report import incidents
from gitops.settings import EnvironmentConfig, Retention, Settings


def _snapshots(state: Path) -> set[str]:
    return {p.name for p in (state / "snapshots").iterdir() if not p.name.startswith(".")}


def test_runs_keep_snapshots_in_use_and_the_newest(tmp_path: Path) -> None:
    """After each run only the snapshots of revisions a host still has, and the newest
    few, stay on disk; a daemon seeing a commit every few minutes does not fill it."""
    repo, _ = empty_repo(tmp_path)
    first = commit_file(repo, "notes.txt", "first\n")  # git archive of an empty tree is no tar
    state = tmp_path / "state"
    target = Target(repo=str(repo), branch="main", environment="lab", state_dir=state,
                    actor="test", keep_snapshots=2)
    shas = [first] + [commit_file(repo, "notes.txt", f"commit {i}\n") for i in range(4)]
    for sha in shas:
        run(target, Request(revision=sha))  # invalid (no inventory): snapshotted, not applied
        if sha == first:
            with Store(state) as store:  # a host still verified with the first commit
                store.set_status("lab", "h1", [Condition("Ready", "True", "Ok", "")],
                                 applied=f"main@sha1:{sha}", verified=f"main@sha1:{sha}")
        os.utime(state / "snapshots" / sha, (time.time() - 100 + len(_snapshots(state)),) * 2)
    assert _snapshots(state) == {shas[0], shas[3], shas[4]}


def test_history_retention_keeps_the_newest_good_apply_and_unfinished_runs(
    tmp_path: Path,
) -> None:
    """Pruning the history deletes finished runs (and their rows) older than the cut-off, but
    never the environment's newest succeeded apply (the rollback target) or a running one."""
    repo, first = empty_repo(tmp_path)
    second = commit_file(repo, "notes.txt", "two\n")
    state = tmp_path / "state"
    _record_success(state, first)
    _record_failure(state, second)
    _record_success(state, second)
    _record_failure(state, first)
    with Store(state) as store:
        running = store.start_run("lab", "reconcile", None, actor="test")
        ids = [r["id"] for r in store.history("lab")]
        assert store.prune_history(now() + timedelta(days=1)) == 3
        left = store.history("lab")
        assert [r["id"] for r in left] == [running, ids[2]]
        assert left[1]["sha"] == second and left[1]["result"] == "succeeded"
        assert store.run(ids[1]) is None
        assert not store.db.execute("SELECT 1 FROM check_results WHERE run_id != ?",
                                    (ids[2],)).fetchall()


def test_history_retention_removes_old_finished_previews_with_their_reports(
    tmp_path: Path,
) -> None:
    """A preview finished before the cut-off leaves the record with its report; a newer one
    and one still queued stay (the page lists them, the hourly prune bounds the table)."""
    state = tmp_path / "state"
    with Store(state) as store:
        old = store.start_preview("lab", provider="github", number=7, branch="fix", base="main",
                                  head_sha="a" * 40)
        store.finish_preview(old, None, summary="done")
        time.sleep(0.01)
        cut = now()
        time.sleep(0.01)
        queued = store.start_preview("lab", provider="github", number=8, branch="more",
                                     base="main", head_sha="b" * 40)
        assert store.prune_history(cut) == 0
        assert [p.id for p in store.previews()] == [queued]
        assert store.preview(old) is None
        store.finish_preview(queued, None, summary="done")
        assert store.prune_history(cut) == 0
        assert [p.id for p in store.previews()] == [queued]


def test_unused_mirrors_are_removed_after_a_while(tmp_path: Path) -> None:
    """A mirror of a repository no environment watches, not fetched for sources_days, goes;
    the watched one stays, however old."""
    watched, _ = empty_repo(tmp_path / "watched")
    other, _ = empty_repo(tmp_path / "other")
    state = tmp_path / "state"
    for repo in (watched, other):
        source.fetch(str(repo), "main", state)
        mirror = source.mirror_path(str(repo), state)
        for path in (mirror, mirror / "FETCH_HEAD"):
            os.utime(path, (time.time() - 40 * 86400,) * 2)
    removed = source.prune_sources(state, [str(watched)], 30 * 86400)
    assert removed == [source.mirror_path(str(other), state)]
    assert source.mirror_path(str(watched), state).is_dir()
    assert source.prune_sources(state, [str(watched)], 30 * 86400) == []


def test_the_daemon_prunes_the_refs_of_pull_requests_no_longer_previewed(
        tmp_path: Path) -> None:
    """The hourly prune deletes from the mirror the ref of a pull request with no preview
    for sources_days, so its commits can leave the mirror at the next packing; the refs of a
    recent preview and of one still in progress (however old) stay, and so do the branches."""
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    refs = ("refs/pull/7/head", "refs/pull/8/head", "refs/merge-requests/9/head")
    shas = {ref: _pull_request(repo, ref) for ref in refs}
    source.fetch(str(repo), "main", state)
    for ref in refs:
        source.fetch_ref(str(repo), ref, "feature", state)
    with Store(state, clock=lambda: now() - timedelta(days=40)) as old:
        done = old.start_preview("lab", provider="github", number=7, branch="feature",
                                 base="main", head_sha=None)
        old.finish_preview(done, None, summary="planned")
        running = old.start_preview("lab", provider="gitlab", number=9, branch="feature",
                                    base="main", head_sha=None)
        old.preview_running(running, None)
    with Store(state) as store:
        store.start_preview("lab", provider="github", number=8, branch="feature",
                            base="main", head_sha=None)
    settings = Settings(state_dir=state, environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False)])
    Daemon(settings, rand=lambda: 0.5).pruner.prune()
    mirror = source.mirror_path(str(repo), state)
    assert _refs(mirror) == {"refs/heads/main", "refs/pull/8/head",
                             "refs/merge-requests/9/head"}
    subprocess.run(["git", "-C", str(mirror), "gc", "-q", "--prune=now"], check=True)
    present = {ref: subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", sha],
                                   check=False).returncode == 0 for ref, sha in shas.items()}
    assert present == {"refs/pull/7/head": False, "refs/pull/8/head": True,
                       "refs/merge-requests/9/head": True}


def test_daemon_prunes_old_runs_and_their_incident_reports(tmp_path: Path) -> None:
    """After a run the daemon deletes the runs past history_days, and the incident reports
    that only those runs made."""
    repo, first = empty_repo(tmp_path)
    bad = commit_file(repo, "notes.txt", "bad\n")
    state = tmp_path / "state"
    source.fetch(str(repo), "main", state)
    _record_success(state, first)
    _record_failure(state, bad)
    settings = Settings(state_dir=state, retention=Retention(history_days=1e-6), environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False)])
    d = Daemon(settings, rand=lambda: 0.5)
    d.reporter.write_incidents(d.envs["lab"])
    [report] = (state / "reports").glob("INC-lab-*.md")
    commit_file(repo, "notes.txt", "a new commit\n")
    time.sleep(0.2)  # the recorded runs are now older than history_days
    d.cycle(d.envs["lab"], None)
    with Store(state) as store:
        left = store.history("lab")
    assert [r["sha"] for r in left if r["result"] == "succeeded"] == [first]
    assert not [r for r in left if r["sha"] == bad]
    assert not report.exists()


def test_reports_of_other_environments_are_left(tmp_path: Path) -> None:
    """Pruning one environment's reports leaves other environments' and other files alone."""
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in ("INC-lab-3.md", "INC-lab-7.md", "INC-lab-2-5.md", "lab-notes.md",
                 "INC-prod-1.md", "lab-4.md"):
        (folder / name).write_text("x")
    removed = retention.prune_reports(folder, "lab", [folder / "INC-lab-7.md"])
    assert sorted(removed) == [folder / "INC-lab-3.md", folder / "lab-4.md"]  # and the
    assert sorted(p.name for p in folder.iterdir()) == [  # older name of a report
        "INC-lab-2-5.md", "INC-lab-7.md", "INC-prod-1.md", "lab-notes.md"]


def test_status_row_revisions_are_kept(tmp_path: Path) -> None:
    """Revisions a status row names (applied, verified, attempted) and held ones are in use."""
    state = tmp_path / "state"
    with Store(state) as store:
        store.set_status("lab", ENVIRONMENT, [], applied="main@sha1:" + "a" * 40,
                         attempted="main@sha1:" + "b" * 40)
        store.set_status("lab", "h1", [], verified="main@sha1:" + "c" * 40)
        store.set_controls("lab", held_sha="d" * 40)
        assert retention.snapshots_in_use(store) == {"a" * 40, "b" * 40, "c" * 40, "d" * 40}


@pytest.mark.parametrize("written", ["note", "action"])
def test_a_postmortem_keeps_its_incident_past_history_retention(tmp_path: Path,
                                                                 written: str) -> None:
    """Pruning the history keeps the runs of an incident someone wrote a post-mortem for
    (and the earlier commit its report names): the incident, its report and what people
    wrote stay whole, no note points at a deleted run; an incident nobody wrote into goes
    with its runs as before."""
    repo, a = empty_repo(tmp_path)
    b, c, d = (commit_file(repo, "notes.txt", f"{n}\n") for n in ("b", "c", "d"))
    state = tmp_path / "state"
    _record_success(state, a)  # run 1
    _record_failure(state, b)  # run 2: incident lab-2 (its report's previous commit: a)
    _record_success(state, b)  # run 3: restores it
    _record_failure(state, c)  # run 4: incident lab-4, nobody writes into it
    _record_success(state, c)  # run 5
    _record_success(state, d)  # run 6: the newest good apply, always kept
    with Store(state) as store:
        if written == "note":
            incidents.annotate(store, "lab-2", {"summary": "b broke the app"}, actor="ann")
        else:
            incidents.add_action(store, "lab-2", "alert on app/up", None, actor="ann")
        before = {i.id: i.as_dict() for i in incidents.incidents(store)}
        assert set(before) == {"INC-lab-2", "INC-lab-4"}
        assert before["INC-lab-2"]["commit"]["previous_sha"] == a
        removed = retention.prune_history(store, state, Retention(), repos={},
                                          now=now() + timedelta(days=500))
        assert removed == 2
        assert [r["id"] for r in store.history("lab")] == [6, 3, 2, 1]
        after = {i.id: i.as_dict() for i in incidents.incidents(store)}
        assert after == {"INC-lab-2": before["INC-lab-2"]}
        ids = {n.incident for n in store.notes()} | {x.incident for x in store.actions()}
        assert ids == {"INC-lab-2"} and ids <= set(after)
