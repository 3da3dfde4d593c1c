"""Incident reports rewritten when a post-mortem changes, where the daemon writes them.

The daemon rewrites an environment's reports after each run; an entry written between runs
(``gitops incidents annotate`` / ``action``, ``POST /api/incidents/ID/...``) rewrites them at
once through ``after_postmortem``, so a report never says "Not written yet" of what is
written. The change summary comes from the environment's repository mirror in the state
folder, as the daemon's does.
"""

from __future__ import annotations

from pathlib import Path

from gitops.pipeline import source
from gitops.record.store import Store
from gitops.report import incidents
from gitops.settings import Settings

__all__ = ["after_postmortem", "folder"]


def folder(settings: Settings) -> Path:
    """Where incident reports are written: ``reports_dir``, else ``<state_dir>/reports``."""
    return settings.reports_dir or settings.state_dir / "reports"


def _repo(settings: Settings, environment: str) -> str | None:
    for cfg in settings.environments:
        if cfg.environment == environment:
            return cfg.repo
    return settings.repo if settings.environment == environment else None


def after_postmortem(settings: Settings, store: Store, incident_id: str) -> Path:
    """Rewrite the reports of incident ``incident_id``'s environment (only those that
    changed are written); returns that incident's report."""
    found = incidents.find(store, incident_id)
    repo = _repo(settings, found.environment)

    def diff(old: str, new: str) -> str:
        return source.diff_summary(repo, settings.state_dir, old, new) if repo else ""

    where = folder(settings)
    incidents.write_reports(store, where, diff_summary=diff, environment=found.environment)
    return where / f"{found.id}.md"
