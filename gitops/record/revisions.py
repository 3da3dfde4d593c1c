"""Which revisions an environment takes: those quarantined (refused until released or
superseded) and those verified on every host (what promotion reads).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gitops.record.base import StoreBase, parse_time
from gitops.records import Quarantined, Revision, VerifiedRevision

__all__ = ["RevisionsMixin"]


class RevisionsMixin(StoreBase):
    """Writes and reads the ``quarantine`` and ``verified_revisions`` tables."""

    def _of_environment(self, table: str, environment: str | None, order: str) -> Any:
        """The rows of ``table`` (of ``environment`` only, when given) ordered by ``order``."""
        where, args = ((" WHERE environment=?", (environment,)) if environment is not None
                       else ("", ()))
        return self.db.execute(f"SELECT * FROM {table}{where} ORDER BY {order}", args)

    def quarantine(self, environment: str, sha: str, reason: str) -> None:
        self.db.execute("INSERT INTO quarantine (environment, sha, reason, since)"
                        " VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                        (environment, sha, reason, self._now()))

    def release_quarantine(self, environment: str, sha: str, *, actor: str,
                           reason: str) -> int | None:
        """Release one quarantined revision (an operator found the failure was not the
        commit's) and record who and why as an ``unquarantine`` event, in one transaction;
        the event's run id, or None when ``sha`` was not quarantined there."""
        with self._tx() as db:
            removed = db.execute("DELETE FROM quarantine WHERE environment=? AND sha=?",
                                 (environment, sha)).rowcount
            if not removed:
                return None
            return self._event(db, environment, "unquarantine", actor=actor, reason=reason,
                               sha=sha)

    def drop_quarantined(self, environment: str, shas: Iterable[str]) -> None:
        """Take ``shas`` out of the quarantine without an event (superseded: a newer revision
        they lead to is verified on every host)."""
        with self._tx() as db:
            db.executemany("DELETE FROM quarantine WHERE environment=? AND sha=?",
                           [(environment, sha) for sha in shas])

    def quarantined(self, environment: str | None = None) -> list[Quarantined]:
        out = []
        for r in self._of_environment("quarantine", environment, "since"):
            since = parse_time(r["since"])
            assert since is not None
            out.append(Quarantined(r["environment"], r["sha"], r["reason"], since))
        return out

    def record_verified(self, environment: str, revision: Revision, run_id: int, *,
                        upstream: str | None = None) -> bool:
        """``revision`` is now applied and verified on every host of ``environment``; the
        first time is kept. True when it was not recorded before."""
        cur = self.db.execute(
            "INSERT INTO verified_revisions (environment, sha, branch, committed_at,"
            " verified_at, run_id, upstream) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (environment, revision.sha, revision.branch, revision.committed_at.isoformat(),
             self._now(), run_id, upstream))
        return bool(cur.rowcount)

    def verified_revisions(self, environment: str | None = None) -> list[VerifiedRevision]:
        """Revisions verified on every host, oldest verification first."""
        out = []
        for r in self._of_environment("verified_revisions", environment, "verified_at, run_id"):
            committed, verified = parse_time(r["committed_at"]), parse_time(r["verified_at"])
            assert committed is not None and verified is not None
            out.append(VerifiedRevision(r["environment"], r["sha"], r["branch"], committed,
                                        verified, r["run_id"], r["upstream"]))
        return out

    def quarantine_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT environment, COUNT(*) FROM quarantine GROUP BY environment")}
