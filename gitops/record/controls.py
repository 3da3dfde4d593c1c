"""The operator controls of an environment: suspended (who, when, why) and held revisions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gitops.record.base import StoreBase, parse_time
from gitops.records import Controls

__all__ = ["ControlsMixin"]


def _controls(environment: str, row: Any) -> Controls:
    if row is None:
        return Controls(environment)
    return Controls(environment, suspended=bool(row["suspended"]), reason=row["reason"],
                    actor=row["actor"], since=parse_time(row["since"]), held_sha=row["held_sha"],
                    held_head=row["held_head"])


class ControlsMixin(StoreBase):
    """Writes and reads the ``controls`` table."""

    def controls(self, environment: str) -> Controls:
        row = self.db.execute("SELECT * FROM controls WHERE environment=?",
                              (environment,)).fetchone()
        return _controls(environment, row)

    def all_controls(self) -> dict[str, Controls]:
        return {r["environment"]: _controls(r["environment"], r)
                for r in self.db.execute("SELECT * FROM controls")}

    def set_controls(self, environment: str, **values: Any) -> Controls:
        """Change some fields of the controls (``suspended``, ``reason``, ``actor``,
        ``since``, ``held_sha``, ``held_head``); returns them."""
        current = self.controls(environment).as_dict()
        unknown = set(values) - (set(current) - {"environment"})
        if unknown:
            raise TypeError(f"unknown controls: {sorted(unknown)}")
        if isinstance(values.get("since"), datetime):
            values["since"] = values["since"].isoformat(timespec="seconds")
        current.update(values)
        current["suspended"] = int(bool(current["suspended"]))
        with self._tx() as db:
            db.execute(
                "INSERT INTO controls (environment, suspended, reason, actor, since, held_sha,"
                " held_head) VALUES (?,?,?,?,?,?,?) ON CONFLICT (environment) DO UPDATE SET"
                " suspended=excluded.suspended, reason=excluded.reason, actor=excluded.actor,"
                " since=excluded.since, held_sha=excluded.held_sha,"
                " held_head=excluded.held_head",
                (environment, current["suspended"], current["reason"], current["actor"],
                 current["since"], current["held_sha"], current["held_head"]))
        return self.controls(environment)
