"""Stage 6: the run history and the status record, in SQLite (stdlib ``sqlite3``, WAL).

The only module that speaks SQL. One database in the state folder holds every run (revision,
stage reports, durations), and per environment and per host the status record in Flux's
vocabulary: conditions ``Ready``, ``Reconciling`` and ``Stalled`` (each a status, a reason and a
message) and the last applied, attempted and verified revision; beside them the operator
controls, quarantined revisions, undelivered commit statuses, per-service convergence and
the revisions verified on every host of an environment (what promotion reads).
``reconcile`` and the daemon write it; the CLI, the API, the metrics, the incidents, the
delivery figures and the status page read it through the methods here and get frozen rows
(``gitops.records``: ``StatusRow``, ``RunRow``, ``RunDetail``, ``Controls``...), never SQL rows.

The schema is a numbered list of migrations (``MIGRATIONS``); the versions applied are recorded
in ``schema_migrations``. Opening a store read-write applies the missing ones, each in its own
transaction (a database made before the list existed is version 0 and migrates).
``Store(state_dir, readonly=True)`` is for the readers: it creates nothing, never writes, and
raises ``NoStore`` when the folder or the database is missing, ``StoreOutdated`` when the
database needs a migration that only a writer may apply.

The second backend, ``PostgresStore``, keeps the record in PostgreSQL through psycopg 3
(``database = "postgresql://user@host/db"`` in the settings, its password a ``SecretRef``).
It is the same class with another connection: ``_PgConnection`` is the one place where the
dialects differ (``?`` placeholders become ``%s``, ``AUTOINCREMENT`` an identity column,
``REAL`` a double, ``TEXT`` collated ``"C"`` (sorted as SQLite sorts), ``json_extract`` the
``->`` operator, rows that read by name and by index like ``sqlite3.Row``); the SQL here
keeps to what both share (``ON CONFLICT`` upserts, column lists, ``RETURNING id``, ISO-8601
UTC times and JSON as TEXT). What is SQLite's own is marked
``sqlite:``. Transactions are PostgreSQL's (read committed, each write method one
transaction), readers set ``default_transaction_read_only``, and the migrations (the same
numbered list, the same ``schema_migrations``) run under an advisory lock, so two controllers
starting together do not both migrate. ``Database`` says where the record is (from the
settings: ``open_store(settings)``); everything opens stores through it. Snapshots, locks and
keys stay in the state folder whichever backend holds the record.

Several controllers sharing environments (``gitops.record.lease``) keep their leases here: the
``leases`` table (environment, holder, fencing token, expiry in the database's epoch
seconds, ``_EPOCH``: one clock for every controller) is taken with ``INSERT ... ON CONFLICT
DO UPDATE ... WHERE expires < now`` and renewed only with the holder's token; the
``requests`` table keeps the triggers and retries that reached a controller not holding the
environment until its holder takes them. Both dialects alike.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from gitops.errors import TemporaryError, UsageError
from gitops.private import private_dir, private_file
from gitops.records import (
    APPLY_KINDS,
    ActionItem,
    ApplyReport,
    CheckRow,
    Condition,
    ControllerRequest,
    Controls,
    FinishedRun,
    HostRow,
    Installed,
    InstalledState,
    LatestCheck,
    Lease,
    OperationRow,
    Owner,
    Plan,
    PostmortemNote,
    PreviewReport,
    PreviewRow,
    Quarantined,
    Ref,
    Revision,
    RunDetail,
    RunKind,
    RunResult,
    RunRow,
    ShareRow,
    StatusRow,
    Undelivered,
    VerifiedRevision,
    VerifyReport,
)

if TYPE_CHECKING:
    import psycopg

    from gitops.settings import SecretRef, Settings

__all__ = ["ENVIRONMENT", "MIGRATIONS", "Condition", "Database", "Migration", "NoStore",
           "PostgresStore", "Store", "StoreOutdated", "StoreUnavailable", "database_errors", "now",
           "open_store"]

DATABASE = "gitops.db"

_V1_TABLES = """
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
)
"""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _columns(db: Any, table: str) -> set[str]:
    if isinstance(db, _PgConnection):
        return {r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?", (table,))}
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}  # sqlite: PRAGMA


def _v1(db: Any) -> None:
    """The tables of gitops before numbered migrations (an existing database keeps its own)."""
    for statement in _statements(_V1_TABLES):
        db.execute(statement)
    if "last_verified_revision" not in _columns(db, "status"):
        db.execute("ALTER TABLE status ADD COLUMN last_verified_revision TEXT")


def _v2(db: Any) -> None:
    """``runs.event`` marks operator actions (readers used to guess them from empty fields)."""
    db.execute("ALTER TABLE runs ADD COLUMN event INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE runs SET event = 1 WHERE branch IS NULL AND duration_s = 0"
               " AND stage_s = '{}' AND error IS NULL AND finished_at = started_at")


def _v3(db: Any) -> None:
    """An environment's verified revision: successful runs used to leave it empty although
    their Ready message said "Verified revision"."""
    db.execute(
        "UPDATE status SET last_verified_revision = last_applied_revision"
        " WHERE host = '' AND last_verified_revision IS NULL"
        " AND last_applied_revision IS NOT NULL"
        " AND conditions LIKE '%\"reason\": \"ReconciliationSucceeded\"%'")


def _v4_installed(db: Any) -> None:
    """``installed``: per host, each service the record says it has, with the parameters and
    requirements it was last applied with (secrets blanked) and from which revision: what a
    removal (``gitops.pipeline.prune``) takes off, and what is reported when it cannot."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS installed ("
        " environment TEXT NOT NULL, host TEXT NOT NULL, service TEXT NOT NULL,"
        " revision TEXT NOT NULL, params TEXT NOT NULL, requires TEXT NOT NULL DEFAULT '[]',"
        " state TEXT NOT NULL DEFAULT 'applied', updated_at TEXT NOT NULL,"
        " PRIMARY KEY (environment, host, service))")


_VERIFIED_TABLE = """
CREATE TABLE IF NOT EXISTS verified_revisions (
    environment TEXT NOT NULL,
    sha TEXT NOT NULL,
    branch TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    upstream TEXT,
    PRIMARY KEY (environment, sha)
)"""


def _v6_previews(db: Any) -> None:
    """Previews of branches on disposable hosts (``gitops.daemon.preview``) and their reports."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS previews ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " environment TEXT NOT NULL, provider TEXT NOT NULL, number INTEGER,"
        " branch TEXT NOT NULL, base TEXT NOT NULL, head_sha TEXT,"
        " state TEXT NOT NULL, result TEXT, mode TEXT, summary TEXT NOT NULL DEFAULT '',"
        " lab TEXT, created_at TEXT NOT NULL, finished_at TEXT, report TEXT)")
    db.execute("CREATE INDEX IF NOT EXISTS previews_env ON previews (environment, id)")


_V4_TABLES = """
CREATE TABLE IF NOT EXISTS owners (
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    source TEXT NOT NULL,
    team TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (environment, service, source)
);
CREATE TABLE IF NOT EXISTS postmortem_notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL,
    section TEXT NOT NULL,
    text TEXT NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS postmortem_notes_incident ON postmortem_notes (incident, id);
CREATE TABLE IF NOT EXISTS postmortem_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL,
    text TEXT NOT NULL,
    team TEXT,
    state TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    done_by TEXT,
    done_at TEXT
);
CREATE INDEX IF NOT EXISTS postmortem_actions_incident ON postmortem_actions (incident, id)
"""


def _v7_teams(db: Any) -> None:
    """Owning teams of environments and services; what people write into post-mortems."""
    for statement in _statements(_V4_TABLES):
        db.execute(statement)


def _v8_leases(db: Any) -> None:
    """Which controller holds each environment (``expires`` in the database's epoch seconds,
    ``token`` counts the takeovers: a fencing token), and the requests that reached a
    controller other than the holder (``gitops.record.lease``)."""
    db.execute("CREATE TABLE leases (environment TEXT PRIMARY KEY, holder TEXT NOT NULL,"
               " token INTEGER NOT NULL, acquired_at TEXT NOT NULL, expires REAL NOT NULL)")
    db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " environment TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,"
               " reason TEXT NOT NULL DEFAULT '', force INTEGER NOT NULL DEFAULT 0,"
               " hosts TEXT, created_at TEXT NOT NULL, taken_by TEXT, taken_at TEXT)")
    db.execute("CREATE INDEX requests_open ON requests (environment, id)"
               " WHERE taken_at IS NULL")


def _v9_shares(db: Any) -> None:
    """The shares of batches applied by several controllers' workers (``gitops.daemon.fanout``);
    on PostgreSQL, the job queue that carries them (procrastinate's schema)."""
    db.execute("CREATE TABLE shares (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " environment TEXT NOT NULL, token INTEGER NOT NULL, hosts TEXT NOT NULL,"
               " state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, worker TEXT,"
               " job INTEGER, expires REAL, queued_at REAL NOT NULL, result TEXT, error TEXT,"
               " created_at TEXT NOT NULL)")
    if isinstance(db, _PgConnection):
        from gitops.daemon import fanout  # the one module that knows procrastinate

        db.conn.execute(fanout.queue_schema())


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema; ``apply`` runs inside a transaction."""

    version: int
    description: str
    apply: Callable[[Any], None]
    """Given the connection (``sqlite3.Connection`` or ``_PgConnection``)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, host results, status record, controls, quarantine, deliveries", _v1),
    Migration(2, "runs.event marks operator actions", _v2),
    Migration(3, "environment rows record their verified revision", _v3),
    Migration(4, "installed: the services each host has, for removals", _v4_installed),
    Migration(5, "revisions verified on every host of an environment (promotion)",
              lambda db: db.execute(_VERIFIED_TABLE)),
    Migration(6, "previews of branches on disposable hosts", _v6_previews),
    Migration(7, "owning teams; post-mortem notes and action items", _v7_teams),
    Migration(8, "leases and requests of several controllers", _v8_leases),
    Migration(9, "shares of batches across controllers' workers", _v9_shares),
    Migration(10, "controllers seen running, for the leases' fair shares",
              lambda db: db.execute("CREATE TABLE controllers (name TEXT PRIMARY KEY,"
                                    " expires REAL NOT NULL)")),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

UNCHANGED_SERVICE = "not applied: unchanged since its last apply that verified"
"""The operation name recorded for a service a changed-only apply left out."""

ENVIRONMENT = ""
"""The ``host`` key of an environment's own status row."""

_APPLY_IN = "(" + ", ".join(f"'{kind}'" for kind in sorted(APPLY_KINDS)) + ")"
"""``records.APPLY_KINDS`` as an SQL list, for ``kind IN _APPLY_IN``."""
_RUN_COLUMNS = ("id, environment, kind, actor, reason, sha, branch, author, committed_at,"
                " message, started_at, finished_at, result, error, failed_hosts, duration_s,"
                " changed, stage_s, event")


def now() -> datetime:
    return datetime.now(UTC)


class NoStore(UsageError):
    """A reader found no state folder, or no database in it: nothing was ever recorded."""

    def __init__(self, message: str, *, folder_exists: bool) -> None:
        super().__init__(message)
        self.folder_exists = folder_exists


class StoreOutdated(UsageError):
    """A reader found a database an older gitops made: a writer must migrate it first."""


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _ref(value: str | None) -> Ref | None:
    return Ref.parse(value) if value else None


def _ref_text(value: Ref | Revision | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.ref


def _run_row(row: Any) -> RunRow:
    started = _time(row["started_at"])
    assert started is not None
    return RunRow(
        id=row["id"], environment=row["environment"], kind=row["kind"], actor=row["actor"],
        reason=row["reason"] or "", sha=row["sha"], branch=row["branch"], author=row["author"],
        committed_at=_time(row["committed_at"]), message=row["message"], started_at=started,
        finished_at=_time(row["finished_at"]), result=row["result"], error=row["error"],
        failed_hosts=tuple(json.loads(row["failed_hosts"] or "[]")),
        duration_s=row["duration_s"], changed=row["changed"],
        stage_s=json.loads(row["stage_s"] or "{}"), event=bool(row["event"]),
    )


def _controls(environment: str, row: Any) -> Controls:
    if row is None:
        return Controls(environment)
    return Controls(environment, suspended=bool(row["suspended"]), reason=row["reason"],
                    actor=row["actor"], since=_time(row["since"]), held_sha=row["held_sha"],
                    held_head=row["held_head"])


def suspended_condition(controls: Controls) -> Condition:
    """The derived ``Suspended`` condition: who suspended, when, and why."""
    since = controls.since.isoformat(timespec="seconds") if controls.since else "?"
    return Condition("Suspended", "True", "SuspendedByOperator",
                     f"suspended by {controls.actor or 'unknown'} since {since}: "
                     f"{controls.reason}")


class Store:
    """The SQLite store of one state folder. Cheap to open; safe across processes (WAL).

    ``clock`` gives the times written into the record (injected by tests)."""

    def __init__(self, state_dir: Path, *, readonly: bool = False,
                 clock: Callable[[], datetime] = now) -> None:
        self.path = state_dir / DATABASE
        self.readonly = readonly
        self.clock = clock
        if readonly:
            if not state_dir.is_dir():
                raise NoStore(f"no state folder {state_dir}: nothing recorded there "
                              "(check --state-dir or GITOPS_STATE_DIR)", folder_exists=False)
            if not self.path.is_file():
                raise NoStore(f"no runs recorded yet in {state_dir}", folder_exists=True)
        else:
            private_file(private_dir(state_dir) / DATABASE)
        self.where = str(self.path)
        """What messages name: the database file, or the PostgreSQL URL without password."""
        self.db: Any = self._connect()
        self._ready()

    def _ready(self) -> None:
        """A writer migrates; a reader refuses a database that needs a migration."""
        if not self.readonly:
            self._migrate()
            return
        version = self._version()
        if version < SCHEMA_VERSION:
            self.db.close()
            raise StoreOutdated(
                f"{self.where} has schema version {version}, this gitops reads version "
                f"{SCHEMA_VERSION}: the daemon or the next command that records "
                "(reconcile, verify, suspend, resume) migrates it")

    def identity(self) -> tuple[str, int]:
        """Which database this is, for per-database caches (a file made anew is another)."""
        return str(self.path), self.path.stat().st_ino

    def _connect(self) -> Any:
        if self.readonly:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                 timeout=30, isolation_level=None)
        else:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")  # sqlite: PRAGMA
            db.execute("PRAGMA synchronous=NORMAL")
        db.row_factory = sqlite3.Row
        return db

    def _version(self) -> int:
        found = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table'"  # sqlite
                                " AND name='schema_migrations'").fetchone()
        if found is None:
            return 0
        return int(self.db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def _migrate(self) -> None:
        if self._version() >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                       " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                       " applied_at TEXT NOT NULL)")
        for migration in MIGRATIONS:
            with self._tx() as db:  # another process may have applied it meanwhile
                if self._version() >= migration.version:
                    continue
                migration.apply(db)
                db.execute("INSERT INTO schema_migrations VALUES (?,?,?)",
                           (migration.version, migration.description,
                            self.clock().isoformat()))

    def schema_version(self) -> int:
        """The newest migration applied to this database."""
        return self._version()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    # -- writing runs ----------------------------------------------------------------------

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

    def _event(self, db: Any, environment: str, kind: str, *, actor: str, reason: str,
               result: str = "succeeded", sha: str | None = None) -> int:
        stamp = self._now()
        cur = db.execute(
            "INSERT INTO runs (environment, kind, actor, reason, sha, started_at, finished_at,"
            " duration_s, result, event) VALUES (?,?,?,?,?,?,?,0,?,1) RETURNING id",
            (environment, kind, actor, reason, sha, stamp, stamp, result))
        return int(cur.fetchall()[0][0])

    # -- writing the status record ---------------------------------------------------------

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
                (environment, host, json.dumps(stored), _ref_text(applied),
                 _ref_text(attempted), _ref_text(verified), self._now()),
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

    # -- what each host was last verified with, per service (changed-only applies) -------

    def converged(self, environment: str) -> dict[str, dict[str, str]]:
        """host -> service -> fingerprint of its last apply that verified."""
        out: dict[str, dict[str, str]] = {}
        for r in self.db.execute("SELECT host, service, fingerprint FROM converged"
                                 " WHERE environment=?", (environment,)):
            out.setdefault(r["host"], {})[r["service"]] = r["fingerprint"]
        return out

    def set_converged(self, environment: str, host: str, fingerprints: dict[str, str] | None,
                      revision: Ref | Revision | str = "") -> None:
        """Replace what ``host`` is known to be converged to; None: nothing is known."""
        with self._tx() as db:
            db.execute("DELETE FROM converged WHERE environment=? AND host=?",
                       (environment, host))
            db.executemany("INSERT INTO converged (environment, host, service, fingerprint,"
                           " revision) VALUES (?,?,?,?,?)", [
                (environment, host, service, fp, _ref_text(revision) or "")
                for service, fp in (fingerprints or {}).items()])

    def forget_converged(self, environment: str) -> bool:
        """Nothing is known converged on any host of ``environment`` (a cut apply); whether
        anything was."""
        with self._tx() as db:
            return bool(db.execute("DELETE FROM converged WHERE environment=?",
                                   (environment,)).rowcount)

    # -- what each host has, per service (removals, ``gitops.pipeline.prune``) ---------------------

    def installed(self, environment: str) -> dict[str, dict[str, Installed]]:
        """host -> service -> what the record says the host has."""
        out: dict[str, dict[str, Installed]] = {}
        for r in self.db.execute(
                "SELECT host, service, revision, params, requires, state FROM installed"
                " WHERE environment=? ORDER BY host, service", (environment,)):
            out.setdefault(r["host"], {})[r["service"]] = Installed(
                r["host"], r["service"], r["revision"], json.loads(r["params"]),
                tuple(json.loads(r["requires"])), r["state"])
        return out

    def not_removed(self, environment: str | None = None) -> list[tuple[str, Installed]]:
        """(environment, service) for each service a host keeps that its revision no longer
        declares (left in place, not pruned): what the status page and the metrics report."""
        sql = ("SELECT environment, host, service, revision, params, requires, state"
               " FROM installed WHERE state != 'applied'")
        args: tuple[str, ...] = ()
        if environment is not None:
            sql, args = sql + " AND environment=?", (environment,)
        return [(r["environment"], Installed(r["host"], r["service"], r["revision"], {},
                                             tuple(json.loads(r["requires"])), r["state"]))
                for r in self.db.execute(sql + " ORDER BY environment, host, service", args)]

    def set_installed(self, environment: str, host: str,
                      services: dict[str, tuple[dict[str, Any], tuple[str, ...]]],
                      revision: Ref | Revision | str) -> None:
        """``host`` has each of ``services`` (name -> parameters, secrets already blanked,
        and requirements) as ``revision`` applied it."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO installed (environment, host, service, revision, params, requires,"
                " state, updated_at) VALUES (?,?,?,?,?,?,'applied',?)"
                " ON CONFLICT (environment, host, service) DO UPDATE SET"
                " revision=excluded.revision, params=excluded.params,"
                " requires=excluded.requires, state='applied', updated_at=excluded.updated_at",
                [(environment, host, service, _ref_text(revision) or "",
                  json.dumps(params, sort_keys=True), json.dumps(list(requires)), self._now())
                 for service, (params, requires) in services.items()])

    def mark_installed(self, environment: str, host: str, service: str,
                       state: InstalledState | None) -> None:
        """A service no longer declared on ``host``: still there in ``state`` (left in
        place, not pruned), or None: removed (the row goes)."""
        with self._tx() as db:
            if state is None:
                db.execute("DELETE FROM installed WHERE environment=? AND host=? AND service=?",
                           (environment, host, service))
                db.execute("DELETE FROM converged WHERE environment=? AND host=? AND service=?",
                           (environment, host, service))
            else:
                db.execute("UPDATE installed SET state=?, updated_at=? WHERE environment=?"
                           " AND host=? AND service=?",
                           (state, self._now(), environment, host, service))

    def forget_hosts(self, environment: str, keep: Iterable[str]) -> list[str]:
        """Hosts of ``environment``'s record not in ``keep`` (the inventory) leave its status,
        convergence and installed services; their runs stay in the history. Returns them."""
        wanted = set(keep)
        with self._tx() as db:
            known = {r[0] for table in ("status", "converged", "installed") for r in db.execute(
                f"SELECT DISTINCT host FROM {table} WHERE environment=?", (environment,))}
            gone = sorted(known - wanted - {ENVIRONMENT})
            for table in ("status", "converged", "installed"):
                db.executemany(f"DELETE FROM {table} WHERE environment=? AND host=?",
                               [(environment, host) for host in gone])
        return gone

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

    # -- operator controls, quarantine, undelivered commit statuses --------------------------

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

    def _of_environment(self, table: str, environment: str | None, order: str) -> Any:
        """The rows of ``table`` (of ``environment`` only, when given) ordered by ``order``."""
        where, args = ((" WHERE environment=?", (environment,)) if environment is not None
                       else ("", ()))
        return self.db.execute(f"SELECT * FROM {table}{where} ORDER BY {order}", args)

    def quarantine(self, environment: str, sha: str, reason: str) -> None:
        self.db.execute("INSERT INTO quarantine (environment, sha, reason, since)"
                        " VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                        (environment, sha, reason, self._now()))

    def release_quarantine(self, environment: str, sha: str, *, actor: str,
                           reason: str) -> int | None:
        """Release one quarantined revision (an operator found the failure was not the
        commit's) and record who and why as an ``unquarantine`` event, in one transaction;
        the event's run id, or None when ``sha`` was not quarantined there."""
        with self._tx() as db:
            removed = db.execute("DELETE FROM quarantine WHERE environment=? AND sha=?",
                                 (environment, sha)).rowcount
            if not removed:
                return None
            return self._event(db, environment, "unquarantine", actor=actor, reason=reason,
                               sha=sha)

    def drop_quarantined(self, environment: str, shas: Iterable[str]) -> None:
        """Take ``shas`` out of the quarantine without an event (superseded: a newer revision
        they lead to is verified on every host)."""
        with self._tx() as db:
            db.executemany("DELETE FROM quarantine WHERE environment=? AND sha=?",
                           [(environment, sha) for sha in shas])

    def quarantined(self, environment: str | None = None) -> list[Quarantined]:
        out = []
        for r in self._of_environment("quarantine", environment, "since"):
            since = _time(r["since"])
            assert since is not None
            out.append(Quarantined(r["environment"], r["sha"], r["reason"], since))
        return out

    # -- promotion: revisions verified on every host ----------------------------------------

    def record_verified(self, environment: str, revision: Revision, run_id: int, *,
                        upstream: str | None = None) -> bool:
        """``revision`` is now applied and verified on every host of ``environment``; the
        first time is kept. True when it was not recorded before."""
        cur = self.db.execute(
            "INSERT INTO verified_revisions (environment, sha, branch, committed_at,"
            " verified_at, run_id, upstream) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (environment, revision.sha, revision.branch, revision.committed_at.isoformat(),
             self._now(), run_id, upstream))
        return bool(cur.rowcount)

    def verified_revisions(self, environment: str | None = None) -> list[VerifiedRevision]:
        """Revisions verified on every host, oldest verification first."""
        out = []
        for r in self._of_environment("verified_revisions", environment, "verified_at, run_id"):
            committed, verified = _time(r["committed_at"]), _time(r["verified_at"])
            assert committed is not None and verified is not None
            out.append(VerifiedRevision(r["environment"], r["sha"], r["branch"], committed,
                                        verified, r["run_id"], r["upstream"]))
        return out

    def quarantine_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT environment, COUNT(*) FROM quarantine GROUP BY environment")}

    def keep_undelivered(self, environment: str, receiver: int, sha: str, state: str,
                         description: str) -> None:
        """A commit status every retry failed to deliver: sent again at the next cycle."""
        with self._tx() as db:
            db.execute("DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
                       (environment, receiver, sha))
            db.execute(
                "INSERT INTO undelivered (environment, receiver, sha, state, description,"
                " created_at) VALUES (?,?,?,?,?,?)",
                (environment, receiver, sha, state, description, self._now()))

    def undelivered(self, environment: str) -> list[Undelivered]:
        out = []
        for r in self.db.execute("SELECT * FROM undelivered WHERE environment=? ORDER BY id",
                                 (environment,)):
            created = _time(r["created_at"])
            assert created is not None
            out.append(Undelivered(r["id"], r["environment"], r["receiver"], r["sha"],
                                   r["state"], r["description"], created))
        return out

    def delivered(self, environment: str, receiver: int, sha: str) -> None:
        """A status for ``sha`` reached ``receiver``: an older undelivered one is obsolete."""
        self.db.execute("DELETE FROM undelivered WHERE environment=? AND receiver=? AND sha=?",
                        (environment, receiver, sha))

    # -- reading the status record -------------------------------------------------------

    def environments(self) -> list[str]:
        """Every environment the store knows: from runs, status, controls or quarantine."""
        rows = self.db.execute(
            "SELECT DISTINCT environment FROM runs UNION SELECT environment FROM status"
            " UNION SELECT environment FROM controls UNION SELECT environment FROM quarantine")
        return sorted(r[0] for r in rows)

    def status(self, environment: str | None = None) -> list[StatusRow]:
        """Status objects (environment rows have ``host`` == ""), by environment then host.

        Environment rows carry their controls and, when suspended, a ``Suspended``
        condition; an environment only suspended or held (no run yet) gets a row too."""
        sql = "SELECT * FROM status"
        args: tuple[str, ...] = ()
        if environment is not None:
            sql += " WHERE environment=?"
            args = (environment,)
        controls = self.all_controls()
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
            out.append(StatusRow(
                row["environment"], row["host"], conditions,
                _ref(row["last_applied_revision"]), _ref(row["last_attempted_revision"]),
                _ref(row["last_verified_revision"]), _time(row["updated_at"]),
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

    # -- reading the history ---------------------------------------------------------------

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
        return _time(row[0]) if row else None

    def change_mark(self) -> tuple[Any, ...]:
        """Changes whenever a run starts or finishes, a revision is quarantined or is
        verified on every host of an environment."""
        return tuple(self.db.execute(
            "SELECT MAX(id), MAX(finished_at), (SELECT COUNT(*) FROM quarantine),"
            " (SELECT COUNT(*) FROM verified_revisions) FROM runs").fetchone())

    def page_mark(self) -> tuple[Any, ...]:
        """``change_mark`` and ``postmortem_mark``, and whatever else the status page shows
        that changes without them: a host's status, the controls, the quarantine, the live
        leases' holders, the previews, the services kept, the owners."""
        one = self.db.execute(
            "SELECT (SELECT MAX(updated_at) FROM status), (SELECT COUNT(*) FROM status),"
            " (SELECT MAX(updated_at) FROM installed), (SELECT COUNT(*) FROM installed),"
            " (SELECT MAX(updated_at) FROM owners), (SELECT COUNT(*) FROM owners),"
            " (SELECT MAX(id) FROM previews)").fetchone()
        tables = tuple(tuple(tuple(r) for r in self.db.execute(sql).fetchall()) for sql in (
            "SELECT * FROM controls ORDER BY environment",
            "SELECT environment, sha FROM quarantine ORDER BY environment, sha",
            "SELECT id, state FROM previews WHERE state IN ('queued', 'running')"
            " OR finished_at IS NULL ORDER BY id"))
        holders = tuple((ls.environment, ls.holder) for ls in self.leases() if ls.live)
        return (tuple(self.change_mark()), self.postmortem_mark(), tuple(one), tables, holders)

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

    # -- previews (gitops.daemon.preview) ---------------------------------------------------------

    def start_preview(self, environment: str, *, provider: str, number: int | None,
                      branch: str, base: str, head_sha: str | None) -> int:
        """A preview asked for (``queued``); its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO previews (environment, provider, number, branch, base, head_sha,"
                " state, created_at) VALUES (?,?,?,?,?,?,'queued',?) RETURNING id",
                (environment, provider, number, branch, base, head_sha, self._now()))
            return int(cur.fetchall()[0][0])

    def preview_running(self, preview_id: int, lab: str | None) -> None:
        """The preview started, on lab ``lab`` (None: a dry run); found by it after a crash."""
        self.db.execute("UPDATE previews SET state='running', lab=? WHERE id=?",
                        (lab, preview_id))

    def finish_preview(self, preview_id: int, report: PreviewReport | None, *,
                       state: str = "finished", summary: str | None = None) -> None:
        """The preview ended: its report (already redacted), or why there is none."""
        self.db.execute(
            "UPDATE previews SET state=?, result=?, mode=?, summary=?, head_sha="
            " COALESCE(?, head_sha), finished_at=?, report=? WHERE id=?",
            (state, report.result if report else None, report.mode if report else None,
             summary if summary is not None else (report.summary if report else ""),
             report.head_sha if report else None, self._now(),
             report.model_dump_json() if report else None, preview_id))

    def interrupt_previews(self) -> list[PreviewRow]:
        """Mark the previews a crash cut short (queued or running) interrupted; return them
        as they were (their labs are to be taken down)."""
        cut = self.previews(unfinished=True)
        for row in cut:
            self.finish_preview(row.id, None, state="interrupted",
                                summary="interrupted: the daemon stopped before it ended")
        return cut

    def previews(self, environment: str | None = None, *, limit: int = 50,
                 unfinished: bool = False) -> list[PreviewRow]:
        """Previews, newest first, without their reports (``preview(id)`` has it)."""
        where, args = [], []
        if environment is not None:
            where.append("environment = ?")
            args.append(environment)
        if unfinished:
            where.append("state IN ('queued', 'running')")
        sql = ("SELECT * FROM previews" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [_preview_row(r, report=False) for r in self.db.execute(sql, (*args, limit))]

    def previewed_since(self, since: datetime) -> set[tuple[str, str, int]]:
        """(environment, provider, number) of the pull requests with a preview not finished
        (queued or running) or asked for or finished since ``since``: their refs stay in the
        mirror (``gitops.daemon.retention.preview_refs``)."""
        rows = self.db.execute(
            "SELECT DISTINCT environment, provider, number FROM previews WHERE number IS NOT"
            " NULL AND (state IN ('queued', 'running') OR created_at >= ? OR finished_at >= ?)",
            (since.isoformat(), since.isoformat()))
        return {(r["environment"], r["provider"], int(r["number"])) for r in rows}

    def preview(self, preview_id: int) -> PreviewRow | None:
        row = self.db.execute("SELECT * FROM previews WHERE id = ?", (preview_id,)).fetchone()
        return _preview_row(row, report=True) if row is not None else None



    # -- owning teams ----------------------------------------------------------------------

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

    # -- post-mortems ------------------------------------------------------------------------

    def postmortem_mark(self) -> tuple[Any, ...]:
        """Changes whenever someone writes into a post-mortem: a note, an action item, an
        item done or open again, given to a team."""
        notes = self.db.execute("SELECT COUNT(*), MAX(id) FROM postmortem_notes").fetchone()
        actions = self.db.execute("SELECT id, state, team FROM postmortem_actions"
                                  " ORDER BY id").fetchall()
        return (*notes, *(tuple(a) for a in actions))

    def add_note(self, incident: str, section: str, text: str, *, actor: str) -> PostmortemNote:
        """Record one entry of a post-mortem's ``section``, with who and when."""
        stamp = self._now()
        cur = self.db.execute(
            "INSERT INTO postmortem_notes (incident, section, text, actor, at)"
            " VALUES (?,?,?,?,?) RETURNING id", (incident, section, text, actor, stamp))
        return PostmortemNote(int(cur.fetchall()[0][0]), incident, section, text, actor,
                              datetime.fromisoformat(stamp))

    def notes(self, incident: str | None = None) -> list[PostmortemNote]:
        """Post-mortem entries (of ``incident``, or all), oldest first."""
        sql = "SELECT * FROM postmortem_notes"
        args: tuple[str, ...] = ()
        if incident is not None:
            sql, args = sql + " WHERE incident=?", (incident,)
        return [PostmortemNote(r["id"], r["incident"], r["section"], r["text"], r["actor"],
                               datetime.fromisoformat(r["at"]))
                for r in self.db.execute(sql + " ORDER BY id", args).fetchall()]

    def add_action(self, incident: str, text: str, team: str | None, *,
                   actor: str) -> ActionItem:
        """A new open action item of ``incident``'s post-mortem."""
        stamp = self._now()
        cur = self.db.execute(
            "INSERT INTO postmortem_actions (incident, text, team, state, created_by,"
            " created_at) VALUES (?,?,?,'open',?,?) RETURNING id",
            (incident, text, team, actor, stamp))
        return ActionItem(int(cur.fetchall()[0][0]), incident, text, team, "open", actor,
                          datetime.fromisoformat(stamp), None, None)

    def update_action(self, action_id: int, *, actor: str, done: bool | None = None,
                      team: str | None = None) -> ActionItem | None:
        """Mark action ``action_id`` done (or open again) and/or give it an owning team;
        None when there is no such action."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM postmortem_actions WHERE id=?",
                          (action_id,)).fetchone() is None:
                return None
            if team is not None:
                db.execute("UPDATE postmortem_actions SET team=? WHERE id=?", (team, action_id))
            if done is True:
                db.execute("UPDATE postmortem_actions SET state='done', done_by=?, done_at=?"
                           " WHERE id=?", (actor, self._now(), action_id))
            elif done is False:
                db.execute("UPDATE postmortem_actions SET state='open', done_by=NULL,"
                           " done_at=NULL WHERE id=?", (action_id,))
        return next(a for a in self.actions() if a.id == action_id)

    def actions(self, incident: str | None = None) -> list[ActionItem]:
        """Action items (of ``incident``, or all), oldest first."""
        sql = "SELECT * FROM postmortem_actions"
        args: tuple[str, ...] = ()
        if incident is not None:
            sql, args = sql + " WHERE incident=?", (incident,)
        return [ActionItem(r["id"], r["incident"], r["text"], r["team"], r["state"],
                           r["created_by"], datetime.fromisoformat(r["created_at"]),
                           r["done_by"], _time(r["done_at"]))
                for r in self.db.execute(sql + " ORDER BY id", args).fetchall()]
    # -- leases and requests of several controllers (``gitops.record.lease``) ----------------------

    _EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"  # sqlite: the database's clock
    """The database's clock in epoch seconds: every controller reads the same one."""

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

    # -- shares of a batch across controllers' workers (``gitops.daemon.fanout``) -----------------

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
        if not isinstance(self.db, _PgConnection):
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


def _preview_row(row: Any, *, report: bool) -> PreviewRow:
    created = _time(row["created_at"])
    assert created is not None
    return PreviewRow(
        id=row["id"], environment=row["environment"], provider=row["provider"],
        number=row["number"], branch=row["branch"], base=row["base"],
        head_sha=row["head_sha"], state=row["state"], result=row["result"], mode=row["mode"],
        summary=row["summary"] or "", lab=row["lab"], created_at=created,
        finished_at=_time(row["finished_at"]),
        report=PreviewReport.model_validate_json(row["report"])
        if report and row["report"] else None)


# -- PostgreSQL (psycopg 3) ---------------------------------------------------------------

_MIGRATION_LOCK = 0x6769746F7073  # "gitops": the advisory lock key of migrations



class StoreUnavailable(TemporaryError):
    """The PostgreSQL server refused or could not be reached (named without the password)."""


def redacted(url: str) -> str:
    """``postgresql://user@host:port/db`` of ``url``: never a password, never a query."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    socket = next(iter(parse_qs(parts.query).get("host", [])), "")
    if parts.hostname is None and socket.startswith("/"):
        return f"{parts.scheme}://{user}{parts.path} (socket in {socket})"
    return f"{parts.scheme}://{user}{parts.hostname or 'localhost'}{port}{parts.path}"


class _PgRow(tuple[Any, ...]):
    """A row read by index and by column name, like ``sqlite3.Row`` (``dict(row)`` works)."""

    _names: tuple[str, ...]

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _pg_rows(cursor: Any) -> Callable[[Sequence[Any]], _PgRow]:
    names = tuple(c.name for c in cursor.description or ())

    def make(values: Sequence[Any]) -> _PgRow:
        row = _PgRow(values)
        row._names = names
        return row
    return make


_LIBPQ_PREFIX = re.compile(r"^(connection failed: )?(connection to server .*? failed: )?"
                           r"(FATAL: +)?")
"""What libpq puts before its reason: the message names the database itself."""
_JSON_EXTRACT = re.compile(r"json_extract\((\w+), '\$\.(\w+)'\)")


def _pg_sql(sql: str) -> str:
    """The one translation of this module's SQL to PostgreSQL's."""
    if sql.lstrip().upper().startswith(("CREATE", "ALTER")):
        sql = (sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                           "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
               .replace(" REAL", " DOUBLE PRECISION"))
        sql = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)  # ORDER BY as SQLite's: code points
    sql = _JSON_EXTRACT.sub(r"(\1::json -> '\2')", sql)
    return sql.replace("%", "%%").replace("?", "%s")


class _PgConnection:
    """A psycopg connection (autocommit, like the SQLite one) that takes this module's SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pg_sql(sql), tuple(params))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = list(params)
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)

    def close(self) -> None:
        self.conn.close()


class PostgresStore(Store):
    """The store in a PostgreSQL database: the same methods, rows and migrations.

    ``url`` is ``postgresql://user@host[:port]/database`` (no password: it comes apart, from
    a ``SecretRef``). Messages name ``redacted(url)``, never the password."""

    def __init__(self, url: str, *, password: str | None = None, readonly: bool = False,
                 clock: Callable[[], datetime] = now, timeout: float = 10) -> None:
        self.url = url
        self.timeout = timeout
        """Seconds to connect, and before unacknowledged data gives the connection up."""
        self.where = redacted(url)
        self.readonly = readonly
        self.clock = clock
        self._password = password
        self.db = self._connect()
        try:
            if readonly and self._version() == 0:
                raise NoStore(f"no runs recorded yet in {self.where}", folder_exists=True)
            self._ready()
        except BaseException:
            self.db.close()
            raise

    def _connect(self) -> _PgConnection:
        import psycopg

        try:
            conn = psycopg.connect(self.url, password=self._password, autocommit=True,
                                   connect_timeout=max(2, round(self.timeout)),
                                   tcp_user_timeout=int(self.timeout * 1000),
                                   application_name="gitops",
                                   row_factory=_pg_rows)
        except psycopg.Error as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = "; ".join(_LIBPQ_PREFIX.sub("", line) for line in lines)
            reason = reason or type(exc).__name__
            if self._password:
                reason = reason.replace(self._password, "***")
            raise StoreUnavailable(f"cannot open the database {self.where}: {reason}") from None
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return _PgConnection(conn)

    def identity(self) -> tuple[str, int]:
        row = self.db.execute("SELECT oid FROM pg_database"  # a database made anew: a new oid
                              " WHERE datname = current_database()").fetchone()
        return self.where, int(row[0])

    def _version(self) -> int:
        if self.db.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            return 0
        return int(self.db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def _migrate(self) -> None:
        if self._version() >= SCHEMA_VERSION:
            return
        with self._advisory(_MIGRATION_LOCK):  # another controller may be migrating
            super()._migrate()  # each migration checks the version again in its transaction

    _EPOCH = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

    @contextmanager
    def _advisory(self, key: int) -> Iterator[None]:
        """A session advisory lock on ``key``, waited for, released on leaving."""
        self.db.execute("SELECT pg_advisory_lock(?)", (key,))
        try:
            yield
        finally:
            self.db.execute("SELECT pg_advisory_unlock(?)", (key,))

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self.db.conn.transaction():
            yield self.db


@dataclass(frozen=True)
class Database:
    """Where the record is: SQLite in ``state_dir`` (the default) or the PostgreSQL ``url``
    with its ``password`` (a ``SecretRef``, revealed only when a store is opened)."""

    state_dir: Path
    url: str | None = None
    password: SecretRef | None = None

    @classmethod
    def of(cls, settings: Settings) -> Database:
        return cls(settings.state_dir, settings.database, settings.database_password)

    @property
    def where(self) -> str:
        return redacted(self.url) if self.url else str(self.state_dir / DATABASE)

    def open(self, *, readonly: bool = False, clock: Callable[[], datetime] = now,
             timeout: float = 10) -> Store:
        """A store; ``timeout``: PostgreSQL's connect and unacknowledged-data timeout."""
        if self.url is None:
            return Store(self.state_dir, readonly=readonly, clock=clock)
        password = self.password.reveal() if self.password is not None else None
        return PostgresStore(self.url, password=password, readonly=readonly, clock=clock,
                             timeout=timeout)


def database_errors() -> tuple[type[Exception], ...]:
    """The errors either database may raise mid-command (the CLI reports them in one line;
    their messages are the server's, which never holds the password). psycopg's only once
    something imported it: a command on SQLite does not pay for its import."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, psycopg.Error) if psycopg is not None else (sqlite3.Error,)


def open_store(settings: Settings, *, readonly: bool = False) -> Store:
    """The store the settings name (``database``, else ``<state_dir>/gitops.db``)."""
    return Database.of(settings).open(readonly=readonly)
