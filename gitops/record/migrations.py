"""The record's schema as a numbered list of migrations (``MIGRATIONS``), the same for SQLite
and PostgreSQL; ``Store`` applies the missing ones and records them in ``schema_migrations``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitops.record.approvals import approvals_schema
from gitops.record.dialect import PgConnection
from gitops.record.people import people_schema
from gitops.record.queue import queue_schema

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]

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
    if isinstance(db, PgConnection):
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
    if isinstance(db, PgConnection):
        db.conn.execute(queue_schema())


def _v11_notifier_deliveries(db: Any) -> None:
    """Each notification's fate per notifier (``gitops.record.notifiers``): ``status`` is
    delivered, refused (4xx) or failed (no answer, 5xx); ``reason`` scrubbed of secrets."""
    db.execute("CREATE TABLE notifier_deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " notifier TEXT NOT NULL, environment TEXT NOT NULL DEFAULT '',"
               " event TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
               " sent_at TEXT NOT NULL)")
    db.execute("CREATE INDEX notifier_deliveries_notifier ON notifier_deliveries"
               " (notifier, id)")


def _v14_action_team_by(db: Any) -> None:
    """Who gave an action item its owning team, and when (``team_by``, ``team_at``)."""
    db.execute("ALTER TABLE postmortem_actions ADD COLUMN team_by TEXT")
    db.execute("ALTER TABLE postmortem_actions ADD COLUMN team_at TEXT")


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema; ``apply`` runs inside a transaction."""

    version: int
    description: str
    apply: Callable[[Any], None]
    """Given the connection (``sqlite3.Connection`` or ``PgConnection``)."""


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
    Migration(11, "notifier deliveries: what each notifier was sent and what it answered",
              _v11_notifier_deliveries),
    Migration(12, "API tokens (digests) and the append-only audit trail", people_schema),
    Migration(13, "approvals: revisions waiting for a person's sign-off, and who gave it",
              approvals_schema),
    Migration(14, "who gave an action item its owning team, and when", _v14_action_team_by),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
