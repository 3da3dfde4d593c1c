"""The store on its own (no lab), on real SQLite and on a real PostgreSQL server (the
``store_backend`` fixture): runs, batches, the status record, controls, quarantine,
deliveries, events, history, recovery, forgetting, read-only readers, migrations, and
PostgreSQL's own: concurrent migrations, a wrong password named without the password."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pgserver import PgServer

from gitops.daemon import control
from gitops.errors import UsageError
from gitops.record.store import (
    ENVIRONMENT,
    MIGRATIONS,
    UNCHANGED_SERVICE,
    Condition,
    Database,
    NoStore,
    PostgresStore,
    Store,
    StoreOutdated,
    StoreUnavailable,
)
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    OpPlan,
    OpResult,
    Plan,
    Ref,
    Revision,
    VerifyReport,
)

OLD_SCHEMA = Path(__file__).parent / "data" / "store_schema_before_migrations.sql"
SHA1, SHA2 = "a" * 40, "b" * 40
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_backend: Database, clock: Clock) -> Iterator[Store]:
    with store_backend.open(clock=clock) as s:
        yield s


def _revision(sha: str = SHA1, message: str = "change things") -> Revision:
    return Revision(sha=sha, branch="main", author="Ann <ann@example.org>",
                    committed_at=datetime(2026, 10, 31, tzinfo=UTC), message=message)


def _apply(*hosts: str, failed: str | None = None) -> ApplyReport:
    return ApplyReport(hosts=tuple(
        HostApply(host=h, status="failed" if h == failed else "ok", duration_s=1.5,
                  error="boom" if h == failed else None,
                  ops=(OpResult(name="write config", service="web",
                                status="failed" if h == failed else "changed",
                                stderr="no space left" if h == failed else ""),),
                  unchanged_services=("db",))
        for h in hosts))


def _verify(*hosts: str, failing: str | None = None) -> VerifyReport:
    return VerifyReport(results=tuple(
        CheckResult(host=h, service="web", check="port", duration_s=0.2,
                    status="fail" if h == failing else "pass",
                    message="closed" if h == failing else "")
        for h in hosts))


def test_a_finished_run_reads_back_typed(store: Store, clock: Clock) -> None:
    """A run reads back with its revision, plan, hosts, operations and checks as typed rows."""
    plan = Plan(hosts=(HostPlan(host="web1", ops=(
        OpPlan(name="write config", service="web", would_change=True, diff="+x"),)),))
    run_id = store.start_run("prod", "reconcile", None, actor="ann", reason="poll")
    store.set_revision(run_id, _revision())
    clock.tick(42)
    store.finish_run(run_id, "failed", plan=plan, apply=_apply("web1", "web2", failed="web2"),
                     verify=_verify("web1"), stage_s={"verify": 2.0})
    detail = store.run(run_id)
    assert detail is not None
    run = detail.run
    assert run.revision == _revision() and run.result == "failed" and not run.event
    assert run.duration_s == 42 and run.finished_at == T0 + timedelta(seconds=42)
    assert run.failed_hosts == ("web2",) and run.stage_s == {"verify": 2.0}
    assert run.changed == 1
    assert detail.plan == plan
    assert [(h.host, h.apply_status, h.verify_status) for h in detail.hosts] == [
        ("web1", "ok", "pass"), ("web2", "failed", None)]
    assert [(o.host, o.name, o.status) for o in detail.operations] == [
        ("web1", "write config", "changed"), ("web1", UNCHANGED_SERVICE, "skipped"),
        ("web2", "write config", "failed"), ("web2", UNCHANGED_SERVICE, "skipped")]
    assert [(c.host, c.check, c.status) for c in detail.checks] == [("web1", "port", "pass")]
    as_json = detail.as_dict()
    assert as_json["plan"]["hosts"][0]["ops"][0]["diff"] == "+x"
    assert as_json["started_at"] == T0.isoformat() and as_json["failed_hosts"] == ["web2"]
    assert store.run(run_id + 1) is None


def test_batches_are_visible_before_the_run_finishes(store: Store) -> None:
    """Each batch's hosts are readable while the run goes on; a later write of a host
    replaces its rows instead of adding to them."""
    run_id = store.start_run("prod", "reconcile", _revision(), actor="t")
    store.record_batch(run_id, _apply("web1"), _verify("web1", failing="web1"))
    detail = store.run(run_id)
    assert detail is not None and detail.run.finished_at is None and detail.run.result is None
    assert [(h.host, h.verify_status) for h in detail.hosts] == [("web1", "fail")]
    store.record_batch(run_id, _apply("web1"), _verify("web1"))
    store.finish_run(run_id, "succeeded", apply=_apply("web1", "web2"),
                     verify=_verify("web1", "web2"))
    detail = store.run(run_id)
    assert detail is not None
    assert [(h.host, h.verify_status) for h in detail.hosts] == [("web1", "pass"),
                                                                  ("web2", "pass")]
    assert len(detail.checks) == 2 and len(detail.operations) == 4


def test_status_keeps_revisions_not_given_and_parses_them_once(store: Store) -> None:
    """set_status replaces conditions, keeps revisions given as None; rows carry Refs and
    Conditions, and print the ``main@sha1:`` notation."""
    store.set_status("prod", "web1", [Condition("Ready", "True", "ReconciliationSucceeded",
                                                "ok")],
                     applied=_revision(), attempted=Ref("main", SHA1), verified="main@sha1:"
                     + SHA1)
    store.set_status("prod", "web1", [Condition("Ready", "False", "VerificationFailed", "x")],
                     attempted=_revision(SHA2))
    (row,) = store.status("prod")
    assert row.last_applied == Ref("main", SHA1) and row.last_verified == Ref("main", SHA1)
    assert row.last_attempted == Ref("main", SHA2) and row.last_attempted.short == SHA2[:10]
    assert row.conditions == (Condition("Ready", "False", "VerificationFailed", "x"),)
    assert not row.ready and row.condition("Stalled") is None
    assert row["last_attempted_revision"] == f"main@sha1:{SHA2}"  # the JSON shape
    assert row.as_dict()["conditions"] == [{"type": "Ready", "status": "False",
                                            "reason": "VerificationFailed", "message": "x"}]
    assert store.environment_status("prod") is None


def test_ref_parses_flux_notation_and_bare_shas() -> None:
    """``main@sha1:<sha>`` and a bare SHA both parse, and print back as they came."""
    assert Ref.parse(f"release/1@sha1:{SHA1}") == Ref("release/1", SHA1)
    assert Ref.parse(SHA1) == Ref("", SHA1) and Ref.parse(SHA1).ref == SHA1
    assert Ref.of(_revision()).ref == _revision().ref


def test_suspension_shows_as_a_condition_and_is_never_stored(store: Store,
                                                            clock: Clock) -> None:
    """A suspended environment's row has a Suspended condition with reason, actor and time,
    and its controls; writing the conditions back does not store it; resume removes it."""
    store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "fine")])
    control.suspend(store, "prod", actor="alice", reason="db migration")
    env = store.environment_status("prod")
    assert env is not None and env.suspended
    suspended = env.condition("Suspended")
    assert suspended is not None and suspended.status == "True"
    assert "alice" in suspended.message and "db migration" in suspended.message
    assert T0.isoformat(timespec="seconds") in suspended.message
    assert env.as_dict()["suspended"] == {"reason": "db migration", "actor": "alice",
                                          "since": T0.isoformat()}
    store.set_status("prod", ENVIRONMENT, env.conditions)
    raw = store.db.execute("SELECT conditions FROM status WHERE host = ''").fetchone()[0]
    assert "Suspended" not in raw
    control.resume(store, "prod", actor="bob")
    env = store.environment_status("prod")
    assert env is not None and env.condition("Suspended") is None and not env.suspended


def test_a_suspended_environment_without_runs_has_a_status_row(store: Store) -> None:
    """Suspending an environment no run has touched yet still shows it, suspended."""
    control.suspend(store, "new", actor="alice", reason="not yet")
    (row,) = store.status()
    assert row.environment == "new" and row.host == ENVIRONMENT and row.updated_at is None
    assert [c.type for c in row.conditions] == ["Suspended"]


def test_controls_hold_and_release(store: Store, clock: Clock) -> None:
    """A rollback hold is recorded with its head and time, shown on the status row, and
    released; each action is an event in the history."""
    store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "")])
    held = control.hold(store, "prod", SHA1, head=SHA2, actor="ann", reason="bad release")
    assert (held.held_sha, held.held_head, held.since, held.suspended) == (SHA1, SHA2, T0, False)
    env = store.environment_status("prod")
    assert env is not None and env.held
    assert env.as_dict()["held"] == {"sha": SHA1, "head": SHA2, "actor": "ann",
                                     "since": T0.isoformat()}
    control.release_hold(store, "prod", head="c" * 40)
    assert store.controls("prod").held_sha is None
    events = store.history("prod")
    assert [(r.kind, r.event) for r in events] == [("resume", True), ("rollback", True)]
    with pytest.raises(TypeError):
        store.set_controls("prod", paused=1)


def test_last_good_revision_skips_operator_actions(store: Store) -> None:
    """The revision to roll back to is the newest verified apply, not an operator's rollback
    request that names a SHA."""
    good = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(good, "succeeded")
    store.record_event("prod", "rollback", actor="ann", reason="hold", sha=SHA2)
    assert control.last_good_revision(store, "prod", before=None) == SHA1


def test_a_revision_no_check_ran_on_is_not_the_last_good_one(store: Store) -> None:
    """A succeeded apply during which no check ran on one host (its services have no
    checks.py) applied that revision, verified nothing there: the revision to roll back to is
    the one before, whose checks ran on every host; its hosts are not counted verified."""
    good = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(good, "succeeded", apply=_apply("web1", "web2"),
                     verify=_verify("web1", "web2"))
    unchecked = store.start_run("prod", "reconcile", _revision(SHA2), actor="t")
    store.finish_run(unchecked, "succeeded", apply=_apply("web1", "web2"),
                     verify=_verify("web1"))
    assert control.last_good_revision(store, "prod", before=None) == SHA1
    assert store.verified_hosts("prod") == {good: {"web1", "web2"}, unchecked: {"web1"}}


def test_quarantine_is_idempotent_and_per_environment(store: Store, clock: Clock) -> None:
    """Quarantining twice keeps the first reason and time; counts are per environment."""
    store.quarantine("prod", SHA1, "verification failed on web1")
    clock.tick(60)
    store.quarantine("prod", SHA1, "again")
    store.quarantine("staging", SHA2, "x")
    (q,) = store.quarantined("prod")
    assert (q.sha, q.reason, q.since) == (SHA1, "verification failed on web1", T0)
    assert store.quarantine_counts() == {"prod": 1, "staging": 1}
    assert [q.environment for q in store.quarantined()] == ["prod", "staging"]


def test_a_release_is_found_however_many_runs_came_after_it(store: Store) -> None:
    """The daemon finds an operator's release behind any number of other runs (drift
    verifies, other actions) until an apply run follows it; an older release before that
    apply is not found again."""
    bad = "abcdef1" + "1" * 33
    old = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(old, "succeeded")
    store.record_event("prod", "unquarantine", actor="ann", reason="before", sha=SHA2)
    after = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(after, "failed")
    store.quarantine("prod", bad, "verification failed on web1")
    assert store.since_last_apply("prod", "unquarantine") == []
    control.unquarantine(store, "prod", bad[:8], actor="alice", reason="web1 was down")
    for _ in range(25):
        verify = store.start_run("prod", "verify", None, actor="gitops-daemon")
        store.finish_run(verify, "succeeded")
    store.record_event("prod", "suspend", actor="bob", reason="freeze")
    (found,) = store.since_last_apply("prod", "unquarantine")
    assert (found.sha, found.actor, found.reason) == (bad, "alice", "web1 was down")
    assert store.since_last_apply("staging", "unquarantine") == []
    applied = store.start_run("prod", "reconcile", _revision(bad), actor="alice")
    store.finish_run(applied, "succeeded")
    assert store.since_last_apply("prod", "unquarantine") == []


def test_unquarantine_releases_one_revision_and_records_who_and_why(store: Store,
                                                                    clock: Clock) -> None:
    """Releasing a quarantined revision by a unique prefix removes that one only (the
    environment's other quarantined revisions, other environments and the controls stay)
    and records an ``unquarantine`` event with the operator, the reason and the full sha;
    a prefix that is malformed, unknown, ambiguous, or already released is refused
    with one line and changes nothing."""
    bad1, bad2 = "abcdef1" + "1" * 33, "abcdef1" + "2" * 33
    store.quarantine("prod", bad1, "verification failed on web1")
    store.quarantine("prod", bad2, "verification failed on web2")
    store.quarantine("staging", bad1, "verification failed on web9")
    control.suspend(store, "prod", actor="bob", reason="freeze")
    clock.tick(60)
    with pytest.raises(UsageError, match=r"^prod: abcdef1 is ambiguous: it begins "
                                         r"abcdef111111, abcdef122222; give more digits$"):
        control.unquarantine(store, "prod", "abcdef1", actor="alice", reason="why")
    answer = control.unquarantine(store, "prod", "ABCDEF11", actor="alice",
                                  reason="web1 was down, not the commit")
    assert answer["sha"] == bad1 and answer["actor"] == "alice"
    assert answer["quarantined"]["reason"] == "verification failed on web1"
    assert [q.sha for q in store.quarantined("prod")] == [bad2]
    assert [q.sha for q in store.quarantined("staging")] == [bad1]
    assert store.controls("prod")["suspended"] == 1
    event = store.history("prod", limit=1)[0]
    assert (event.id, event.kind, event.event, event.actor, event.reason, event.sha,
            event.result, event.started_at) == (
        answer["event"], "unquarantine", True, "alice", "web1 was down, not the commit",
        bad1, "succeeded", T0 + timedelta(seconds=60))
    refused = {
        "abcdef11": "prod: abcdef11 is not quarantined (quarantined there: abcdef1222)",
        "1234567": "prod: 1234567 is not quarantined",
        "abc12": "'abc12' is not a commit sha: 7 to 40 hex digits",
        "abcdef1 ": "'abcdef1 ' is not a commit sha",
        "g" * 40: "is not a commit sha",
        "a" * 41: "is not a commit sha",
    }
    for prefix, message in refused.items():
        with pytest.raises(UsageError) as caught:
            control.unquarantine(store, "prod", prefix, actor="alice", reason="why")
        assert message in str(caught.value) and "\n" not in str(caught.value), prefix
    with pytest.raises(UsageError, match="needs a reason"):
        control.unquarantine(store, "prod", bad2, actor="alice", reason="  ")
    assert [q.sha for q in store.quarantined("prod")] == [bad2]
    assert store.release_quarantine("prod", bad1, actor="alice", reason="again") is None
    assert [r.kind for r in store.history("prod")] == ["unquarantine", "suspend"]


def test_undelivered_statuses_are_replaced_and_cleared(store: Store) -> None:
    """A newer undelivered status of the same commit and receiver replaces the older one;
    a delivery clears it."""
    store.keep_undelivered("prod", 0, SHA1, "failure", "first")
    store.keep_undelivered("prod", 0, SHA1, "success", "second")
    store.keep_undelivered("prod", 1, SHA1, "success", "other receiver")
    assert [(u.receiver, u.state, u.description) for u in store.undelivered("prod")] == [
        (0, "success", "second"), (1, "success", "other receiver")]
    store.delivered("prod", 0, SHA1)
    assert [u.receiver for u in store.undelivered("prod")] == [1]
    assert store.undelivered("staging") == []


def test_history_is_newest_first_and_limited(store: Store) -> None:
    """history lists runs newest first, per environment or all, up to the limit."""
    ids = [store.start_run(env, "reconcile", _revision(), actor="t")
           for env in ("prod", "staging", "prod")]
    assert [r.id for r in store.history()] == ids[::-1]
    assert [r.id for r in store.history("prod")] == [ids[2], ids[0]]
    assert [r.id for r in store.history(limit=1)] == [ids[2]]
    assert [r.id for r in store.runs()["prod"]] == [ids[0], ids[2]]
    assert store.environments() == ["prod", "staging"]


def test_recover_unfinished_marks_only_that_environment(store: Store, clock: Clock) -> None:
    """Runs a killed process left unfinished become interrupted (with why); other
    environments' runs are left alone."""
    prod = store.start_run("prod", "reconcile", _revision(), actor="t")
    staging = store.start_run("staging", "reconcile", _revision(), actor="t")
    clock.tick(5)
    assert store.recover_unfinished("prod") == [prod]
    assert store.recover_unfinished("prod") == []
    detail = store.run(prod)
    assert detail is not None and detail.run.result == "interrupted"
    assert detail.run.error == "the reconciler stopped during this run"
    assert detail.run.finished_at == T0 + timedelta(seconds=5)
    other = store.run(staging)
    assert other is not None and other.run.result is None


def test_forget_removes_status_and_keeps_history(store: Store) -> None:
    """forget removes an environment's status, controls, quarantine and convergence; its
    runs stay; other environments are untouched."""
    run_id = store.start_run("typo", "reconcile", None, actor="t")
    store.finish_run(run_id, "invalid", error="no inventory")
    store.set_status("typo", ENVIRONMENT, [Condition("Stalled", "True", "ValidationFailed",
                                                     "waiting for a new commit")])
    store.quarantine("typo", SHA1, "x")
    store.set_converged("typo", "web1", {"web": "f1"}, _revision())
    store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "")])
    removed = store.forget("typo", actor="ann", reason="made by a typo")
    assert removed["status"] == 1 and removed["quarantine"] == 1 and removed["runs"] == 1
    assert [r.environment for r in store.status()] == ["prod"]
    assert store.converged("typo") == {} and store.quarantined("typo") == []
    forgot, kept = store.history("typo")
    assert kept.id == run_id
    assert (forgot.kind, forgot.event, forgot.actor, forgot.reason) == (
        "forget", True, "ann", "made by a typo")


def test_converged_is_replaced_per_host(store: Store) -> None:
    """set_converged replaces a host's fingerprints; None forgets them."""
    store.set_converged("prod", "web1", {"web": "f1", "db": "f2"}, _revision())
    store.set_converged("prod", "web2", {"web": "f3"})
    store.set_converged("prod", "web1", {"web": "f4"})
    assert store.converged("prod") == {"web1": {"web": "f4"}, "web2": {"web": "f3"}}
    store.set_converged("prod", "web2", None)
    assert store.converged("prod") == {"web1": {"web": "f4"}}


def test_forget_converged_is_per_environment(store: Store) -> None:
    """After a cut apply nothing is known converged in that environment; others keep theirs."""
    store.set_converged("prod", "web1", {"web": "f1"})
    store.set_converged("prod", "web2", {"web": "f2"})
    store.set_converged("staging", "web1", {"web": "f3"})
    assert store.forget_converged("prod") is True
    assert store.converged("prod") == {}
    assert store.forget_converged("prod") is False
    assert store.converged("staging") == {"web1": {"web": "f3"}}


def test_hosts_sort_by_code_point_on_every_backend(store: Store) -> None:
    """Hosts of a run come back in the same order on SQLite and PostgreSQL: by code point
    (capitals first, "-" before digits), whatever the server's locale."""
    names = ("web10", "web-2", "Web1", "web1", "db_1", "\u00e9cole")
    run_id = store.start_run("prod", "reconcile", _revision(), actor="t")
    store.finish_run(run_id, "succeeded", apply=_apply(*names))
    assert [h.host for h in store.host_results(run_id)] == sorted(names)


def test_a_reader_creates_nothing(tmp_path: Path) -> None:
    """A read-only open of a missing folder or database raises NoStore and creates nothing."""
    missing = tmp_path / "nowhere"
    with pytest.raises(NoStore) as info:
        Store(missing, readonly=True)
    assert not info.value.folder_exists and not missing.exists()
    missing.mkdir()
    with pytest.raises(NoStore) as info:
        Store(missing, readonly=True)
    assert info.value.folder_exists and list(missing.iterdir()) == []


def test_a_reader_cannot_write(store_backend: Database) -> None:
    """A read-only store reads what a writer wrote and refuses to write."""
    with store_backend.open() as writer:
        writer.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "")])
    with store_backend.open(readonly=True) as reader:
        assert [r.environment for r in reader.status()] == ["prod"]
        with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction),
                           match=r"readonly|read-only"):
            reader.set_status("prod", ENVIRONMENT, [])


def test_a_reader_of_an_empty_database_creates_nothing(pg_server: PgServer) -> None:
    """A read-only open of a PostgreSQL database gitops never wrote raises NoStore, naming
    the database without its password, and creates no table."""
    url = pg_server.database()
    with pytest.raises(NoStore, match="no runs recorded yet in postgresql://gitops@") as info:
        PostgresStore(url, password=pg_server.password, readonly=True)
    assert pg_server.password not in str(info.value)
    with psycopg.connect(url, password=pg_server.password) as db:
        assert db.execute("SELECT count(*) FROM information_schema.tables"
                          " WHERE table_schema = 'public'").fetchone() == (0,)


def test_a_wrong_password_is_named_without_the_password(pg_server: PgServer) -> None:
    """A wrong PostgreSQL password gives a clear temporary error naming the host, port,
    database and user, never the password tried nor the right one."""
    url = pg_server.database()
    wrong = "not-" + pg_server.password
    with pytest.raises(StoreUnavailable) as info:
        PostgresStore(url, password=wrong)
    message = str(info.value)
    assert f"postgresql://gitops@127.0.0.1:{pg_server.port}/" in message
    assert "password authentication failed" in message and 'user "gitops"' in message
    assert wrong not in message and pg_server.password not in message
    assert info.value.exit_code == 1


def test_two_controllers_starting_together_migrate_once(pg_server: PgServer) -> None:
    """Writers opening a new PostgreSQL database at the same time all succeed, and each
    migration is applied and recorded exactly once (the advisory lock)."""
    url = pg_server.database()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_writer() -> None:
        try:
            start.wait()
            PostgresStore(url, password=pg_server.password).close()
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with PostgresStore(url, password=pg_server.password, readonly=True) as store:
        versions = [r[0] for r in store.db.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]


def _old_database(state: Path, *, without_verified: bool = False) -> None:
    """A database as gitops wrote it before numbered migrations, with a few rows."""
    state.mkdir(parents=True)
    db = sqlite3.connect(state / "gitops.db")
    schema = OLD_SCHEMA.read_text()
    if without_verified:  # older still: before last_verified_revision
        schema = schema.replace("    last_verified_revision TEXT,\n", "")
    db.executescript(schema)
    stamp = T0.isoformat()
    db.execute("INSERT INTO runs (environment, kind, actor, reason, sha, branch, author,"
               " committed_at, message, started_at, finished_at, duration_s, result, stage_s)"
               " VALUES ('prod', 'reconcile', 't', '', ?, 'main', 'Ann', ?, 'm', ?, ?, 3.0,"
               " 'succeeded', '{\"verify\": 1.0}')", (SHA1, stamp, stamp, stamp))
    db.execute("INSERT INTO runs (environment, kind, actor, reason, started_at, finished_at,"
               " duration_s, result) VALUES ('prod', 'suspend', 'ann', 'why', ?, ?, 0,"
               " 'succeeded')", (stamp, stamp))
    db.execute("INSERT INTO status (environment, host, conditions, last_applied_revision,"
               " last_attempted_revision, updated_at) VALUES ('prod', '', ?, ?, ?, ?)",
               ('[{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",'
                f' "message": "Applied and verified revision: main@sha1:{SHA1}"}}]',
                f"main@sha1:{SHA1}", f"main@sha1:{SHA1}", stamp))
    db.commit()
    db.close()


@pytest.mark.parametrize("without_verified", [False, True])
def test_an_existing_database_migrates(tmp_path: Path, without_verified: bool) -> None:
    """A database made by gitops before numbered migrations opens, migrates to the newest
    version (recorded), and keeps its rows: operator actions are marked as events and the
    environment's verified revision is filled in."""
    state = tmp_path / "state"
    _old_database(state, without_verified=without_verified)
    with pytest.raises(StoreOutdated, match="schema version 0"):
        Store(state, readonly=True)
    with Store(state) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
        versions = [r[0] for r in store.db.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS]
        runs = store.history("prod")
        assert [(r.kind, r.event) for r in runs] == [("suspend", True), ("reconcile", False)]
        env = store.environment_status("prod")
        assert env is not None and env.last_verified == Ref("main", SHA1)
    with Store(state, readonly=True) as reader:  # migrated: readers open it now
        assert len(reader.history()) == 2
    with Store(state) as again:  # opening again applies nothing twice
        assert again.schema_version() == MIGRATIONS[-1].version


def test_a_new_database_is_at_the_newest_version(store_backend: Database) -> None:
    """A new store records every migration, numbered from 1 without gaps."""
    with store_backend.open() as store:
        assert store.schema_version() == len(MIGRATIONS)
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_failed_hosts_are_those_of_the_latest_apply(store: Store) -> None:
    """``retry --failed`` targets the hosts that failed in the latest finished apply run; a
    later drift check or operator's rollback request does not change them."""
    bad = store.start_run("prod", "reconcile", _revision(), actor="t")
    store.finish_run(bad, "failed", apply=_apply("web1", "web2", failed="web2"),
                     verify=_verify("web1"))
    check = store.start_run("prod", "verify", _revision(), actor="t", reason="drift check")
    store.finish_run(check, "failed", verify=_verify("web1", failing="web1"))
    store.record_event("prod", "rollback", actor="ann", reason="hold", sha=SHA2)
    assert control.failed_hosts(store, "prod") == ["web2"]
    good = store.start_run("prod", "retry", _revision(), actor="t")
    store.finish_run(good, "succeeded", apply=_apply("web2"), verify=_verify("web2"))
    assert control.failed_hosts(store, "prod") == []


def test_failures_and_plan_read_only_what_incidents_need(store: Store) -> None:
    """``failures`` gives the hosts with an error, the failed operations and the checks that
    did not pass; ``plan`` the run's plan (None for a run without one)."""
    plan = Plan(hosts=(HostPlan(host="web2"),))
    run_id = store.start_run("prod", "reconcile", _revision(), actor="t")
    store.finish_run(run_id, "failed", plan=plan, apply=_apply("web1", "web2", failed="web2"),
                     verify=_verify("web1", failing="web1"))
    hosts, ops, checks = store.failures(run_id)
    assert [(h.host, h.error) for h in hosts] == [("web2", "boom")]
    assert [(o.host, o.stderr) for o in ops] == [("web2", "no space left")]
    assert [(c.host, c.status, c.message) for c in checks] == [("web1", "fail", "closed")]
    assert store.plan(run_id) == plan
    assert store.plan(store.record_event("prod", "suspend", actor="a", reason="r")) is None
