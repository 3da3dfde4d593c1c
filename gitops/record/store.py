"""Stage 6: the run history and the status record, in SQLite (stdlib ``sqlite3``, WAL) or
PostgreSQL: ``Store`` opened on either (``Database``, ``open_store``), composed of one mixin
per concern of the record.

``gitops.record`` is the only package that speaks SQL. One database in the state folder holds
every run (revision, stage reports, durations), and per environment and per host the status
record in Flux's vocabulary: conditions ``Ready``, ``Reconciling`` and ``Stalled`` (each a
status, a reason and a message) and the last applied, attempted and verified revision; beside
them the operator controls, quarantined revisions, undelivered commit statuses, per-service
convergence and the revisions verified on every host of an environment (what promotion
reads).
``reconcile`` and the daemon write it; the CLI, the API, the metrics, the incidents, the
delivery figures and the status page read it through the methods here and get frozen rows
(``gitops.records``: ``StatusRow``, ``RunRow``, ``RunDetail``, ``Controls``...), never SQL rows.
The methods live by concern in the modules beside this one, each a mixin of ``Store``:
``runs`` (writing runs), ``history`` (reading them; retention), ``status``, ``controls``,
``hosts`` (convergence, installed services), ``revisions`` (quarantine, promotion),
``commit_statuses``, ``previews``, ``owners``, ``postmortems``, ``controllers`` (leases,
requests), ``shares``, ``people`` (tokens, the audit trail) and ``approvals``, on
``base.StoreBase``; the schema is ``migrations``, the task
queue's ``queue``, and what PostgreSQL does differently ``dialect``.

The schema is a numbered list of migrations (``MIGRATIONS``); the versions applied are recorded
in ``schema_migrations``. Opening a store read-write applies the missing ones, each in its own
transaction (a database made before the list existed is version 0 and migrates).
``Store(state_dir, readonly=True)`` is for the readers: it creates nothing, never writes, and
raises ``NoStore`` when the folder or the database is missing, ``StoreOutdated`` when the
database needs a migration that only a writer may apply.

The second backend, ``PostgresStore``, keeps the record in PostgreSQL through psycopg 3
(``database = "postgresql://user@host/db"`` in the settings, its password a ``SecretRef``).
It is the same class with another connection: ``dialect.PgConnection`` is the one place where
the dialects differ (``?`` placeholders become ``%s``, ``AUTOINCREMENT`` an identity column,
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

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitops.errors import TemporaryError, UsageError
from gitops.private import private_dir, private_file
from gitops.record.approvals import ApprovalsMixin
from gitops.record.base import ENVIRONMENT, now
from gitops.record.commit_statuses import CommitStatusesMixin
from gitops.record.controllers import ControllersMixin
from gitops.record.dialect import LIBPQ_PREFIX, PgConnection, pg_rows, redacted
from gitops.record.history import HistoryMixin
from gitops.record.hosts import HostsMixin
from gitops.record.migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from gitops.record.owners import OwnersMixin
from gitops.record.people import PeopleMixin
from gitops.record.postmortems import PostmortemsMixin
from gitops.record.previews import PreviewsMixin
from gitops.record.revisions import RevisionsMixin
from gitops.record.runs import UNCHANGED_SERVICE, RunsMixin
from gitops.record.shares import SharesMixin
from gitops.record.status import StatusMixin, suspended_condition
from gitops.records import Condition

if TYPE_CHECKING:
    from gitops.settings import SecretRef, Settings

__all__ = ["DATABASE", "ENVIRONMENT", "MIGRATIONS", "SCHEMA_VERSION", "UNCHANGED_SERVICE",
           "Condition", "Database", "Migration", "NoStore", "PostgresStore", "Store",
           "StoreOutdated", "StoreUnavailable", "database_errors", "now", "open_store",
           "redacted", "suspended_condition"]

DATABASE = "gitops.db"


class NoStore(UsageError):
    """A reader found no state folder, or no database in it: nothing was ever recorded."""

    def __init__(self, message: str, *, folder_exists: bool) -> None:
        super().__init__(message)
        self.folder_exists = folder_exists


class StoreOutdated(UsageError):
    """A reader found a database an older gitops made: a writer must migrate it first."""


class StoreUnavailable(TemporaryError):
    """The PostgreSQL server refused or could not be reached (named without the password)."""


class Store(RunsMixin, StatusMixin, HostsMixin, HistoryMixin, RevisionsMixin,
            CommitStatusesMixin, PreviewsMixin, OwnersMixin, PostmortemsMixin, ControllersMixin,
            SharesMixin, PeopleMixin, ApprovalsMixin):
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
        if version == 0 and self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table'").fetchone() is None:  # sqlite
            self.db.close()  # a writer has made the file and not yet its tables
            raise NoStore(f"no runs recorded yet in {self.path.parent}", folder_exists=True)
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

    def page_mark(self) -> tuple[Any, ...]:
        """``change_mark`` and ``postmortem_mark``, and whatever else the status page shows
        that changes without them: a host's status, the controls, the quarantine, the live
        leases' holders, the previews, the services kept, the owners, the notifiers failing
        (a condition an hour of failures makes, with no write at that moment), the newest
        audit entry that is not a refusal (who did what, beside each incident)."""
        one = self.db.execute(
            "SELECT (SELECT MAX(updated_at) FROM status), (SELECT COUNT(*) FROM status),"
            " (SELECT MAX(updated_at) FROM installed), (SELECT COUNT(*) FROM installed),"
            " (SELECT MAX(updated_at) FROM owners), (SELECT COUNT(*) FROM owners),"
            " (SELECT MAX(id) FROM previews),"
            " (SELECT id FROM audit WHERE outcome NOT LIKE 'refused%' ORDER BY id DESC"
            " LIMIT 1)").fetchone()
        tables = tuple(tuple(tuple(r) for r in self.db.execute(sql).fetchall()) for sql in (
            "SELECT * FROM controls ORDER BY environment",
            "SELECT environment, sha FROM quarantine ORDER BY environment, sha",
            "SELECT id, state FROM previews WHERE state IN ('queued', 'running')"
            " OR finished_at IS NULL ORDER BY id"))
        holders = tuple((ls.environment, ls.holder) for ls in self.leases() if ls.live)
        failing = tuple(f.notifier for f in self.failing_notifiers())
        return (tuple(self.change_mark()), self.postmortem_mark(), tuple(one), tables, holders,
                failing)


# -- PostgreSQL (psycopg 3) ---------------------------------------------------------------

_MIGRATION_LOCK = 0x6769746F7073  # "gitops": the advisory lock key of migrations


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

    def _connect(self) -> PgConnection:
        import psycopg

        try:
            conn = psycopg.connect(self.url, password=self._password, autocommit=True,
                                   connect_timeout=max(2, round(self.timeout)),
                                   tcp_user_timeout=int(self.timeout * 1000),
                                   application_name="gitops",
                                   row_factory=pg_rows)
        except psycopg.Error as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = "; ".join(LIBPQ_PREFIX.sub("", line) for line in lines)
            reason = reason or type(exc).__name__
            if self._password:
                reason = reason.replace(self._password, "***")
            raise StoreUnavailable(f"cannot open the database {self.where}: {reason}") from None
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return PgConnection(conn)

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
