"""Which commit an operator may move an environment to by hand: the record decides.

A rollback target is a commit on the environment's branch (its head or an ancestor of it
in the mirror, as ``source.on_branch`` tells) that was verified in that environment
(``Store.verified_revisions``, what a succeeded run records). A pull request's ref, a tag
or commit off the branch, an unknown or ambiguous sha, a commit never verified there: each
is a ``TargetRefused``, one line, nothing held. ``promotion.promote`` asks ``on_branch`` too.
Called by ``control`` and ``promotion``.
"""

from __future__ import annotations

from pathlib import Path

from gitops.errors import GitopsError, RevisionNotFound
from gitops.pipeline import source
from gitops.record.store import Store
from gitops.records import Revision

__all__ = ["TargetRefused", "branch_commit", "rollback_target"]


class TargetRefused(GitopsError):
    """A revision the record does not allow as a rollback target (off the branch, never
    verified in the environment, unknown, ambiguous).

    Exit 2 (the CLI's refusal by the environment's record); HTTP 409."""


def branch_commit(repo: str, branch: str, revision: str, state_dir: Path) -> Revision | None:
    """``revision`` resolved in the fetched mirror (``RevisionNotFound`` when unknown or
    ambiguous), or None when that commit is not on ``branch``."""
    found = source.resolve(repo, branch, revision, state_dir)
    return found if source.on_branch(repo, branch, found.sha, state_dir) else None


def rollback_target(store: Store, environment: str, *, repo: str, branch: str,
                    state_dir: Path, revision: str) -> Revision:
    """``revision`` as a commit ``environment`` may be rolled back to: on ``branch`` (fetched
    already) and verified on every host of ``environment`` per the record; else
    ``TargetRefused``."""
    try:
        found = branch_commit(repo, branch, revision, state_dir)
    except RevisionNotFound as exc:
        raise TargetRefused(f"{environment}: cannot roll back to it: {exc}") from None
    if found is None:
        raise TargetRefused(f"{environment}: {revision[:60]!r} is not a commit of branch "
                            f"{branch!r}: a rollback target must be on the branch and "
                            f"verified in {environment}")
    verified = {v.sha for v in store.verified_revisions(environment)}
    if found.sha not in verified:
        raise TargetRefused(f"{environment}: {found.sha[:10]} was never verified on every "
                            f"host of {environment}: roll back only to a revision it verified")
    return found
