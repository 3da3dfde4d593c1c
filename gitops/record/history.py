"""Reading the run history: runs, their hosts, operations, checks and plans, the verified
hosts and rollouts, the marks that change with it; and its retention (pruning old runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gitops.record.base import StoreBase, parse_time
from gitops.records import (
    APPLY_KINDS,
    CheckRow,
    FinishedRun,
    HostRow,
    OperationRow,
    Plan,
    RunDetail,
    RunRow,
)

__all__ = ["HistoryMixin"]

_APPLY_IN = "(" + ", ".join(f"'{kind}'" for kind in sorted(APPLY_KINDS)) + ")"
"""``records.APPLY_KINDS`` as an SQL list, for ``kind IN _APPLY_IN``."""
_RUN_COLUMNS = ("id, environment, kind, actor, reason, sha, branch, author, committed_at,"
                " message, started_at, finished_at, result, error, failed_hosts, duration_s,"
                " changed, stage_s, event")


def _run_row(row: Any) -> RunRow:
    started = parse_time(row["started_at"])
    assert started is not None
    return RunRow(
        id=row["id"], environment=row["environment"], kind=row["kind"], actor=row["actor"],
        reason=row["reason"] or "", sha=row["sha"], branch=row["branch"], author=row["author"],
        committed_at=parse_time(row["committed_at"]), message=row["message"], started_at=started,
        finished_at=parse_time(row["finished_at"]), result=row["result"], error=row["error"],
        failed_hosts=tuple(json.loads(row["failed_hosts"] or "[]")),
        duration_s=row["duration_s"], changed=row["changed"],
        stage_s=json.loads(row["stage_s"] or "{}"), event=bool(row["event"]),
    )


class HistoryMixin(StoreBase):
    """Reads the ``runs`` table and its results; prunes them."""

    def history(self, environment: str | None = None, limit: int = 20) -> list[RunRow]:
        """Runs, newest first."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        args: tuple[Any, ...] = ()
        if environment is not None:
            sql += " WHERE environment=?"
            args = (environment,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_run_row(row) for row in rows]

    def since_last_apply(self, environment: str, kind: str) -> list[RunRow]:
        """The operator actions of ``kind`` recorded after the environment's newest apply run
        (``records.APPLY_KINDS``; all of them if none), newest first: however many other runs
        came since (a release, ``gitops unquarantine``, waiting behind a suspension's
        verifies)."""
        rows = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE environment=? AND kind=? AND event<>0"
            " AND id > COALESCE((SELECT MAX(id) FROM runs WHERE environment=? AND event=0"
            f" AND kind IN {_APPLY_IN}), 0) ORDER BY id DESC",
            (environment, kind, environment)).fetchall()
        return [_run_row(row) for row in rows]

    def runs(self, environment: str | None = None) -> dict[str, list[RunRow]]:
        """Every run (oldest first) per environment, in one query."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        args: tuple[str, ...] = ()
        if environment is not None:
            sql, args = sql + " WHERE environment=?", (environment,)
        out: dict[str, list[RunRow]] = {}
        for row in self.db.execute(sql + " ORDER BY environment, id", args):
            out.setdefault(row["environment"], []).append(_run_row(row))
        return out

    def run(self, run_id: int) -> RunDetail | None:
        row = self.db.execute(f"SELECT {_RUN_COLUMNS}, plan FROM runs WHERE id=?",
                              (run_id,)).fetchone()
        if row is None:
            return None
        return RunDetail(
            run=_run_row(row),
            plan=Plan.model_validate_json(row["plan"]) if row["plan"] else None,
            hosts=tuple(HostRow(**dict(r)) for r in self.db.execute(
                "SELECT host, apply_status, changed, error, verify_status, duration_s"
                " FROM host_results WHERE run_id=? ORDER BY host", (run_id,))),
            operations=tuple(OperationRow(**dict(r)) for r in self.db.execute(
                "SELECT host, service, name, status, stderr FROM op_results WHERE run_id=?"
                " ORDER BY host, seq", (run_id,))),
            checks=tuple(CheckRow(**dict(r)) for r in self.db.execute(
                "SELECT host, service, check_name AS \"check\", status, message, duration_s"
                " FROM check_results WHERE run_id=? ORDER BY host, service, check_name",
                (run_id,))),
        )

    def plan(self, run_id: int) -> Plan | None:
        """The plan a run recorded, if any."""
        row = self.db.execute("SELECT plan FROM runs WHERE id=?", (run_id,)).fetchone()
        return Plan.model_validate_json(row[0]) if row is not None and row[0] else None

    def failures(self, run_id: int
                 ) -> tuple[list[HostRow], list[OperationRow], list[CheckRow]]:
        """What failed in a run: hosts with an error, failed operations, checks that did not
        pass (what ``run`` gives, filtered in the query)."""
        hosts = [HostRow(**dict(r)) for r in self.db.execute(
            "SELECT host, apply_status, changed, error, verify_status, duration_s"
            " FROM host_results WHERE run_id=? AND error IS NOT NULL AND error != ''"
            " ORDER BY host", (run_id,))]
        ops = [OperationRow(**dict(r)) for r in self.db.execute(
            "SELECT host, service, name, status, stderr FROM op_results WHERE run_id=?"
            " AND status='failed' ORDER BY host, seq", (run_id,))]
        checks = [CheckRow(**dict(r)) for r in self.db.execute(
            "SELECT host, service, check_name AS \"check\", status, message, duration_s"
            " FROM check_results WHERE run_id=? AND status != 'pass'"
            " ORDER BY host, service, check_name", (run_id,))]
        return hosts, ops, checks

    def host_results(self, run_id: int) -> list[HostRow]:
        return [HostRow(**dict(r)) for r in self.db.execute(
            "SELECT host, apply_status, changed, error, verify_status, duration_s"
            " FROM host_results WHERE run_id=? ORDER BY host", (run_id,))]

    def checks(self, run_id: int, host: str) -> list[CheckRow]:
        """The check results of one host in one run, by service and check."""
        return [CheckRow(**dict(r)) for r in self.db.execute(
            "SELECT host, service, check_name AS \"check\", status, message, duration_s"
            " FROM check_results WHERE run_id=? AND host=? ORDER BY service, check_name",
            (run_id, host))]

    def verified_hosts(self, environment: str | None = None) -> dict[int, frozenset[str]]:
        """The hosts each succeeded apply run verified: whose checks ran and passed (a host
        on which no check ran was applied, not verified)."""
        sql = ("SELECT h.run_id, h.host FROM host_results h JOIN runs r ON r.id = h.run_id"
               f" WHERE r.result = 'succeeded' AND r.kind IN {_APPLY_IN}"
               " AND h.verify_status = 'pass'")
        args: tuple[str, ...] = ()
        if environment is not None:
            sql, args = sql + " AND r.environment=?", (environment,)
        hosts: dict[int, set[str]] = {}
        for run_id, host in self.db.execute(sql, args):
            hosts.setdefault(run_id, set()).add(host)
        return {k: frozenset(v) for k, v in hosts.items()}

    def unverified_runs(self, environment: str) -> set[int]:
        """The succeeded apply runs of ``environment`` with a host on which no check ran:
        applied there, not verified (no revision of theirs is a verified one)."""
        return {r[0] for r in self.db.execute(
            "SELECT DISTINCT h.run_id FROM host_results h JOIN runs r ON r.id = h.run_id"
            f" WHERE r.environment = ? AND r.result = 'succeeded' AND r.kind IN {_APPLY_IN}"
            " AND h.verify_status IS NULL", (environment,))}

    def latest_rollout(self, environment: str,
                       kinds: Iterable[str] = APPLY_KINDS
                       ) -> RunRow | None:
        """The newest run of ``kinds`` that is not an operator action."""
        kinds = tuple(kinds)
        marks = ",".join("?" * len(kinds))
        row = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE environment = ? AND kind IN ({marks})"
            " AND event = 0 ORDER BY id DESC LIMIT 1", (environment, *kinds)).fetchone()
        return _run_row(row) if row is not None else None

    def last_verified_success(self, environment: str) -> datetime | None:
        """When the newest succeeded run that verified hosts finished."""
        row = self.db.execute(
            "SELECT finished_at FROM runs WHERE environment = ? AND result = 'succeeded'"
            " AND json_extract(stage_s, '$.verify') IS NOT NULL"  # sqlite: json_extract
            " ORDER BY id DESC LIMIT 1", (environment,)).fetchone()
        return parse_time(row[0]) if row else None

    def change_mark(self) -> tuple[Any, ...]:
        """Changes whenever a run starts or finishes, a revision is quarantined or is
        verified on every host of an environment."""
        return tuple(self.db.execute(
            "SELECT MAX(id), MAX(finished_at), (SELECT COUNT(*) FROM quarantine),"
            " (SELECT COUNT(*) FROM verified_revisions) FROM runs").fetchone())

    def max_run_id(self) -> int:
        return int(self.db.execute("SELECT MAX(id) FROM runs").fetchone()[0] or 0)

    def finished_since(self, watermark: int, counted: Iterable[int]
                       ) -> tuple[int | None, int | None, list[FinishedRun]]:
        """For run totals: the lowest unfinished run id above ``watermark`` and the highest
        run id (both read first), then the finished runs above ``watermark`` not in
        ``counted``. A run finishing between the two reads is above the first and so is
        found again by the next call."""
        unfinished, top = self.db.execute(
            "SELECT MIN(CASE WHEN finished_at IS NULL THEN id END), MAX(id) FROM runs"
            " WHERE id > ?", (watermark,)).fetchone()
        skip = sorted(int(i) for i in counted)
        besides = f" AND id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        rows = self.db.execute(
            "SELECT id, environment, kind, result, event, stage_s FROM runs"
            f" WHERE id > ? AND finished_at IS NOT NULL{besides}",
            (watermark, *skip)).fetchall()
        return unfinished, top, [
            FinishedRun(r[0], r[1], r[2], r[3], bool(r[4]), json.loads(r[5] or "{}"))
            for r in rows]

    def prune_history(self, before: datetime,
                      keep: Iterable[tuple[str, int, int]] = ()) -> int:
        """Delete finished runs started before ``before`` (with their hosts, operations and
        checks), except each environment's newest succeeded apply (the rollback target) and
        the runs of ``keep`` (environment, first and last run id: the runs of an incident
        with a post-mortem), and the previews finished before ``before`` (with their
        reports); return how many runs. Retention (``gitops.daemon.retention``)."""
        newest = ("SELECT MAX(id) FROM runs WHERE result='succeeded' AND kind IN"
                  f" {_APPLY_IN} GROUP BY environment")
        spans = list(keep)
        old = ("SELECT id FROM runs WHERE finished_at IS NOT NULL AND started_at < ?"
               f" AND id NOT IN ({newest})"
               + " AND NOT (environment=? AND id BETWEEN ? AND ?)" * len(spans))
        args = (before.isoformat(), *(v for span in spans for v in span))
        with self._tx() as db:
            for table in ("host_results", "op_results", "check_results"):
                db.execute(f"DELETE FROM {table} WHERE run_id IN ({old})", args)
            db.execute("DELETE FROM previews WHERE finished_at IS NOT NULL AND finished_at < ?",
                       (before.isoformat(),))
            return int(db.execute(f"DELETE FROM runs WHERE id IN ({old})", args).rowcount)
