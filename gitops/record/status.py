"""The status record in Flux's vocabulary: per environment and host, its conditions and last
applied, attempted and verified revisions; written by runs, read with the derived
``Suspended`` condition, forgotten with the environment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gitops.record.base import ENVIRONMENT, parse_time, ref_text
from gitops.record.controls import ControlsMixin
from gitops.record.notifiers import NotifiersMixin, failing_condition
from gitops.records import Condition, Controls, LatestCheck, Ref, Revision, StatusRow

__all__ = ["StatusMixin", "suspended_condition"]


def _ref(value: str | None) -> Ref | None:
    return Ref.parse(value) if value else None


def suspended_condition(controls: Controls) -> Condition:
    """The derived ``Suspended`` condition: who suspended, when, and why."""
    since = controls.since.isoformat(timespec="seconds") if controls.since else "?"
    return Condition("Suspended", "True", "SuspendedByOperator",
                     f"suspended by {controls.actor or 'unknown'} since {since}: "
                     f"{controls.reason}")


class StatusMixin(ControlsMixin, NotifiersMixin):
    """Writes and reads the ``status`` table (and forgets an environment)."""

    def set_status(
        self,
        environment: str,
        host: str,
        conditions: Sequence[Condition],
        *,
        applied: Ref | Revision | str | None = None,
        attempted: Ref | Revision | str | None = None,
        verified: Ref | Revision | str | None = None,
    ) -> None:
        """Replace the conditions of one object; revisions given as None are kept.

        A ``Suspended`` condition is derived from the controls when read, never stored."""
        stored = [c.as_dict() for c in conditions if c.type != "Suspended"]
        with self._tx() as db:
            db.execute(
                "INSERT INTO status (environment, host, conditions, last_applied_revision,"
                " last_attempted_revision, last_verified_revision, updated_at)"
                " VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (environment, host) DO UPDATE SET conditions=excluded.conditions,"
                " last_applied_revision=COALESCE(excluded.last_applied_revision,"
                " status.last_applied_revision),"
                " last_attempted_revision=COALESCE(excluded.last_attempted_revision,"
                " status.last_attempted_revision),"
                " last_verified_revision=COALESCE(excluded.last_verified_revision,"
                " status.last_verified_revision), updated_at=excluded.updated_at",
                (environment, host, json.dumps(stored), ref_text(applied),
                 ref_text(attempted), ref_text(verified), self._now()),
            )

    def forget(self, environment: str, *, actor: str = "", reason: str = "") -> dict[str, int]:
        """Remove an environment's status record, controls, quarantine, convergence and
        undelivered statuses; its runs stay in the history, and a ``forget`` event with
        ``actor`` joins them. Returns rows removed per table and ``runs``, the runs kept."""
        removed: dict[str, int] = {}
        with self._tx() as db:
            for table in ("status", "controls", "quarantine", "converged", "undelivered",
                          "installed", "verified_revisions", "owners"):
                removed[table] = db.execute(f"DELETE FROM {table} WHERE environment=?",
                                            (environment,)).rowcount
            removed["runs"] = db.execute("SELECT COUNT(*) FROM runs WHERE environment=?",
                                         (environment,)).fetchone()[0]
            self._event(db, environment, "forget", actor=actor, reason=reason)
        return removed

    def environments(self) -> list[str]:
        """Every environment the store knows: from runs, status, controls or quarantine."""
        rows = self.db.execute(
            "SELECT DISTINCT environment FROM runs UNION SELECT environment FROM status"
            " UNION SELECT environment FROM controls UNION SELECT environment FROM quarantine")
        return sorted(r[0] for r in rows)

    def status(self, environment: str | None = None) -> list[StatusRow]:
        """Status objects (environment rows have ``host`` == ""), by environment then host.

        Environment rows carry their controls and, when suspended, a ``Suspended``
        condition; an environment only suspended or held (no run yet) gets a row too. A
        notifier failing for an hour adds ``NotifierFailing`` to the environments it serves (every
        one when the digest, environment ``""``, is among what failed)."""
        sql = "SELECT * FROM status"
        args: tuple[str, ...] = ()
        if environment is not None:
            sql += " WHERE environment=?"
            args = (environment,)
        controls = self.all_controls()
        failing: dict[str, list[Condition]] = {}
        everywhere: list[Condition] = []  # failing on the digest, which serves them all
        for found in self.failing_notifiers():
            if "" in found.environments:
                everywhere.append(failing_condition(found))
                continue
            for name in found.environments:
                failing.setdefault(name, []).append(failing_condition(found))
        out: list[StatusRow] = []
        seen: set[str] = set()
        for row in self.db.execute(sql + " ORDER BY environment, host", args).fetchall():
            conditions = tuple(Condition(**c) for c in json.loads(row["conditions"]))
            env_controls = None
            if row["host"] == ENVIRONMENT:
                seen.add(row["environment"])
                env_controls = controls.get(row["environment"], Controls(row["environment"]))
                if env_controls.suspended:
                    conditions += (suspended_condition(env_controls),)
                conditions += (*failing.get(row["environment"], ()), *everywhere)
            out.append(StatusRow(
                row["environment"], row["host"], conditions,
                _ref(row["last_applied_revision"]), _ref(row["last_attempted_revision"]),
                _ref(row["last_verified_revision"]), parse_time(row["updated_at"]),
                env_controls))
        for name, c in sorted(controls.items()):
            if name in seen or (environment is not None and name != environment):
                continue
            if c.suspended or c.held_sha:
                out.append(StatusRow(name, ENVIRONMENT,
                                     (suspended_condition(c),) if c.suspended else (),
                                     None, None, None, None, c))
        out.sort(key=lambda r: (r.environment, r.host))
        return out

    def environment_status(self, environment: str) -> StatusRow | None:
        """The environment's own status object (conditions, revisions), if any run wrote it
        (or an operator suspended or held it)."""
        return next((r for r in self.status(environment) if r.host == ENVIRONMENT), None)

    def latest_checked(self) -> list[LatestCheck]:
        """Per environment and host of the status record, the newest run that checked it.

        One query per host, walking ``host_results`` newest first (its primary key), so it
        stops at the host's latest check instead of grouping all history."""
        found: list[LatestCheck] = []
        for env, host in self.db.execute("SELECT environment, host FROM status"
                                         " WHERE host != '' ORDER BY environment, host"
                                         ).fetchall():
            row = self.db.execute(
                "SELECT h.run_id, r.kind, h.verify_status"
                " FROM host_results h JOIN runs r ON r.id = h.run_id"
                " WHERE h.host = ? AND r.environment = ? AND h.verify_status IS NOT NULL"
                " ORDER BY h.run_id DESC LIMIT 1", (host, env)).fetchone()
            if row is not None:
                found.append(LatestCheck(env, host, row[0], row[1], row[2]))
        return found
