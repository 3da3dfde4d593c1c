"""Read commands read and never write; unknown environments are errors; ``forget``; the
status record shows suspensions and holds, and its verified revision agrees with Ready."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import free_port, git_repo
from click.testing import CliRunner, Result
from clitools import gitops
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.cli import main
from gitops.daemon import control
from gitops.daemon.loop import Daemon
from gitops.pipeline.finalize import finalize
from gitops.pipeline.reconcile import Outcome, Target
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import ApplyReport, CheckResult, HostApply, Revision, VerifyReport
from gitops.settings import EnvironmentConfig, Settings

SHA = "c" * 40
READERS = (["status"], ["history"], ["metrics"], ["incidents"])


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _recorded(state: Path) -> Path:
    """A state folder where ``prod`` has one finished run and a status."""
    with Store(state) as store:
        run_id = store.start_run("prod", "reconcile", None, actor="t")
        store.finish_run(run_id, "succeeded")
        store.set_status("prod", ENVIRONMENT, [Condition("Ready", "True", "Ok", "fine")],
                         applied=f"main@sha1:{SHA}")
    return state


@pytest.mark.parametrize("command", READERS)
def test_a_read_command_does_not_create_a_missing_state_folder(tmp_path: Path,
                                                               command: list[str]) -> None:
    """A read command on a state folder that does not exist says so (exit 2), creating
    nothing."""
    missing = tmp_path / "does" / "not" / "exist"
    result = _cli(*command, "--state-dir", str(missing))
    assert result.exit_code == 2, result.output
    assert "no state folder" in result.output and str(missing) in result.output
    assert not (tmp_path / "does").exists()


@pytest.mark.parametrize("command", READERS)
def test_a_read_command_on_an_empty_folder_creates_no_database(tmp_path: Path,
                                                               command: list[str]) -> None:
    """In an existing folder without a database a read command answers "no runs recorded
    yet" (exit 0) and leaves the folder empty."""
    result = _cli(*command, "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "no runs recorded yet" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READERS)
def test_a_read_command_while_the_daemon_creates_the_database_says_nothing_recorded(
        tmp_path: Path, command: list[str]) -> None:
    """A reader that opens the database between its creation and its first migration (the
    daemon starting) answers "no runs recorded yet", not that the schema is outdated."""
    sqlite3.connect(tmp_path / "gitops.db").close()
    result = _cli(*command, "--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "no runs recorded yet" in result.output
    assert "schema version" not in result.output


@pytest.mark.parametrize("command", READERS)
def test_an_unknown_environment_is_an_error_listing_the_known_ones(tmp_path: Path,
                                                                   command: list[str]) -> None:
    """``-e typo`` on a read command is a usage error (exit 2) that names the environments
    the store knows, and changes nothing."""
    state = _recorded(tmp_path / "state")
    before = (state / "gitops.db").read_bytes()
    result = _cli(*command, "--state-dir", str(state), "-e", "typo")
    assert result.exit_code == 2, result.output
    assert "unknown environment 'typo'" in result.output and "prod" in result.output
    with Store(state) as store:
        assert store.environments() == ["prod"]
    assert (state / "gitops.db").read_bytes() == before


@pytest.mark.parametrize("command", [["reconcile", "--once"], ["verify"]])
def test_reconcile_of_a_missing_inventory_records_nothing(tmp_path: Path,
                                                          command: list[str]) -> None:
    """``reconcile --once -e typo`` when the revision has no such inventory is a usage error
    listing the inventories there; no run and no Stalled status are recorded."""
    repo = git_repo(tmp_path / "repo", {"inventories/lab.yml": "hosts: {}\n",
                                        "inventories/prod.yml": "hosts: {}\n"})
    state = tmp_path / "state"
    result = _cli(*command, "--repo", str(repo), "--state-dir", str(state), "-e", "typo")
    assert result.exit_code == 2, result.output
    assert "inventories/typo.yml" in result.output and "lab, prod" in result.output
    status = _cli("status", "--state-dir", str(state))
    assert status.exit_code == 0 and "no runs recorded yet" in status.output


def test_forget_removes_the_status_and_keeps_the_history(tmp_path: Path) -> None:
    """``gitops forget ENV`` removes the environment from status, says its history stays,
    and history still lists its runs."""
    state = _recorded(tmp_path / "state")
    with Store(state) as store:
        run_id = store.start_run("typo", "reconcile", None, actor="t")
        store.finish_run(run_id, "invalid", error="no such environment")
        store.set_status("typo", ENVIRONMENT, [Condition("Stalled", "True", "ValidationFailed",
                                                         "waiting for a new commit")])
    result = _cli("forget", "typo", "--reason", "made by a typo", "--state-dir", str(state))
    assert result.exit_code == 0, result.output
    assert "1 run(s) stay in history" in result.output
    rows = json.loads(_cli("status", "--json", "--state-dir", str(state)).output)
    assert {r["environment"] for r in rows} == {"prod"}
    runs = json.loads(_cli("history", "--json", "-e", "typo", "--state-dir", str(state)).output)
    assert [r["id"] for r in runs][1:] == [run_id]
    assert (runs[0]["kind"], runs[0]["event"], runs[0]["reason"]) == (
        "forget", True, "made by a typo")
    assert runs[0]["actor"]  # who: the operator's name, as suspend records it
    again = _cli("forget", "nothere", "--state-dir", str(state))
    assert again.exit_code == 2 and "unknown environment 'nothere'" in again.output


def test_status_shows_a_suspension_and_a_hold(tmp_path: Path) -> None:
    """A suspended, held environment shows a Suspended condition (reason, actor, time) and
    the held revision, in text and in ``--json``."""
    state = _recorded(tmp_path / "state")
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with Store(state, clock=lambda: when) as store:
        control.hold(store, "prod", SHA, head="d" * 40, actor="bob", reason="bad release")
        control.suspend(store, "prod", actor="alice", reason="db migration")
    text = _cli("status", "--state-dir", str(state))
    assert text.exit_code == 0, text.output
    assert "Suspended=True" in text.output
    assert "Suspended: suspended by alice since 2026-12-01T09:30:00+00:00: db migration" \
        in text.output
    assert f"Held: {SHA[:10]}" in text.output
    (row,) = json.loads(_cli("status", "--json", "--state-dir", str(state)).output)
    assert {"type": "Suspended", "status": "True", "reason": "SuspendedByOperator",
            "message": "suspended by alice since 2026-12-01T09:30:00+00:00: db migration"
            } in row["conditions"]
    assert row["suspended"] == {"reason": "db migration", "actor": "alice",
                                "since": when.isoformat()}
    assert row["held"]["sha"] == SHA and row["held"]["head"] == "d" * 40


def test_a_verified_run_records_the_verified_revision(tmp_path: Path) -> None:
    """After a run that verified every host, ``status --json`` has the revision its Ready
    message names as ``last_verified_revision`` (it was null)."""
    state = tmp_path / "state"
    revision = Revision(sha=SHA, branch="main", author="Ann", message="m",
                        committed_at=datetime(2026, 12, 1, tzinfo=UTC))
    target = Target(repo=str(tmp_path), branch="main", environment="prod", state_dir=state)
    checks = VerifyReport(results=(CheckResult(host="web1", service="web", check="port",
                                               status="pass"),))
    for kind in ("reconcile", "verify"):
        with Store(state) as store:
            run_id = store.start_run("prod", kind, revision, actor="t")
            finalize(store, target, kind, Outcome("succeeded", run_id=run_id,
                                                   revision=revision, verify=checks),
                      {}, {}, None)
        rows = json.loads(_cli("status", "--json", "--state-dir", str(state)).output)
        env = next(r for r in rows if r["host"] == "")
        assert "verified revision" in env["conditions"][0]["message"].lower()
        assert env["last_verified_revision"] == revision.ref


def test_a_host_no_check_ran_on_is_applied_not_verified(tmp_path: Path) -> None:
    """A run that applied two hosts and ran checks on one (the other's services have no
    checks.py): ``status`` says the second is applied, not verified, and neither it nor the
    environment has the revision as verified; the first host has."""
    state = tmp_path / "state"
    revision = Revision(sha=SHA, branch="main", author="Ann", message="m",
                        committed_at=datetime(2026, 12, 1, tzinfo=UTC))
    target = Target(repo=str(tmp_path), branch="main", environment="prod", state_dir=state)
    applied = ApplyReport(hosts=(HostApply(host="web1", status="ok"),
                                 HostApply(host="web2", status="ok")))
    checks = VerifyReport(results=(CheckResult(host="web1", service="web", check="port",
                                               status="pass"),))
    with Store(state) as store:
        run_id = store.start_run("prod", "reconcile", revision, actor="t")
        finalize(store, target, "reconcile", Outcome(
            "succeeded", run_id=run_id, revision=revision, apply=applied, verify=checks),
            {}, {}, None)
    rows = {r["host"]: r for r in json.loads(
        _cli("status", "--json", "--state-dir", str(state)).output)}
    assert rows["web1"]["last_verified_revision"] == revision.ref
    assert rows["web2"]["last_applied_revision"] == revision.ref
    assert rows["web2"]["last_verified_revision"] is None
    assert rows["web2"]["conditions"][0]["reason"] == "AppliedNotVerified"
    assert "not verified" in rows["web2"]["conditions"][0]["message"]
    assert rows[""]["last_verified_revision"] is None
    assert "not verified on web2" in rows[""]["conditions"][0]["message"]
    text = _cli("status", "--state-dir", str(state)).output
    assert "not verified" in text


def test_a_run_summary_says_which_hosts_are_not_verified() -> None:
    """``reconcile`` ends with "applied, not verified on web2" when no check ran there."""
    from gitops.cli.output import outcome_summary

    applied = ApplyReport(hosts=(HostApply(host="web1", status="ok"),
                                 HostApply(host="web2", status="ok")))
    checks = VerifyReport(results=(CheckResult(host="web1", service="web", check="port",
                                               status="pass"),))
    line = outcome_summary(Outcome("succeeded", run_id=3, apply=applied, verify=checks))
    assert line == ("run #3: succeeded, 0 changed, 1 checks passed; applied, not verified on "
                    "web2: no check ran there")


@pytest.mark.parametrize(("statuses", "host_errors", "said"), [
    ({"web1": "ok", "web2": "unreachable"}, {}, ", 1 host(s) unreachable (web2)"),
    ({"web1": "skipped", "web2": "unreachable"}, {},
     ", 1 host(s) unreachable (web2); not applied on web1: the rollout stopped first"),
    ({"web1": "ok", "web2": "ok"}, {"web2": "ssh: connection refused"},
     ", 1 host(s) unreachable (web2)"),
    ({f"h{i:02}": "unreachable" for i in range(7)} | {"web1": "ok"}, {},
     ", 7 host(s) unreachable (h00, h01, h02, h03, h04 and 2 more)"),
])
def test_a_run_summary_names_the_hosts_not_reached(statuses: dict[str, str],
                                                   host_errors: dict[str, str],
                                                   said: str) -> None:
    """The last line names the hosts the apply or the checks could not reach, and those a
    stopped rollout never applied (they were counted as nothing, or not at all, before)."""
    from gitops.cli.output import outcome_summary

    applied = ApplyReport(hosts=tuple(HostApply(host=h, status=s)  # type: ignore[arg-type]
                                      for h, s in statuses.items()))
    checks = VerifyReport(results=(CheckResult(host="web1", service="web", check="port",
                                               status="pass"),), host_errors=host_errors)
    line = outcome_summary(Outcome("failed", run_id=4, apply=applied, verify=checks))
    assert line == f"run #4: failed, 0 changed, 1 checks passed{said}", line


def test_the_daemon_status_api_reads_only(tmp_path: Path) -> None:
    """The daemon's ``/api/status`` reader answers [] before anything is recorded, creating
    nothing, and shows a suspension as a Suspended condition with its controls."""
    state = tmp_path / "state"
    settings = Settings(state_dir=state, environments=[
        EnvironmentConfig(name="prod", repo=str(tmp_path), watch=False)])
    daemon = Daemon(settings)
    assert daemon.status() == [] and not state.exists()
    _recorded(state)
    with Store(state) as store:
        control.suspend(store, "prod", actor="alice", reason="freeze")
    (row,) = daemon.status()
    assert row["conditions"][-1]["type"] == "Suspended"
    assert row["controls"]["suspended"] == 1 and row["suspended"]["actor"] == "alice"


@pytest.mark.parametrize("command", [["incidents", "annotate", "prod-1", "--summary", "x"],
                                     ["incidents", "action", "prod-1", "--add", "x"]])
@pytest.mark.parametrize("as_json", [False, True])
def test_a_postmortem_write_on_an_empty_folder_is_one_usage_error(
        tmp_path: Path, command: list[str], as_json: bool) -> None:
    """Writing into a post-mortem where nothing is recorded yet prints one message saying
    there is no incident to write into (one JSON document with --json), exits 2 and creates
    nothing."""
    result = CliRunner().invoke(main, [*command, "--state-dir", str(tmp_path),
                                       *(["--json"] if as_json else [])])
    assert result.exit_code == 2, result.output
    message = f"no runs recorded in {tmp_path}: no incident to write into"
    if as_json:
        assert json.loads(result.output) == {"result": "error", "error": message}
    else:
        assert result.output.strip().splitlines() == [f"error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_status_shows_quarantined_revisions_and_the_pipeline(tmp_path: Path) -> None:
    """``gitops status`` lists each environment's quarantined revisions (sha, since, why, and
    how to clear it); ``--json`` has them, and the pipeline stage, on the environment's row,
    the keys it had before unchanged."""
    state = tmp_path / "state"
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{state}"\n[[environments]]\nname = "staging"\n'
                      f'repo = "/srv/state"\n[[environments]]\nname = "production"\n'
                      'repo = "/srv/state"\npromote_from = "staging"\n')
    bad = "b" * 40
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with Store(state, clock=lambda: when) as store:
        for env in ("staging", "production"):
            store.set_status(env, ENVIRONMENT, [Condition("Ready", "True", "Ok", "fine")],
                             applied=f"main@sha1:{SHA}")
        store.set_status("staging", "web1", [Condition("Ready", "True", "Ok", "fine")],
                         applied=f"main@sha1:{SHA}")
        store.quarantine("staging", bad, "RevertedByHost: web1 reverted its guarded apply")
    with Store(state, readonly=True) as store:  # the keys ``status --json`` had
        before = {r.host: set(r.as_dict()) | {"team"} for r in store.status("staging")}
    text = _cli("status", "--config", str(config))
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    at = lines.index("    Quarantined: bbbbbbbbbb since 2026-12-01T09:30:00: RevertedByHost: "
                     "web1 reverted its guarded apply")
    assert lines[at - 2].startswith("staging ")  # under staging's own row
    assert "`gitops forget staging` clears the quarantine" in lines[at + 1]
    assert "`gitops unquarantine staging SHA --reason WHY` releases one" in lines[at + 1]
    assert sum("Quarantined:" in line for line in lines) == 1
    assert "pipeline:" in lines and any(line.startswith("  production <- staging")
                                        for line in lines)
    rows = json.loads(_cli("status", "--json", "--config", str(config)).output)
    staging = {r["host"]: r for r in rows if r["environment"] == "staging"}
    assert staging[""]["quarantined"] == [{
        "sha": bad, "reason": "RevertedByHost: web1 reverted its guarded apply",
        "since": when.isoformat()}]
    assert set(staging[""]) - before[""] == {"quarantined", "pipeline"}
    assert set(staging["web1"]) == before["web1"]  # a host's row is as it was
    production = next(r for r in rows if r["environment"] == "production" and not r["host"])
    assert production["quarantined"] == []
    assert production["pipeline"]["promote_from"] == "staging"
    assert production["pipeline"]["applied"] == SHA
    assert staging[""]["pipeline"]["promote_from"] is None


# -- gitops unquarantine ENV SHA --reason WHY ------------------------------------------------

BAD1, BAD2 = "abcdef1" + "1" * 33, "abcdef1" + "2" * 33


def _quarantined(state: Path) -> Path:
    """A state folder where ``lab``'s reconcile of BAD1 failed and BAD1 and BAD2 (one 7-digit
    prefix) are quarantined."""
    with Store(state) as store:
        run_id = store.start_run("lab", "reconcile", None, actor="gitops-daemon")
        store.finish_run(run_id, "failed")
        store.quarantine("lab", BAD1, "verification failed on web1")
        store.quarantine("lab", BAD2, "verification failed on web2")
    return state


def _closed_port() -> str:
    """A listen address where no daemon answers (so the command acts on the store)."""
    return f"127.0.0.1:{free_port()}"


def test_unquarantine_releases_one_revision_and_history_shows_who_and_why(
        tmp_path: Path) -> None:
    """``gitops unquarantine lab PREFIX --reason WHY`` (no daemon: in the store) releases that
    revision only, says so with the history entry, and ``history``/``status`` show it; bad
    input (unknown environment, a sha not quarantined, an ambiguous or malformed prefix, an
    empty reason) is one error line, exit 2, no traceback, nothing changed."""
    state = _quarantined(tmp_path / "state")
    env = {"USER": "alice", "GITOPS_LISTEN": _closed_port(), "GITOPS_STATE_DIR": str(state)}
    refused = {
        ("prod", BAD1[:8]): "error: unknown environment 'prod'; known: lab",
        ("lab", "abcdef1"): "error: lab: abcdef1 is ambiguous: it begins abcdef111111, "
                            "abcdef122222; give more digits",
        ("lab", "1234567"): "error: lab: 1234567 is not quarantined (quarantined there: "
                            "abcdef1111, abcdef1222)",
        ("lab", "abc12"): "error: 'abc12' is not a commit sha: 7 to 40 hex digits",
        ("lab", "HEAD~1"): "error: 'HEAD~1' is not a commit sha: 7 to 40 hex digits",
    }
    for (environment, sha), message in refused.items():
        proc = gitops("unquarantine", environment, sha, "--reason", "host down", env=env,
                      cwd=tmp_path)
        assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (2, [message], "")
    empty = gitops("unquarantine", "lab", BAD1[:8], "--reason", " ", env=env, cwd=tmp_path)
    assert empty.returncode == 2 and len(empty.stderr.splitlines()) == 1
    assert "--reason is empty" in empty.stderr
    with Store(state, readonly=True) as store:
        assert [q.sha for q in store.quarantined("lab")] == [BAD1, BAD2]
        assert [r.kind for r in store.history("lab")] == ["reconcile"]

    proc = gitops("unquarantine", "lab", BAD1[:8].upper(), "--reason",
                  "web1 was down, not the commit", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "lab: abcdef1111 released from quarantine by alice: web1 was down, not the commit "
        "(recorded as run #2); applied again at the daemon's next cycle if it is still the "
        "branch head"]
    history = gitops("history", "-e", "lab", env=env, cwd=tmp_path)
    newest = history.stdout.splitlines()[0]
    assert newest.startswith("#2 ") and " unquarantine abcdef1111 action " in newest
    assert "changed=" not in newest  # an operator's action ran nothing: no result, no changes
    assert newest.endswith("by alice: web1 was down, not the commit")
    oldest = history.stdout.splitlines()[1]  # the run has its result
    assert " reconcile " in oldest and " failed " in oldest and "changed=0" in oldest
    one = gitops("history", "--run", "2", env=env, cwd=tmp_path)
    assert one.stdout.startswith("run #2 unquarantine of lab by alice: an operator's action ")
    with Store(state, readonly=True) as store:
        assert [q.sha for q in store.quarantined("lab")] == [BAD2]
    again = gitops("unquarantine", "lab", BAD1, "--reason", "twice", "--json", env=env,
                   cwd=tmp_path)
    assert again.returncode == 2
    assert json.loads(again.stdout) == {
        "result": "error",
        "error": f"lab: {BAD1} is not quarantined (quarantined there: abcdef1222)"}


_HEXISH = st.text(alphabet="0123456789abcdefABCDEFg-~^ \n", max_size=45)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sha=st.one_of(st.text(max_size=60), _HEXISH,
                    st.integers(0, 40).map(lambda n: BAD1[:n]),
                    st.integers(0, 40).map(lambda n: BAD2[:n].upper())))
def test_unquarantine_sha_argument_fuzz_is_one_line_never_a_traceback(
        tmp_path: Path, sha: str) -> None:
    """Whatever text the SHA argument holds, ``gitops unquarantine`` either releases the one
    revision it names uniquely (exit 0) or refuses with exit 2 and one error line; never a
    traceback, never another exit code."""
    state = tmp_path / "state"
    if not state.exists():
        _quarantined(state)
    env = {"GITOPS_LISTEN": _closed_port(), "GITOPS_STATE_DIR": str(state)}
    result = CliRunner().invoke(main, ["unquarantine", "--reason", "fuzz", "lab", "--", sha],
                                env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        sha, result.exception)
    assert "Traceback" not in result.output and "settings file" not in result.output
    unique = (7 <= len(sha) <= 40 and all(c in "0123456789abcdefABCDEF" for c in sha)
              and sum(q.startswith(sha.lower()) for q in (BAD1, BAD2)) == 1)
    if unique:
        assert result.exit_code == 0, (sha, result.output)
        with Store(state) as store:  # quarantined again for the next example
            store.quarantine("lab", BAD1 if BAD1.startswith(sha.lower()) else BAD2, "again")
        return
    assert result.exit_code == 2, (sha, result.output)
    assert len(result.output.strip().splitlines()) == 1, (sha, result.output)
    assert result.output.startswith("error: "), (sha, result.output)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=st.one_of(st.integers(), st.integers(2**62, 2**70)),
       option=st.sampled_from([("history", "--run"), ("history", "--limit"),
                               ("incidents", "action", "INC-1", "--done")]))
def test_number_options_fuzz_answer_or_refuse_never_a_traceback(
        tmp_path: Path, number: int, option: tuple[str, ...]) -> None:
    """Whatever integer a run id, a row count or an item number is given, the command answers
    (exit 0) or refuses it with exit 2 naming the option or the missing row; never a
    traceback (a number past the database's integers was an OverflowError)."""
    state = tmp_path / "state"
    if not state.exists():
        _quarantined(state)
    result = CliRunner().invoke(main, [*option, str(number), "--state-dir", str(state)],
                                env={"GITOPS_LISTEN": _closed_port()})
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        number, result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), (number, result.output)
    if result.exit_code == 2:
        assert option[-1] in result.output or "no run" in result.output \
            or "no incident 'INC-1'" in result.output, (number, result.output)


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """``gitops history | head -1``: stdout closed by its reader is a normal end (exit 0,
    nothing on stderr), not ``error: Broken pipe``."""
    import os
    import sys

    state = tmp_path / "state"
    with Store(state) as store:
        for _ in range(30):
            store.finish_run(store.start_run("prod", "reconcile", None, actor="t"), "succeeded")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
        proc = subprocess.run([sys.executable, "-m", "gitops", "history", "--state-dir",
                               str(state)], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=env)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")
