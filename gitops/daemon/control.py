"""Operator controls: suspend, resume, rollback holds, retry targets, releasing a quarantined
revision; each one in history.

Kept in the store, so the CLI (with or without a daemon) and the daemon's API act on the same
record: a daemon reads the controls at every cycle. Called by ``cli`` and ``loop``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from gitops.errors import UsageError
from gitops.pipeline import source, targets
from gitops.pipeline.actor import who
from gitops.record.store import Store
from gitops.records import APPLY_KINDS, Controls

__all__ = ["failed_hosts", "hold", "hold_rollback", "last_good_revision", "release_hold",
           "resume", "sha_prefix", "suspend", "unquarantine", "who"]


def suspend(store: Store, environment: str, *, actor: str, reason: str) -> Controls:
    """Stop every apply to ``environment`` until ``resume`` (checks and drift reports go on)."""
    if not reason.strip():
        raise UsageError("suspend needs a reason (--reason): it is shown to everyone")
    store.set_controls(environment, suspended=1, reason=reason, actor=actor,
                       since=store.clock())
    event = store.record_event(environment, "suspend", actor=actor, reason=reason)
    return replace(store.controls(environment), event=event)


def resume(store: Store, environment: str, *, actor: str, reason: str = "") -> Controls:
    """Resume applies, and release a rollback hold: the branch head is reconciled again."""
    store.set_controls(environment, suspended=0, reason="", actor=actor,
                       since=store.clock(), held_sha=None, held_head=None)
    event = store.record_event(environment, "resume", actor=actor, reason=reason)
    return replace(store.controls(environment), event=event)


def last_good_revision(store: Store, environment: str, *, before: str | None) -> str | None:
    """The newest revision that an apply verified on every host it targeted, other than
    ``before`` (the revision to move away from); a run with a host no check ran on verified
    nothing there (``Store.unverified_runs``)."""
    unverified = store.unverified_runs(environment)
    for run in store.history(environment, limit=500):
        if (run.kind in ("reconcile", "rollback") and run.result == "succeeded"
                and not run.event and run.sha and run.sha != before
                and run.id not in unverified):
            return run.sha
    return None


def hold(store: Store, environment: str, sha: str, *, head: str, actor: str,
         reason: str) -> Controls:
    """Pin ``environment`` to ``sha`` until ``resume`` or a commit newer than ``head``."""
    store.set_controls(environment, held_sha=sha, held_head=head, actor=actor,
                       since=store.clock())
    event = store.record_event(environment, "rollback", actor=actor, sha=sha,
                               reason=reason or f"hold {sha[:10]} until resume or a newer commit")
    return replace(store.controls(environment), event=event)


def hold_rollback(store: Store, environment: str, *, repo: str, branch: str,
                  state_dir: Path, revision: str | None, actor: str,
                  reason: str) -> Controls:
    """Resolve ``revision`` (default: the last verified one before the applied revision) to a
    full SHA and hold it; the controls returned carry it as ``held_sha``. Only a commit on
    ``branch`` verified in ``environment`` is held (``targets.rollback_target``): anything
    else is ``TargetRefused`` and nothing is held."""
    head = source.head(repo, branch)
    source.fetch(repo, branch, state_dir)
    current = store.environment_status(environment)
    applied = current.last_applied if current is not None else None
    sha = revision or last_good_revision(store, environment,
                                         before=applied.sha if applied else None)
    if sha is None:
        raise UsageError(f"{environment}: no earlier verified revision to roll back to")
    full = targets.rollback_target(store, environment, repo=repo, branch=branch,
                                   state_dir=state_dir, revision=sha).sha
    return hold(store, environment, full, head=head, actor=actor, reason=reason)


def release_hold(store: Store, environment: str, *, head: str) -> None:
    """A newer commit arrived: the hold no longer applies."""
    store.set_controls(environment, held_sha=None, held_head=None)
    store.record_event(environment, "resume", actor="gitops",
                       reason=f"hold released: new commit {head[:10]}")


_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{7,40}")


def sha_prefix(sha: str) -> str:
    """``sha`` as a lower-case commit sha or prefix of one (7 to 40 hex digits), else a
    ``UsageError`` quoting it on one line."""
    if not _SHA_PREFIX.fullmatch(sha):
        raise UsageError(f"{sha[:60]!r} is not a commit sha: 7 to 40 hex digits")
    return sha.lower()


def unquarantine(store: Store, environment: str, sha: str, *, actor: str,
                 reason: str) -> dict[str, object]:
    """Release one quarantined revision of ``environment`` (``sha``: a unique prefix of 7 to
    40 hex digits) because its failure was not the commit's (a host was down): the daemon
    applies it again, at its next cycle, if it is still the branch head (``policy.next_run``).
    Who and why are recorded as an ``unquarantine`` event; ``UsageError`` for a malformed,
    unknown or ambiguous prefix, or an empty reason."""
    if not reason.strip():
        raise UsageError("unquarantine needs a reason (--reason): who released what, and why, "
                         "is recorded")
    prefix = sha_prefix(sha)
    entries = store.quarantined(environment)
    matches = [q for q in entries if q.sha.startswith(prefix)]
    if not matches:
        listed = ", ".join(q.sha[:10] for q in entries) or "none"
        raise UsageError(f"{environment}: {prefix} is not quarantined (quarantined there: "
                         f"{listed})")
    if len(matches) > 1:
        raise UsageError(f"{environment}: {prefix} is ambiguous: it begins "
                         f"{', '.join(q.sha[:12] for q in matches)}; give more digits")
    (entry,) = matches
    event = store.release_quarantine(environment, entry.sha, actor=actor, reason=reason)
    if event is None:  # released by someone else meanwhile
        raise UsageError(f"{environment}: {prefix} is not quarantined (any more)")
    return {"environment": environment, "sha": entry.sha, "actor": actor, "reason": reason,
            "quarantined": entry.as_dict(), "event": event}


def failed_hosts(store: Store, environment: str) -> list[str]:
    """The hosts that failed in the latest apply run of ``environment``."""
    for run in store.history(environment, limit=50):
        if (run.kind in APPLY_KINDS and run.result is not None
                and not run.event):
            return list(run.failed_hosts)
    return []
