"""What the state folder keeps: pruning it to the bounds of ``settings.Retention``.

``reconcile.run`` prunes snapshots after each run (CLI and daemon alike); the daemon prunes
the database history, the incident reports only pruned runs made, and unused repository
mirrors after its runs (at most once an hour). README ("The state folder") lists every
thing the folder holds and its bound.

A post-mortem is what people wrote, so retention never deletes it: the runs of an incident
with a post-mortem (its notes or action items, ``gitops.incidents``) are kept past
``history_days`` with the run before it that its report names (``postmortem_spans``), so the
incident, its id, its timeline and its report stay whole and no note points at a deleted run.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

from gitops import incidents, source
from gitops.settings import Retention
from gitops.store import Store

__all__ = ["postmortem_spans", "prune_history", "prune_reports", "prune_snapshots",
           "snapshots_in_use"]


def snapshots_in_use(store: Store) -> set[str]:
    """The revisions whose snapshots must stay: applied, verified or attempted on some host
    (or environment), held by a rollback hold, or used by a run not finished."""
    keep: set[str] = set()
    environments = set()
    for row in store.status():
        environments.add(row.environment)
        for ref in (row.last_applied, row.last_verified, row.last_attempted):
            if ref is not None:
                keep.add(ref.sha)
    for environment in environments:
        held = store.controls(environment).held_sha
        if held:
            keep.add(held)
    keep |= {r.sha for r in store.history(None, limit=200)
             if r.result is None and r.sha}
    return keep


def prune_snapshots(store: Store, state_dir: Path, newest: int) -> list[str]:
    """Remove the snapshots not in use beyond the ``newest`` most recently used; return
    their revisions."""
    return source.prune_snapshots(state_dir, snapshots_in_use(store), newest)


def prune_history(store: Store, state_dir: Path, retention: Retention, *, repos: list[str],
                  now: datetime) -> int:
    """Delete the runs older than ``history_days`` and the mirrors of repositories not in
    ``repos`` unused for ``sources_days``; return the runs deleted."""
    source.prune_sources(state_dir, repos, retention.sources_days * 86400)
    return store.prune_history(now - timedelta(days=retention.history_days),
                               keep=postmortem_spans(store))


def postmortem_spans(store: Store) -> list[tuple[str, int, int]]:
    """(environment, first run id, last run id) of each incident someone wrote into: from
    the runs before it its report names (the commit rolled back, the previous verified
    commit) to its last run (an open incident's: the newest run)."""
    written = {n.incident for n in store.notes()} | {a.incident for a in store.actions()}
    if not written:
        return []
    verified = incidents.verified_hosts(store)
    spans = []
    for env, runs in incidents.load_runs(store).items():
        for ep in incidents.episodes(runs, verified):
            first = ep.runs[0].id
            if f"{env}-{first}" not in written:
                continue
            before = [r for r in runs if r.id < first and r.verified_success]
            commit = ep.opener  # the commit the report names, as ``incidents`` finds it
            if ep.cause == "rollback":
                commit = next((r for r in reversed(before) if r.kind == "reconcile"), commit)
            previous = next((r for r in reversed(before) if r.sha and r.sha != commit.sha),
                            None)
            start = min(first, commit.id, previous.id if previous else first)
            spans.append((env, start, ep.runs[-1].id))
    return spans


def prune_reports(folder: Path, environment: str, written: list[Path]) -> list[Path]:
    """Remove ``environment``'s incident reports that were not just ``written`` (their runs
    left the history); return them."""
    pattern = re.compile(rf"{re.escape(environment)}-\d+\.md")
    kept = {p.name for p in written}
    removed = []
    for path in folder.glob(f"{environment}-*.md"):
        if pattern.fullmatch(path.name) and path.name not in kept:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
