"""Approvals in the record: the revisions of an environment with ``require_approval`` that
waited for a person's sign-off (``requested_at``), and who approved each, with the role that
allowed it and why. One row per environment and revision; the approval is written once, in
the same transaction that checks the revision is the one waiting (``approve``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from gitops.errors import GitopsError
from gitops.record.base import StoreBase, parse_time

__all__ = ["ApprovalRefused", "ApprovalRow", "ApprovalsMixin", "approvals_schema"]


class ApprovalRefused(GitopsError):
    """An approval of a revision that is not the one waiting (or of none waiting): the
    environment's state refuses it. Exit 2; HTTP 409."""


@dataclass(frozen=True)
class ApprovalRow:
    """One revision that waited for approval in ``environment``: since when, and (once
    approved) by whom, with which role, why and when."""

    environment: str
    sha: str
    requested_at: datetime
    approved_by: str | None = None
    role: str | None = None
    reason: str = ""
    approved_at: datetime | None = None

    @property
    def approved(self) -> bool:
        return self.approved_at is not None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v)
                for k, v in asdict(self).items()}


def approvals_schema(db: Any) -> None:
    """The ``approvals`` table (migration 13), the same on both dialects."""
    db.execute("CREATE TABLE approvals (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " environment TEXT NOT NULL, sha TEXT NOT NULL, requested_at TEXT NOT NULL,"
               " approved_by TEXT, role TEXT, reason TEXT NOT NULL DEFAULT '',"
               " approved_at TEXT, UNIQUE (environment, sha))")


def _row(r: Any) -> ApprovalRow:
    return ApprovalRow(r["environment"], r["sha"],
                       parse_time(r["requested_at"]) or datetime.min, r["approved_by"],
                       r["role"], r["reason"], parse_time(r["approved_at"]))


class ApprovalsMixin(StoreBase):
    """Writes and reads the ``approvals`` table."""

    def request_approval(self, environment: str, sha: str) -> bool:
        """Note that ``sha`` waits for approval in ``environment`` (now the newest waiting);
        False when it was approved already (nothing changes)."""
        with self._tx() as db:
            row = db.execute("SELECT approved_at FROM approvals WHERE environment=? AND sha=?",
                             (environment, sha)).fetchone()
            if row is not None and row["approved_at"] is not None:
                return False
            newest = db.execute("SELECT sha FROM approvals WHERE environment=?"
                                " ORDER BY requested_at DESC, id DESC LIMIT 1",
                                (environment,)).fetchone()
            if newest is not None and newest["sha"] == sha:
                return True  # waiting already: its ``requested_at`` stays
            db.execute("INSERT INTO approvals (environment, sha, requested_at) VALUES (?,?,?)"
                       " ON CONFLICT (environment, sha) DO UPDATE SET"
                       " requested_at = excluded.requested_at",
                       (environment, sha, self._now()))
        return True

    def pending_approval(self, environment: str) -> ApprovalRow | None:
        """The revision waiting for approval in ``environment``: the newest requested and not
        approved (an older one was overtaken by a newer revision)."""
        r = self.db.execute("SELECT * FROM approvals WHERE environment=?"
                            " ORDER BY requested_at DESC, id DESC LIMIT 1",
                            (environment,)).fetchone()
        return _row(r) if r is not None and r["approved_at"] is None else None

    def approvals(self, environment: str, limit: int = 100) -> list[ApprovalRow]:
        """The environment's approved revisions, newest approval first."""
        return [_row(r) for r in self.db.execute(
            "SELECT * FROM approvals WHERE environment=? AND approved_at IS NOT NULL"
            " ORDER BY approved_at DESC, id DESC LIMIT ?", (environment, limit)).fetchall()]

    def approve(self, environment: str, sha: str, *, actor: str, role: str,
                reason: str) -> ApprovalRow:
        """Approve the revision waiting in ``environment`` if ``sha`` (a prefix of 7 or more
        hex digits) names it; else ``ApprovalRefused`` naming the one waiting, if any."""
        with self._tx() as db:
            r = db.execute("SELECT * FROM approvals WHERE environment=?"
                           " ORDER BY requested_at DESC, id DESC LIMIT 1",
                           (environment,)).fetchone()
            pending = _row(r) if r is not None and r["approved_at"] is None else None
            if pending is None:
                raise ApprovalRefused(f"{environment}: no revision is waiting for approval")
            if not pending.sha.startswith(sha):
                raise ApprovalRefused(f"{environment}: {sha[:40]} is not the revision waiting "
                                      f"for approval; {pending.sha[:10]} is")
            db.execute("UPDATE approvals SET approved_by=?, role=?, reason=?, approved_at=?"
                       " WHERE environment=? AND sha=?",
                       (actor, role, reason, self._now(), environment, pending.sha))
        done = self.db.execute("SELECT * FROM approvals WHERE environment=? AND sha=?",
                               (environment, pending.sha)).fetchone()
        return _row(done)
