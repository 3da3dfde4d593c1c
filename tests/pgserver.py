"""A throwaway PostgreSQL cluster for the tests (Debian's ``postgresql`` package): ``initdb``
into a temporary folder (as the ``postgres`` user when run as root), ``pg_ctl start`` on a free
loopback port with its socket in that folder, a ``gitops`` role with a password, a fresh
database per test; stopped and removed by ``stop``. Used by the ``pg_server`` fixture."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from builders import free_port

USER = "gitops"


def _binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if _binaries() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is missing (util-linux): initdb cannot run as the postgres user"
    return None


@dataclass
class PgServer:
    """A running cluster: ``url(db)`` without a password, ``password`` apart."""

    root: Path
    port: int
    bin: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> None:
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_owner, *args], check=True, capture_output=True, timeout=120,
                       cwd=self.root)  # a folder the postgres user may enter

    @classmethod
    def start(cls) -> PgServer:
        binaries = _binaries()
        assert binaries is not None
        root = Path(tempfile.mkdtemp(prefix="gitops-pg-"))
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = cls(root, free_port(), binaries)
        server._run(str(binaries / "initdb"), "-D", str(server.data), "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                    # a natural-language default collation, as on most servers: the
                    # store must sort as SQLite does regardless
                    "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en")
        server._run(str(binaries / "pg_ctl"), "-D", str(server.data), "-w", "-l",
                    str(root / "log"), "-o",
                    f"-k {root} -c listen_addresses=127.0.0.1 -p {server.port}"
                    " -c fsync=off -c full_page_writes=off", "start")  # throwaway: no fsync
        with server._admin() as db:
            db.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{server.password}'")
        return server

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                               dbname="postgres", autocommit=True)

    def database(self) -> str:
        """A new empty database owned by the gitops role: its URL (no password)."""
        name = f"t{next(self._names)}"
        with self._admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
