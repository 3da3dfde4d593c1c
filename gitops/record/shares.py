"""The shares of batches applied by several controllers' workers (``gitops.daemon.fanout``):
queued, claimed, renewed, finished or taken back, only while the asking lease is live.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gitops.record.base import StoreBase
from gitops.record.dialect import PgConnection
from gitops.records import ShareRow

__all__ = ["SharesMixin"]


class SharesMixin(StoreBase):
    """Writes and reads the ``shares`` table (and counts the queue's workers)."""

    def add_share(self, environment: str, token: int, hosts: Sequence[str]) -> int:
        """Queue a share of ``hosts`` for the holder of lease ``token``; its id. Shares
        older than a day are removed."""
        e = self._EPOCH
        with self._tx() as db:
            db.execute(f"DELETE FROM shares WHERE queued_at < {e} - 86400")
            cur = db.execute(
                "INSERT INTO shares (environment, token, hosts, state, queued_at, created_at)"
                f" VALUES (?, ?, ?, 'queued', {e}, ?) RETURNING id",
                (environment, token, json.dumps(list(hosts)), self._now()))
            return int(cur.fetchall()[0][0])

    def set_share_job(self, share: int, job: int) -> None:
        self.db.execute("UPDATE shares SET job = ? WHERE id = ?", (job, share))

    def claim_share(self, share: int, worker: str, ttl: float) -> tuple[int, float] | None:
        """Take a queued share for ``worker`` for ``ttl`` seconds while the lease that asked
        for it is live: (its attempt, the seconds that lease has left); None when it is
        taken, finished or its holder's lease is gone."""
        e = self._EPOCH
        with self._tx() as db:
            rows = db.execute(
                "UPDATE shares SET state = 'running', attempt = attempt + 1, worker = ?,"
                f" expires = {e} + ? WHERE id = ? AND state = 'queued' AND EXISTS (SELECT 1"
                " FROM leases WHERE leases.environment = shares.environment AND"
                f" leases.token = shares.token AND leases.expires > {e})"
                " RETURNING attempt, (SELECT expires FROM leases WHERE"
                f" leases.environment = shares.environment) - {e}",
                (worker, ttl, share)).fetchall()
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    def renew_share(self, share: int, attempt: int, ttl: float) -> float | None:
        """Extend the claim of ``attempt`` by ``ttl`` while the lease that asked for the share
        is live: the seconds that lease has left; None when the claim or the lease is gone."""
        e = self._EPOCH
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE shares SET expires = {e} + ? WHERE id = ? AND attempt = ? AND"
                " state = 'running' AND EXISTS (SELECT 1 FROM leases WHERE"
                " leases.environment = shares.environment AND leases.token = shares.token"
                f" AND leases.expires > {e}) RETURNING (SELECT expires FROM leases WHERE"
                f" leases.environment = shares.environment) - {e}",
                (ttl, share, attempt)).fetchall()
        return float(rows[0][0]) if rows else None

    def finish_share(self, share: int, attempt: int, *, result: str | None = None,
                     error: str | None = None) -> bool:
        """Keep what ``attempt`` of the share did (a worker's JSON result, or an error); False
        when that attempt no longer holds it (taken back meanwhile: nothing is kept)."""
        with self._tx() as db:
            return bool(db.execute(
                "UPDATE shares SET state = ?, result = ?, error = ?, expires = NULL"
                " WHERE id = ? AND attempt = ? AND state = 'running' RETURNING id",
                ("failed" if error is not None else "done", result, error, share,
                 attempt)).fetchall())

    def requeue_share(self, share: int, *, worker: str | None = None,
                      ttl: float = 0) -> int | None:
        """Take back a share whose claim expired (its worker died or was cut off) or that no
        worker took: queued again, or with ``worker``, claimed by it at once for ``ttl``
        seconds (its new attempt). None when it was claimed or finished meanwhile."""
        e = self._EPOCH
        with self._tx() as db:
            rows = db.execute(
                "UPDATE shares SET state = ?, worker = ?, attempt = attempt + ?,"
                f" expires = {e} + ?, queued_at = {e} WHERE id = ? AND (state = 'queued' OR"
                f" (state = 'running' AND expires < {e})) RETURNING attempt",
                ("running" if worker else "queued", worker, 1 if worker else 0, ttl,
                 share)).fetchall()
        return int(rows[0][0]) if rows else None

    def abandon_shares(self, ids: Sequence[int]) -> None:
        """The holder gave up on these shares (stopped, failed, or lost its lease): a worker
        still applying one can no longer renew its claim and stops."""
        if ids:
            marks = ",".join("?" for _ in ids)
            self.db.execute("UPDATE shares SET state = 'abandoned' WHERE state IN"
                            f" ('queued', 'running') AND id IN ({marks})", tuple(ids))

    def queue_workers(self, within: float) -> int:
        """PostgreSQL: the job queue's workers (one per controller with ``fanout.remote``,
        ``gitops.daemon.fanout``) that sent a heartbeat in the last ``within`` seconds; 0 on SQLite,
        which has no queue."""
        if not isinstance(self.db, PgConnection):
            return 0
        rows = self.db.execute("SELECT count(*) FROM procrastinate_workers WHERE"
                              " last_heartbeat > now() - make_interval(secs => ?)",
                              (within,)).fetchall()
        return int(rows[0][0])

    def shares(self, ids: Sequence[int]) -> list[ShareRow]:
        """The shares ``ids``, in that order (those gone left out)."""
        if not ids:
            return []
        e = self._EPOCH
        marks = ",".join("?" for _ in ids)
        rows = {r["id"]: r for r in self.db.execute(
            "SELECT id, environment, token, hosts, state, attempt, worker, job,"
            f" expires - {e} AS remaining, {e} - queued_at AS age, result, error FROM shares"
            f" WHERE id IN ({marks})", tuple(ids)).fetchall()}
        return [ShareRow(int(r["id"]), r["environment"], int(r["token"]),
                         tuple(json.loads(r["hosts"])), r["state"], int(r["attempt"]),
                         r["worker"], r["job"], None if r["remaining"] is None
                         else float(r["remaining"]), float(r["age"]), r["result"], r["error"])
                for i in ids if (r := rows.get(i)) is not None]
