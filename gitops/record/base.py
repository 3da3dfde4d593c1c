"""What every part of the store shares: the base its row mixins write and read through (the
connection, one transaction per write, the clock, the operator-event row) and the conversions
of stored columns to records' values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from gitops.records import Ref, Revision

__all__ = ["ENVIRONMENT", "StoreBase", "now", "parse_time", "ref_text"]

ENVIRONMENT = ""
"""The ``host`` key of an environment's own status row."""


def now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def ref_text(value: Ref | Revision | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.ref


class StoreBase:
    """The connection and the clock that each concern of the store (a mixin of ``Store``)
    writes and reads through; ``Store`` and ``PostgresStore`` open the connection."""

    db: Any
    """``sqlite3.Connection`` or ``PgConnection``."""
    clock: Callable[[], datetime]
    readonly: bool
    where: str

    _EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"  # sqlite: the database's clock
    """The database's clock in epoch seconds: every controller reads the same one."""

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        self.db.execute("BEGIN IMMEDIATE")  # sqlite: take the write lock up front
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _now(self) -> str:
        return self.clock().isoformat()

    def _event(self, db: Any, environment: str, kind: str, *, actor: str, reason: str,
               result: str = "succeeded", sha: str | None = None) -> int:
        stamp = self._now()
        cur = db.execute(
            "INSERT INTO runs (environment, kind, actor, reason, sha, started_at, finished_at,"
            " duration_s, result, event) VALUES (?,?,?,?,?,?,?,0,?,1) RETURNING id",
            (environment, kind, actor, reason, sha, stamp, stamp, result))
        return int(cur.fetchall()[0][0])
