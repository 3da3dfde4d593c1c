"""What the state folder keeps: pruning it to the bounds of ``settings.Retention``.

``reconcile.run`` prunes snapshots after each run (CLI and daemon alike); the daemon prunes
the database history, the incident reports only pruned runs made, unused repository
mirrors and the pull requests' refs no recent preview wants (``preview_refs``) after its
runs (at most once an hour). README ("The state folder") lists every thing the folder holds
and its bound.

A post-mortem is what people wrote, so retention never deletes it: the runs of an incident
with a post-mortem (its notes or action items, ``gitops.report.incidents``) are kept past
``history_days`` with the run before it that its report names (``postmortem_spans``), so the
incident, its id, its timeline and its report stay whole and no note points at a deleted run.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from pathlib import Path

from gitops.errors import SourceError
from gitops.pipeline import source
from gitops.pipeline.snapshots import prune_snapshots, snapshots_in_use
from gitops.record.store import Store
from gitops.report import incidents
from gitops.settings import Retention

__all__ = ["postmortem_spans", "preview_refs", "prune_history", "prune_reports",
           "prune_snapshots", "snapshots_in_use"]

log = logging.getLogger("gitops.daemon.retention")


def prune_history(store: Store, state_dir: Path, retention: Retention, *,
                  repos: dict[str, str], now: datetime) -> int:
    """Delete the runs older than ``history_days``, the mirrors of repositories not in
    ``repos`` (environment name: repository URL) unused for ``sources_days``, and from the
    mirrors of ``repos`` the pull requests' refs ``preview_refs`` does not keep; return the
    runs deleted."""
    source.prune_sources(state_dir, list(repos.values()), retention.sources_days * 86400)
    removed = store.prune_history(now - timedelta(days=retention.history_days),
                                  keep=postmortem_spans(store))
    keep = preview_refs(store, state_dir, repos, now - timedelta(days=retention.sources_days))
    for url in sorted(set(repos.values())):
        try:
            source.prune_refs(url, state_dir, keep.get(source.mirror_path(url, state_dir),
                                                       set()))
        except SourceError as exc:  # this mirror's refs wait for the next prune
            log.warning("%s", exc)
    return removed


def preview_refs(store: Store, state_dir: Path, repos: dict[str, str],
                 since: datetime) -> dict[Path, set[str]]:
    """The pull requests' refs to keep in each mirror (``source.mirror_path``): those of a
    preview not finished (queued or running), or asked for or finished since ``since``, of an
    environment of ``repos`` (environment name: repository URL). Environments watching one
    repository share its mirror: the refs any of them wants stay."""
    keep: dict[Path, set[str]] = {}
    for environment, provider, number in store.previewed_since(since):
        ref = source.pull_ref(provider, number)
        if ref is not None and environment in repos:
            keep.setdefault(source.mirror_path(repos[environment], state_dir), set()).add(ref)
    return keep


def postmortem_spans(store: Store) -> list[tuple[str, int, int]]:
    """(environment, first run id, last run id) of each incident someone wrote into: from
    the runs before it its report names (the commit rolled back, the previous verified
    commit) to its last run (an open incident's: the newest run)."""
    written = ({incidents.canonical_id(n.incident) for n in store.notes()}
               | {incidents.canonical_id(a.incident) for a in store.actions()})
    if not written:
        return []
    verified = incidents.verified_hosts(store)
    spans = []
    for env, runs in incidents.load_runs(store).items():
        for ep in incidents.episodes(runs, verified):
            first = ep.runs[0].id
            if f"{incidents.ID_PREFIX}{env}-{first}" not in written:
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
    pattern = re.compile(rf"(INC-)?{re.escape(environment)}-\d+\.md")  # and the older name
    kept = {p.name for p in written}
    removed = []
    for path in [*folder.glob(f"{environment}-*.md"), *folder.glob(f"INC-{environment}-*.md")]:
        if pattern.fullmatch(path.name) and path.name not in kept:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
