"""Commit statuses every retry failed to deliver, kept to be sent again at the next cycle.
"""

from __future__ import annotations

from gitops.record.base import StoreBase, parse_time
from gitops.records import Undelivered

__all__ = ["CommitStatusesMixin"]


class CommitStatusesMixin(StoreBase):
    """Writes and reads the ``undelivered`` table."""

    def keep_undelivered(self, environment: str, receiver: int, sha: str, state: str,
                         description: str) -> None:
        """A commit status every retry failed to deliver: sent again at the next cycle."""
        with self._tx() as db:
            db.execute("DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
                       (environment, receiver, sha))
            db.execute(
                "INSERT INTO undelivered (environment, receiver, sha, state, description,"
                " created_at) VALUES (?,?,?,?,?,?)",
                (environment, receiver, sha, state, description, self._now()))

    def undelivered(self, environment: str) -> list[Undelivered]:
        out = []
        for r in self.db.execute("SELECT * FROM undelivered WHERE environment=? ORDER BY id",
                                 (environment,)):
            created = parse_time(r["created_at"])
            assert created is not None
            out.append(Undelivered(r["id"], r["environment"], r["receiver"], r["sha"],
                                   r["state"], r["description"], created))
        return out

    def delivered(self, environment: str, receiver: int, sha: str) -> None:
        """A status for ``sha`` reached ``receiver``: an older undelivered one is obsolete."""
        self.db.execute("DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
                        (environment, receiver, sha))
