"""The owning teams of environments and services, as the inventory and the settings declare.
"""

from __future__ import annotations

from datetime import datetime

from gitops.record.base import StoreBase
from gitops.records import Owner

__all__ = ["OwnersMixin"]


class OwnersMixin(StoreBase):
    """Writes and reads the ``owners`` table."""

    def set_owners(self, environment: str, source: str, team: str | None,
                   services: dict[str, str] | None = None) -> None:
        """Replace what ``source`` (``inventory`` or ``settings``) declares of who owns
        ``environment`` (``team``) and its services (``services``: service -> team)."""
        rows = ([("", team)] if team else []) + sorted((services or {}).items())
        with self._tx() as db:
            db.execute("DELETE FROM owners WHERE environment=? AND source=?",
                       (environment, source))
            db.executemany(
                "INSERT INTO owners (environment, service, source, team, updated_at)"
                " VALUES (?,?,?,?,?)",
                [(environment, service, source, owner, self._now()) for service, owner in rows])

    def owners(self) -> list[Owner]:
        """Every recorded owner, by environment, service, source."""
        return [Owner(r["environment"], r["service"], r["team"], r["source"],
                      datetime.fromisoformat(r["updated_at"]))
                for r in self.db.execute("SELECT * FROM owners ORDER BY environment, service,"
                                         " source").fetchall()]
