"""Which snapshots stay in the state folder: those the record uses and the newest others;
``reconcile.run`` prunes the rest after each run (the CLI's and the daemon's alike).
"""

from __future__ import annotations

from pathlib import Path

from gitops.pipeline import source
from gitops.record.store import Store

__all__ = ["prune_snapshots", "snapshots_in_use"]


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
