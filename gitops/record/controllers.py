"""Several controllers sharing environments (``gitops.record.lease``): the leases with their
fencing tokens by the database's clock, the controllers seen running, and the requests that
reached a controller not holding the environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from gitops.record.base import StoreBase
from gitops.records import ControllerRequest, Lease

__all__ = ["ControllersMixin"]


class ControllersMixin(StoreBase):
    """Writes and reads the ``leases``, ``controllers`` and ``requests`` tables."""

    def acquire_lease(self, environment: str, holder: str, ttl: float) -> int | None:
        """Take ``environment`` for ``holder`` for ``ttl`` seconds when nobody holds it or its
        lease has expired (by the database's clock); the new fencing token, None when another
        holds it. Concurrent calls: the row's lock lets one win, the others see it live."""
        e = self._EPOCH
        with self._tx() as db:
            rows = db.execute(
                "INSERT INTO leases (environment, holder, token, acquired_at, expires)"
                f" VALUES (?, ?, 1, ?, {e} + ?) ON CONFLICT (environment) DO UPDATE SET"
                " holder = excluded.holder, token = leases.token + 1,"
                " acquired_at = excluded.acquired_at, expires = excluded.expires"
                f" WHERE leases.expires < {e} RETURNING token",
                (environment, holder, self._now(), ttl)).fetchall()
        return int(rows[0][0]) if rows else None

    def renew_leases(self, holder: str, tokens: Mapping[str, int], ttl: float) -> set[str]:
        """Extend by ``ttl`` the leases (environment -> token) ``holder`` still holds; returns
        those renewed. One taken over meanwhile has another token and is not."""
        kept: set[str] = set()
        with self._tx() as db:
            for environment, token in sorted(tokens.items()):
                if db.execute(
                        f"UPDATE leases SET expires = {self._EPOCH} + ? WHERE environment = ?"
                        " AND holder = ? AND token = ? RETURNING environment",
                        (ttl, environment, holder, token)).fetchall():
                    kept.add(environment)
        return kept

    def release_lease(self, environment: str, holder: str, token: int) -> None:
        """Give the lease up now (a clean stop): another controller may take it at once."""
        with self._tx() as db:
            db.execute("UPDATE leases SET expires = 0 WHERE environment = ? AND holder = ?"
                       " AND token = ?", (environment, holder, token))

    def leases(self) -> list[Lease]:
        """Every environment's lease, live or expired, by environment."""
        return [Lease(r["environment"], r["holder"], int(r["token"]),
                      datetime.fromisoformat(r["acquired_at"]), float(r["remaining"]))
                for r in self.db.execute(
                    "SELECT environment, holder, token, acquired_at,"
                    f" expires - {self._EPOCH} AS remaining FROM leases ORDER BY environment")]

    def heartbeat_controller(self, name: str, ttl: float) -> int:
        """``name`` is running for ``ttl`` more seconds (by the database's clock); returns
        how many controllers are running now (it included). Long-gone ones are removed."""
        e = self._EPOCH
        with self._tx() as db:
            db.execute("INSERT INTO controllers (name, expires) VALUES (?, " + e + " + ?)"
                       " ON CONFLICT (name) DO UPDATE SET expires = excluded.expires",
                       (name, ttl))
            db.execute(f"DELETE FROM controllers WHERE expires < {e} - 86400")
            rows = db.execute(f"SELECT count(*) FROM controllers WHERE expires > {e}"
                              ).fetchall()
        return int(rows[0][0])

    def post_request(self, environment: str, action: str, *, actor: str, reason: str = "",
                     force: bool = False, hosts: Sequence[str] = ()) -> int:
        """Keep a request for the environment's holder (whoever holds it now or next)."""
        cur = self.db.execute(
            "INSERT INTO requests (environment, action, actor, reason, force, hosts,"
            " created_at) VALUES (?,?,?,?,?,?,?) RETURNING id",
            (environment, action, actor, reason, int(force), json.dumps(sorted(hosts)),
             self._now()))
        return int(cur.fetchall()[0][0])

    def take_requests(self, environments: Sequence[str], holder: str) -> list[ControllerRequest]:
        """The requests not yet taken for ``environments``, oldest first, now taken by
        ``holder`` (each is taken once); taken ones older than a day are removed."""
        if not environments:
            return []
        stamp = self.clock()
        marks = ",".join("?" for _ in environments)
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE requests SET taken_by = ?, taken_at = ? WHERE taken_at IS NULL"
                f" AND environment IN ({marks}) RETURNING id, environment, action, actor,"
                " reason, force, hosts", (holder, stamp.isoformat(), *environments)).fetchall()
            db.execute("DELETE FROM requests WHERE taken_at < ?",
                       ((stamp - timedelta(days=1)).isoformat(),))
        return sorted((ControllerRequest(int(r["id"]), r["environment"], r["action"],
                                         r["actor"], r["reason"], bool(r["force"]),
                                         tuple(json.loads(r["hosts"] or "[]")))
                       for r in rows), key=lambda r: r.id)
