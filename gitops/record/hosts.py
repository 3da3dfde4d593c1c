"""What each host has and was last verified with, per service: the convergence fingerprints of
changed-only applies, the installed services that removals (``gitops.pipeline.prune``) read,
and hosts that left the inventory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gitops.record.base import ENVIRONMENT, StoreBase, ref_text
from gitops.records import Installed, InstalledState, Ref, Revision

__all__ = ["HostsMixin"]


class HostsMixin(StoreBase):
    """Writes and reads the ``converged`` and ``installed`` tables."""

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
                (environment, host, service, fp, ref_text(revision) or "")
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
                [(environment, host, service, ref_text(revision) or "",
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
