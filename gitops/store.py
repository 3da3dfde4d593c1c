"""Stage 6: the run history and the status record, in SQLite (stdlib ``sqlite3``, WAL).

One database in the state folder holds every run (revision, stage reports, durations) and,
per environment and per host, the status record in Flux's vocabulary: conditions ``Ready``,
``Reconciling`` and ``Stalled`` (each a status, a reason and a message), the last applied and
the last attempted revision. ``reconcile`` writes it on every path; the CLI (and later the API,
metrics and page) only read it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gitops.private import private_dir, private_file
from gitops.records import ApplyReport, Plan, Revision, RunKind, RunResult, VerifyReport

__all__ = ["Condition", "Store", "now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    sha TEXT, branch TEXT, author TEXT, committed_at TEXT, message TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_s REAL,
    result TEXT,
    error TEXT,
    changed INTEGER NOT NULL DEFAULT 0,
    failed_hosts TEXT NOT NULL DEFAULT '[]',
    stage_s TEXT NOT NULL DEFAULT '{}',
    plan TEXT
);
CREATE INDEX IF NOT EXISTS runs_env ON runs (environment, id);
CREATE TABLE IF NOT EXISTS host_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    apply_status TEXT,
    changed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    verify_status TEXT,
    duration_s REAL,
    PRIMARY KEY (run_id, host)
);
CREATE TABLE IF NOT EXISTS op_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    seq INTEGER NOT NULL,
    service TEXT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    stderr TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS op_results_run ON op_results (run_id, host);
CREATE TABLE IF NOT EXISTS check_results (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    check_name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    duration_s REAL
);
CREATE INDEX IF NOT EXISTS check_results_run ON check_results (run_id, host);
CREATE INDEX IF NOT EXISTS host_results_host ON host_results (host, run_id);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS controls (
    environment TEXT PRIMARY KEY,
    suspended INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT '',
    since TEXT,
    held_sha TEXT,
    held_head TEXT
);
CREATE TABLE IF NOT EXISTS quarantine (
    environment TEXT NOT NULL,
    sha TEXT NOT NULL,
    reason TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (environment, sha)
);
CREATE TABLE IF NOT EXISTS undelivered (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT NOT NULL,
    receiver INTEGER NOT NULL,
    sha TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS converged (
    environment TEXT NOT NULL,
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    revision TEXT NOT NULL,
    PRIMARY KEY (environment, host, service)
);
CREATE TABLE IF NOT EXISTS status (
    environment TEXT NOT NULL,
    host TEXT NOT NULL,
    conditions TEXT NOT NULL,
    last_applied_revision TEXT,
    last_attempted_revision TEXT,
    last_verified_revision TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (environment, host)
);
"""

UNCHANGED_SERVICE = "not applied: unchanged since its last apply that verified"
"""The operation name recorded for a service a changed-only apply left out."""

ENVIRONMENT = ""
"""The ``host`` key of an environment's own status row."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Condition:
    """A Flux-style condition: ``type`` is Ready, Reconciling or Stalled."""

    type: Literal["Ready", "Reconciling", "Stalled"]
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "status": self.status, "reason": self.reason,
                "message": self.message}


class Store:
    """The SQLite store of one state folder. Cheap to open; safe across processes (WAL)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = private_file(private_dir(state_dir) / "gitops.db")
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(status)")}
        if "last_verified_revision" not in columns:
            self.db.execute("ALTER TABLE status ADD COLUMN last_verified_revision TEXT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------

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
                " committed_at, message, started_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    environment, kind, actor, reason,
                    rev.sha if rev else None, rev.branch if rev else None,
                    rev.author if rev else None,
                    rev.committed_at.isoformat() if rev else None,
                    rev.message if rev else None, now().isoformat(),
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

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
            finished = now()
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
    def _record_hosts(db: sqlite3.Connection, run_id: int, apply: ApplyReport | None,
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

    def set_status(
        self,
        environment: str,
        host: str,
        conditions: list[Condition],
        *,
        applied: str | None = None,
        attempted: str | None = None,
        verified: str | None = None,
    ) -> None:
        """Replace the conditions of one object; revisions given as None are kept."""
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
                (environment, host, json.dumps([c.as_dict() for c in conditions]), applied,
                 attempted, verified, now().isoformat()),
            )

    # -- what each host was last verified with, per service (changed-only applies) -------

    def converged(self, environment: str) -> dict[str, dict[str, str]]:
        """host -> service -> fingerprint of its last apply that verified."""
        out: dict[str, dict[str, str]] = {}
        for r in self.db.execute("SELECT host, service, fingerprint FROM converged"
                                 " WHERE environment=?", (environment,)):
            out.setdefault(r["host"], {})[r["service"]] = r["fingerprint"]
        return out

    def set_converged(self, environment: str, host: str, fingerprints: dict[str, str] | None,
                      revision: str = "") -> None:
        """Replace what ``host`` is known to be converged to; None: nothing is known."""
        with self._tx() as db:
            db.execute("DELETE FROM converged WHERE environment=? AND host=?",
                       (environment, host))
            db.executemany("INSERT INTO converged VALUES (?,?,?,?,?)", [
                (environment, host, service, fp, revision)
                for service, fp in (fingerprints or {}).items()])

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
                " WHERE finished_at IS NULL AND environment=?", (now().isoformat(), environment))
        return ids

    # -- operator controls ---------------------------------------------------------------

    def controls(self, environment: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM controls WHERE environment=?",
                              (environment,)).fetchone()
        if row is None:
            return {"environment": environment, "suspended": 0, "reason": "", "actor": "",
                    "since": None, "held_sha": None, "held_head": None}
        return dict(row)

    def set_controls(self, environment: str, **values: Any) -> None:
        current = self.controls(environment)
        current.update(values)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO controls (environment, suspended, reason, actor, since,"
                " held_sha, held_head) VALUES (:environment, :suspended, :reason, :actor,"
                " :since, :held_sha, :held_head)", current)

    def quarantine(self, environment: str, sha: str, reason: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO quarantine VALUES (?,?,?,?)",
                        (environment, sha, reason, now().isoformat()))

    def quarantined(self, environment: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM quarantine", ()
        args_: tuple[str, ...] = args
        if environment is not None:
            sql, args_ = sql + " WHERE environment=?", (environment,)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY since", args_)]

    def keep_undelivered(self, environment: str, receiver: int, sha: str, state: str,
                         description: str) -> None:
        """A commit status every retry failed to deliver: sent again at the next cycle."""
        self.db.execute(
            "DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
            (environment, receiver, sha))
        self.db.execute(
            "INSERT INTO undelivered (environment, receiver, sha, state, description,"
            " created_at) VALUES (?,?,?,?,?,?)",
            (environment, receiver, sha, state, description, now().isoformat()))

    def undelivered(self, environment: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM undelivered WHERE environment=? ORDER BY id", (environment,))]

    def delivered(self, environment: str, receiver: int, sha: str) -> None:
        """A status for ``sha`` reached ``receiver``: an older undelivered one is obsolete."""
        self.db.execute("DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
                        (environment, receiver, sha))

    def record_event(self, environment: str, kind: str, *, actor: str, reason: str,
                     result: str = "succeeded", sha: str | None = None) -> int:
        """An operator action (suspend, resume, rollback, retry) in the run history."""
        stamp = now().isoformat()
        cur = self.db.execute(
            "INSERT INTO runs (environment, kind, actor, reason, sha, started_at, finished_at,"
            " duration_s, result) VALUES (?,?,?,?,?,?,?,0,?)",
            (environment, kind, actor, reason, sha, stamp, stamp, result))
        assert cur.lastrowid is not None
        return cur.lastrowid

    # -- reading -------------------------------------------------------------------------

    def status(self, environment: str | None = None) -> list[dict[str, Any]]:
        """Status objects (environment rows have ``host`` == ""), by environment then host."""
        sql = "SELECT * FROM status"
        args: tuple[str, ...] = ()
        if environment is not None:
            sql += " WHERE environment=?"
            args = (environment,)
        rows = self.db.execute(sql + " ORDER BY environment, host", args).fetchall()
        return [
            {**dict(row), "conditions": json.loads(row["conditions"])} for row in rows
        ]

    def environment_status(self, environment: str) -> dict[str, Any] | None:
        """The environment's own status object (conditions, revisions), if any run wrote it."""
        return next((r for r in self.status(environment) if r["host"] == ENVIRONMENT), None)

    def history(self, environment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if environment is not None:
            sql += " WHERE environment=?"
            args = (environment,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._run_row(row) for row in rows]

    def run(self, run_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        run = self._run_row(row)
        run["plan"] = json.loads(row["plan"]) if row["plan"] else None
        run["hosts"] = [dict(r) for r in self.db.execute(
            "SELECT host, apply_status, changed, error, verify_status, duration_s"
            " FROM host_results WHERE run_id=? ORDER BY host", (run_id,))]
        run["operations"] = [dict(r) for r in self.db.execute(
            "SELECT host, service, name, status, stderr FROM op_results WHERE run_id=?"
            " ORDER BY host, seq", (run_id,))]
        run["checks"] = [dict(r) for r in self.db.execute(
            "SELECT host, service, check_name AS 'check', status, message, duration_s"
            " FROM check_results WHERE run_id=? ORDER BY host, service, check_name", (run_id,))]
        return run

    @staticmethod
    def _run_row(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run.pop("plan", None)
        run["failed_hosts"] = json.loads(run["failed_hosts"])
        run["stage_s"] = json.loads(run["stage_s"])
        return run
