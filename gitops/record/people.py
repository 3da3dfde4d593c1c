"""People and robots in the record: API tokens (a SHA-256 digest of each, never the token)
and the audit trail of who did what, append-only (a trigger refuses UPDATE and DELETE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from gitops.errors import UsageError
from gitops.record.base import StoreBase, parse_time
from gitops.record.dialect import PgConnection

__all__ = ["AuditRow", "PeopleMixin", "TokenRow", "people_schema"]

_TOUCH_EVERY = timedelta(minutes=1)
"""A token's ``last_used_at`` is written at most this often (not on every request)."""


@dataclass(frozen=True)
class TokenRow:
    """One API token as recorded: never the token, only its ``digest`` (hex SHA-256)."""

    name: str
    digest: str
    role: str
    team: str
    on_behalf: bool
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def state(self, at: datetime) -> str:
        """``live``, ``expired`` or ``revoked`` at ``at``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        return "live"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape ``tokens list`` prints: everything but the digest."""
        out = {k: (v.isoformat() if isinstance(v, datetime) else v)
               for k, v in asdict(self).items() if k != "digest"}
        return out


@dataclass(frozen=True)
class AuditRow:
    """One entry of the audit trail: who (``actor``, with the ``role`` that allowed it), did
    what (``action``) where (``environment``, ``target``), from which address, why, and how
    it ended (``outcome``: ``ok``, ``refused 403``, an HTTP status...)."""

    id: int
    at: datetime
    actor: str
    role: str
    action: str
    environment: str
    target: str
    address: str
    reason: str
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


def people_schema(db: Any) -> None:
    """The ``tokens`` and ``audit`` tables; on both dialects a trigger refuses any UPDATE or
    DELETE of an audit row (PostgreSQL: TRUNCATE too)."""
    db.execute("CREATE TABLE tokens (name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,"
               " role TEXT NOT NULL, team TEXT NOT NULL, on_behalf INTEGER NOT NULL DEFAULT 0,"
               " created_by TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT,"
               " last_used_at TEXT, revoked_at TEXT)")
    db.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
               " actor TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL,"
               " environment TEXT NOT NULL DEFAULT '', target TEXT NOT NULL DEFAULT '',"
               " address TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',"
               " outcome TEXT NOT NULL)")
    db.execute("CREATE INDEX audit_at ON audit (at, id)")
    if isinstance(db, PgConnection):
        db.conn.execute(
            "CREATE FUNCTION gitops_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$")
        db.conn.execute("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit"
                        " FOR EACH ROW EXECUTE FUNCTION gitops_audit_append_only()")
        db.conn.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit"
                        " FOR EACH STATEMENT EXECUTE FUNCTION gitops_audit_append_only()")
        return
    for verb in ("UPDATE", "DELETE"):  # sqlite: RAISE in a trigger
        db.execute(f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit"
                   " BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")


def _token(r: Any) -> TokenRow:
    return TokenRow(r["name"], r["digest"], r["role"], r["team"], bool(r["on_behalf"]),
                    r["created_by"], parse_time(r["created_at"]) or datetime.min,
                    parse_time(r["expires_at"]), parse_time(r["last_used_at"]),
                    parse_time(r["revoked_at"]))


class PeopleMixin(StoreBase):
    """Writes and reads the ``tokens`` and ``audit`` tables."""

    def add_token(self, name: str, digest: str, *, role: str, team: str, created_by: str,
                  expires_at: datetime | None, on_behalf: bool = False) -> TokenRow:
        """Record a new token by its digest; ``UsageError`` if ``name`` was ever used (a
        revoked name stays taken: the audit trail names it)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
                raise UsageError(f"a token named {name!r} exists already (gitops tokens "
                                 "list); a revoked name is not given again")
            db.execute("INSERT INTO tokens (name, digest, role, team, on_behalf, created_by,"
                       " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
                       (name, digest, role, team, int(on_behalf), created_by, self._now(),
                        expires_at.isoformat() if expires_at else None))
        found = self.token(name)
        assert found is not None
        return found

    def token(self, name: str) -> TokenRow | None:
        r = self.db.execute("SELECT * FROM tokens WHERE name=?", (name,)).fetchone()
        return _token(r) if r is not None else None

    def tokens(self) -> list[TokenRow]:
        """Every token ever created, revoked and expired ones too, by name."""
        return [_token(r) for r in
                self.db.execute("SELECT * FROM tokens ORDER BY name").fetchall()]

    def revoke_token(self, name: str) -> TokenRow:
        """Revoke ``name`` now (again: nothing changes); ``UsageError`` if unknown."""
        with self._tx() as db:
            db.execute("UPDATE tokens SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
                       (self._now(), name))
        found = self.token(name)
        if found is None:
            raise UsageError(f"no token named {name!r} (gitops tokens list)")
        return found

    def touch_token(self, name: str) -> None:
        """Note that ``name`` was used now (at most once a minute)."""
        now = self.clock()
        self.db.execute("UPDATE tokens SET last_used_at=? WHERE name=? AND"
                        " (last_used_at IS NULL OR last_used_at < ?)",
                        (now.isoformat(), name, (now - _TOUCH_EVERY).isoformat()))

    def audit(self, *, actor: str, role: str, action: str, outcome: str,
              environment: str = "", target: str = "", address: str = "",
              reason: str = "") -> int:
        """Append one entry to the audit trail; its id."""
        cur = self.db.execute(
            "INSERT INTO audit (at, actor, role, action, environment, target, address, reason,"
            " outcome) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
            (self._now(), actor, role, action, environment, target, address, reason, outcome))
        return int(cur.fetchall()[0][0])

    def audit_trail(self, *, actor: str | None = None, environment: str | None = None,
                    action: str | None = None, since: datetime | None = None,
                    limit: int = 1000) -> list[AuditRow]:
        """Audit entries matching every filter given, newest first."""
        where, args = [], []
        for column, value in (("actor", actor), ("environment", environment),
                              ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("at >= ?")
            args.append(since.isoformat())
        sql = ("SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [AuditRow(r["id"], parse_time(r["at"]) or datetime.min, r["actor"], r["role"],
                         r["action"], r["environment"], r["target"], r["address"],
                         r["reason"], r["outcome"])
                for r in self.db.execute(sql, (*args, limit)).fetchall()]
