"""Writing runs: a run started, its revision, its hosts' operations and checks batch by batch,
its end; runs a killed process left unfinished; operator actions as events in the history.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gitops.record.base import StoreBase
from gitops.records import ApplyReport, Plan, Revision, RunKind, RunResult, VerifyReport

__all__ = ["UNCHANGED_SERVICE", "RunsMixin"]

UNCHANGED_SERVICE = "not applied: unchanged since its last apply that verified"
"""The operation name recorded for a service a changed-only apply left out."""


class RunsMixin(StoreBase):
    """Writes the ``runs`` table and each run's host, operation and check results."""

    def start_run(
        self,
        environment: str,
        kind: RunKind,
        revision: Revision | None,
        *,
        actor: str,
        reason: str = "",
    ) -> int:
        rev = revision
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (environment, kind, actor, reason, sha, branch, author,"
                " committed_at, message, started_at) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    environment, kind, actor, reason,
                    rev.sha if rev else None, rev.branch if rev else None,
                    rev.author if rev else None,
                    rev.committed_at.isoformat() if rev else None,
                    rev.message if rev else None, self._now(),
                ),
            )
            return int(cur.fetchall()[0][0])  # all: SQLite finishes the statement

    def set_revision(self, run_id: int, revision: Revision) -> None:
        self.db.execute(
            "UPDATE runs SET sha=?, branch=?, author=?, committed_at=?, message=? WHERE id=?",
            (revision.sha, revision.branch, revision.author, revision.committed_at.isoformat(),
             revision.message, run_id),
        )

    def finish_run(
        self,
        run_id: int,
        result: RunResult,
        *,
        plan: Plan | None = None,
        apply: ApplyReport | None = None,
        verify: VerifyReport | None = None,
        error: str | None = None,
        stage_s: dict[str, float] | None = None,
    ) -> None:
        failed: set[str] = set()
        if apply is not None:
            failed |= set(apply.failed_hosts)
        if verify is not None:
            failed |= set(verify.failed_hosts)
        with self._tx() as db:
            started = db.execute("SELECT started_at FROM runs WHERE id=?", (run_id,)).fetchone()
            finished = self.clock()
            duration = (finished - datetime.fromisoformat(started[0])).total_seconds()
            db.execute(
                "UPDATE runs SET finished_at=?, duration_s=?, result=?, error=?, changed=?,"
                " failed_hosts=?, stage_s=?, plan=? WHERE id=?",
                (
                    finished.isoformat(), duration, result, error,
                    apply.changed if apply else 0, json.dumps(sorted(failed)),
                    json.dumps(stage_s or {}),
                    plan.model_dump_json() if plan is not None else None, run_id,
                ),
            )
            self._record_hosts(db, run_id, apply, verify)

    def record_batch(self, run_id: int, apply: ApplyReport | None,
                     verify: VerifyReport | None) -> None:
        """Record one batch's hosts (operations, checks) while the run goes on, so the status
        page and metrics follow a rollout batch by batch; ``finish_run`` rewrites them."""
        with self._tx() as db:
            self._record_hosts(db, run_id, apply, verify)

    @staticmethod
    def _record_hosts(db: Any, run_id: int, apply: ApplyReport | None,
                      verify: VerifyReport | None) -> None:
        checked = ({r.host for r in verify.results} | set(verify.host_errors)
                   if verify is not None else set())
        names = checked | ({h.host for h in apply.hosts} if apply is not None else set())
        for table in ("host_results", "op_results", "check_results"):
            db.executemany(f"DELETE FROM {table} WHERE run_id=? AND host=?",
                           [(run_id, host) for host in names])
        hosts: dict[str, dict[str, Any]] = {}
        if apply is not None:
            for h in apply.hosts:
                hosts[h.host] = {"apply_status": h.status, "changed": h.changed,
                                 "error": h.error, "duration_s": h.duration_s}
                db.executemany(
                    "INSERT INTO op_results (run_id, host, seq, service, name, status, stderr)"
                    " VALUES (?,?,?,?,?,?,?)",
                    [(run_id, h.host, i, op.service, op.name, op.status, op.stderr)
                     for i, op in enumerate(h.ops)]
                    + [(run_id, h.host, len(h.ops) + i, service, UNCHANGED_SERVICE,
                        "skipped", "") for i, service in enumerate(h.unchanged_services)],
                )
        if verify is not None:
            db.executemany(
                "INSERT INTO check_results (run_id, host, service, check_name, status,"
                " message, duration_s) VALUES (?,?,?,?,?,?,?)",
                [(run_id, r.host, r.service, r.check, r.status, r.message, r.duration_s)
                 for r in verify.results],
            )
            for host in checked:
                entry = hosts.setdefault(host, {})
                entry["verify_status"] = "fail" if host in verify.failed_hosts else "pass"
                if host in verify.host_errors and not entry.get("error"):
                    entry["error"] = verify.host_errors[host]
        db.executemany(
            "INSERT INTO host_results (run_id, host, apply_status, changed, error,"
            " verify_status, duration_s) VALUES (?,?,?,?,?,?,?)",
            [(run_id, host, v.get("apply_status"), v.get("changed", 0), v.get("error"),
              v.get("verify_status"), v.get("duration_s")) for host, v in hosts.items()],
        )

    def recover_unfinished(self, environment: str) -> list[int]:
        """Mark runs left unfinished by a killed process as interrupted; return their ids.

        Call only while holding the environment's lock (no run of it can be in progress)."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM runs WHERE finished_at IS NULL AND environment=?",
                (environment,))]
            db.execute(
                "UPDATE runs SET finished_at=?, result='interrupted',"
                " error=COALESCE(error, 'the reconciler stopped during this run')"
                " WHERE finished_at IS NULL AND environment=?", (self._now(), environment))
        return ids

    def record_event(self, environment: str, kind: str, *, actor: str, reason: str,
                     result: str = "succeeded", sha: str | None = None) -> int:
        """An operator action (suspend, resume, rollback, retry) in the run history."""
        return self._event(self.db, environment, kind, actor=actor, reason=reason,
                           result=result, sha=sha)
