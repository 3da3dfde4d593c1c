"""What each notifier was sent and what came of it (``notifier_deliveries``), and which
notifiers have failed for an hour: the derived ``NotifierFailing`` condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gitops.record.base import StoreBase, parse_time
from gitops.records import Condition

__all__ = ["FAILING_AFTER", "Failing", "NotifiersMixin", "failing_condition"]

FAILING_AFTER = timedelta(hours=1)
"""A notifier whose every delivery has failed for this long is a condition."""
_KEEP = timedelta(days=30)
"""Deliveries older than this leave the table (the newest of each notifier stays)."""


@dataclass(frozen=True)
class Failing:
    """A notifier no delivery has reached since ``since``; ``reason``: its last failure's."""

    notifier: str
    since: datetime
    reason: str
    environments: tuple[str, ...]


def failing_condition(found: Failing) -> Condition:
    """The derived ``NotifierFailing`` condition of an environment the notifier serves."""
    return Condition("NotifierFailing", "True", "DeliveriesFailing",
                     f"notifier {found.notifier}: nothing delivered since "
                     f"{found.since.isoformat(timespec='seconds')}: {found.reason}")


class NotifiersMixin(StoreBase):
    """Writes and reads the ``notifier_deliveries`` table."""

    def record_delivery(self, notifier: str, environment: str, event: str, status: str,
                        reason: str = "") -> None:
        """One notification's fate (``status``: delivered, refused or failed); ``reason``
        must be scrubbed of secrets already."""
        stamp = self.clock()
        with self._tx() as db:
            db.execute("INSERT INTO notifier_deliveries (notifier, environment, event, status,"
                       " reason, sent_at) VALUES (?,?,?,?,?,?)",
                       (notifier, environment, event, status, reason[:500], stamp.isoformat()))
            db.execute("DELETE FROM notifier_deliveries WHERE notifier=? AND sent_at<? AND id<"
                       " (SELECT MAX(id) FROM notifier_deliveries WHERE notifier=?)",
                       (notifier, (stamp - _KEEP).isoformat(), notifier))

    def deliveries(self, notifier: str | None = None,
                   limit: int = 20) -> list[dict[str, str]]:
        """The newest deliveries (of ``notifier``), newest first."""
        sql = ("SELECT notifier, environment, event, status, reason, sent_at"
               " FROM notifier_deliveries")
        args: tuple[str | int, ...] = ()
        if notifier is not None:
            sql += " WHERE notifier=?"
            args = (notifier,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("notifier", "environment", "event", "status", "reason", "sent_at")
        return [dict(zip(keys, (str(v) for v in row), strict=True)) for row in rows]

    def failing_notifiers(self, now: datetime | None = None) -> list[Failing]:
        """Notifiers whose deliveries have all failed since at least ``FAILING_AFTER`` ago."""
        now = now or self.clock()
        out = []
        for (name,) in self.db.execute("SELECT DISTINCT notifier FROM notifier_deliveries"
                                       " ORDER BY notifier").fetchall():
            last_ok = self.db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM notifier_deliveries WHERE notifier=?"
                " AND status='delivered'", (name,)).fetchone()[0]
            rows = self.db.execute(
                "SELECT environment, reason, sent_at FROM notifier_deliveries WHERE notifier=?"
                " AND id>? ORDER BY id", (name, last_ok)).fetchall()
            if not rows:
                continue
            since = parse_time(rows[0][2])
            if since is None or now - since < FAILING_AFTER:
                continue
            out.append(Failing(name, since, rows[-1][1],
                               tuple(sorted({r[0] for r in rows}))))
        return out
