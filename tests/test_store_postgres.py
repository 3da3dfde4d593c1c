"""gitops with ``database = "postgresql://..."``: recording and read commands as real
subprocesses against the session's throwaway PostgreSQL cluster, nothing in SQLite; the
metrics, API and status page read it; a wrong password or a password in the URL is refused
without echoing it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from clitools import gitops, sample_repo
from pgserver import PgServer
from starlette.applications import Starlette

from gitops.record.store import ENVIRONMENT, Condition, Database, PostgresStore
from gitops.settings import SecretRef
from gitops.web import metrics, page


def _settings(tmp_path: Path, url: str) -> Path:
    """A settings file naming the database; its password is in GITOPS_DB_PASSWORD."""
    path = tmp_path / "gitops.toml"
    path.write_text(f'database = "{url}"\ndatabase_password = {{env = "GITOPS_DB_PASSWORD"}}\n')
    return path


def test_commands_record_and_read_in_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    """suspend, resume and reconcile --once record in PostgreSQL; status and history read it
    back; the state folder gets no SQLite database."""
    repo, state = sample_repo(tmp_path, invalid=True), tmp_path / "state"
    url = pg_server.database()
    env = {"GITOPS_CONFIG": str(_settings(tmp_path, url)),
           "GITOPS_DB_PASSWORD": pg_server.password}
    where = ["--state-dir", str(state)]
    assert gitops("status", *where, env=env).stdout.strip() == "no runs recorded yet"
    proc = gitops("suspend", "--reason", "change freeze", *where, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = gitops("status", *where, env=env)
    assert proc.returncode == 0 and "change freeze" in proc.stdout, proc.stderr
    assert gitops("resume", *where, env=env).returncode == 0
    proc = gitops("reconcile", "--once", "--repo", str(repo), *where, env=env)
    assert proc.returncode == 2 and "fail_percent" in proc.stderr, proc.stderr
    proc = gitops("history", "--json", *where, env=env)
    assert proc.returncode == 0, proc.stderr
    kinds = [run["kind"] for run in json.loads(proc.stdout)]
    assert kinds == ["reconcile", "resume", "suspend"]
    with PostgresStore(url, password=pg_server.password, readonly=True) as store:
        assert [r.kind for r in store.history("lab")] == kinds
    assert not (state / "gitops.db").exists()


def test_a_wrong_password_exits_1_naming_the_database(tmp_path: Path,
                                                      pg_server: PgServer) -> None:
    """A wrong password: exit 1, one line naming host, database and user, no password and
    no traceback."""
    url = pg_server.database()
    wrong = "wrong-" + pg_server.password
    env = {"GITOPS_CONFIG": str(_settings(tmp_path, url)), "GITOPS_DB_PASSWORD": wrong}
    for args in (["status"], ["suspend", "--reason", "x"]):
        proc = gitops(*args, "--state-dir", str(tmp_path / "state"), env=env)
        assert proc.returncode == 1, (args, proc.stderr)
        assert url in proc.stderr and "password authentication failed" in proc.stderr
        assert wrong not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_a_password_in_the_url_is_refused_unechoed(tmp_path: Path) -> None:
    """A password written into the database URL is a settings error (exit 2) naming the
    file and field, never the password."""
    path = tmp_path / "gitops.toml"
    path.write_text('database = "postgresql://gitops:hunter2secret@127.0.0.1/gitops"\n')
    proc = gitops("status", "--state-dir", str(tmp_path / "state"),
                  env={"GITOPS_CONFIG": str(path)})
    assert proc.returncode == 2, proc.stderr
    assert "database" in proc.stderr and str(path) in proc.stderr
    assert "hunter2secret" not in proc.stderr + proc.stdout


def test_metrics_api_and_page_read_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    """The daemon's routes over a PostgreSQL record: /metrics counts its runs, the API lists
    its environment and the status page's data shows it, with no SQLite file in the state folder."""
    secret = tmp_path / "password"
    secret.write_text(pg_server.password)
    database = Database(tmp_path / "state", pg_server.database(), SecretRef(file=secret))
    with database.open() as store:
        run_id = store.start_run("prod", "reconcile", None, actor="t")
        store.finish_run(run_id, "succeeded")
        store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "fine")])
    app = Starlette(routes=[*metrics.routes(database.state_dir, None, database),
                            *page.routes(database.state_dir, None, database)])

    async def get(*paths: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gitops") as http:
            return [await http.get(p) for p in paths]

    text, envs, shown = asyncio.run(get("/metrics", "/api/environments", "/api/page"))
    assert 'gitops_runs_total{environment="prod",kind="reconcile",result="succeeded"} 1.0' \
        in text.text
    assert [e["environment"] for e in envs.json()] == ["prod"], envs.text
    assert shown.status_code == 200 and '"prod"' in shown.text, shown.text
    assert not (database.state_dir / "gitops.db").exists()


def test_a_database_the_user_may_not_read_is_one_line(tmp_path: Path,
                                                       pg_server: PgServer) -> None:
    """A record whose tables another role owns (no grant to gitops): status exits 1 with the
    server's one-line refusal, no traceback."""
    name = pg_server.database().rsplit("/", 1)[1]
    owner = f"postgresql://postgres@/{name}?host={pg_server.root}&port={pg_server.port}"
    with PostgresStore(owner) as store:
        store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "")])
    env = {"GITOPS_CONFIG": str(_settings(tmp_path, pg_server.url(name))),
           "GITOPS_DB_PASSWORD": pg_server.password}
    proc = gitops("status", "--state-dir", str(tmp_path / "state"), env=env)
    assert proc.returncode == 1, proc.stderr
    assert "error: the state database: permission denied for table" in proc.stderr
    assert "Traceback" not in proc.stderr
