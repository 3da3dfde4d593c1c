"""The operator's command line as a user runs it: settings, help, controls, the daemon's
runs, summaries and progress, one run in full, who acted. Real Git repositories, a real
store, a real ``gitops run`` daemon on loopback; every command a subprocess."""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import PROJECT, free_port
from clitools import gitops, sample_repo
from polling import wait_for
from test_page import record_run, revision

from gitops.cli import LiveProgress, main
from gitops.record.store import Store

COMMANDS = ("validate", "plan", "reconcile", "verify", "status", "history", "run", "suspend",
            "resume", "rollback", "retry", "unquarantine", "metrics", "incidents")


# -- settings -------------------------------------------------------------------------------


def _example(tmp_path: Path) -> Path:
    """gitops.example.toml as shipped, its state folder moved into ``tmp_path``."""
    text = (PROJECT / "gitops.example.toml").read_text()
    config = tmp_path / "gitops.toml"
    config.write_text(text.replace('"/var/lib/gitops"', f'"{tmp_path / "state"}"'))
    return config


def test_example_settings_work_with_their_token_variable_set(tmp_path: Path) -> None:
    """The example names the token GITOPS_API_TOKEN; with that variable set, commands start
    and the token is the variable's value (it was parsed as the setting itself)."""
    config = _example(tmp_path)
    (tmp_path / "state").mkdir()  # status reads an existing state folder, creates none
    proc = gitops("status", "--config", str(config), cwd=tmp_path,
                  env={"GITOPS_API_TOKEN": "s3cret-token"})
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-token" not in proc.stdout + proc.stderr
    code = ("from gitops.settings import load; t = load().api_token; "
            "print(t.env, t.reveal() == 's3cret-token')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "GITOPS_CONFIG": str(config),
                              "GITOPS_API_TOKEN": "s3cret-token"}, check=True).stdout
    assert out.split() == ["GITOPS_API_TOKEN", "True"]


def test_token_variable_alone_names_the_token(tmp_path: Path) -> None:
    """GITOPS_API_TOKEN set and no api_token in the settings: the token is that variable;
    a name outside the prefix in the settings works as well."""
    (tmp_path / "gitops.toml").write_text('api_token = { env = "MY_TOKEN" }\n')
    code = "from gitops.settings import load; t = load().api_token; print(t.env, t.reveal())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "GITOPS_API_TOKEN": "abc"}, check=True).stdout
    assert alone.split() == ["GITOPS_API_TOKEN", "abc"]
    named = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=tmp_path, env={**env, "MY_TOKEN": "xyz"}, check=True).stdout
    assert named.split() == ["MY_TOKEN", "xyz"]


# -- help -------------------------------------------------------------------------------------


def test_help_is_plain_text_and_lists_every_exit_code() -> None:
    """No reStructuredText markup in any command's help; the group's and each command's
    epilogue names exit codes 0, 1 and 2."""
    for args in [[], *([c] for c in COMMANDS)]:
        proc = gitops(*args, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "``" not in proc.stdout, (args, proc.stdout)
        epilog = " ".join(proc.stdout[proc.stdout.index("Exit codes:"):].split())
        assert all(f" {n} " in epilog for n in "012"), (args, epilog)


# -- benchmarks -------------------------------------------------------------------------------


def test_benchmarks_find_the_tools_beside_python_without_path() -> None:
    """bench/_common.tool finds the venv's pyinfra with the venv's bin not on PATH."""
    code = ("import sys; sys.path.insert(0, 'bench'); from _common import tool; "
            "print(tool('pyinfra'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PROJECT, env={**os.environ, "PATH": "/usr/bin:/bin"}, check=True)
    found = Path(out.stdout.strip())
    assert found.parent == Path(sys.executable).parent and found.name == "pyinfra"


# -- operator controls ------------------------------------------------------------------------


@pytest.fixture
def invalid(tmp_path: Path) -> tuple[Path, Path]:
    """A state repository whose head is invalid (runs end at once) and a state folder."""
    return sample_repo(tmp_path, invalid=True), tmp_path / "state"


def _runs(state: Path) -> list[dict[str, object]]:
    with Store(state) as store:
        return store.history(None, 100)


def test_suspended_environment_refuses_runs_unless_forced(invalid: tuple[Path, Path]) -> None:
    """Suspended: reconcile --once, retry and rollback exit 2 naming who suspended it and
    why, and record nothing; --force --reason runs, recorded as an override with who and why."""
    repo, state = invalid
    where = ["--repo", str(repo), "--state-dir", str(state)]
    assert gitops("suspend", "--reason", "change freeze", *where[2:]).returncode == 0
    before = len(_runs(state))
    for args in (["reconcile", "--once"], ["retry", "--failed"], ["rollback"]):
        proc = gitops(*args, *where)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "suspended by" in proc.stderr and "change freeze" in proc.stderr
        assert "--force --reason" in proc.stderr
    assert len(_runs(state)) == before
    proc = gitops("reconcile", "--once", "--force", *where)
    assert proc.returncode == 2 and "--force needs --reason" in proc.stderr
    proc = gitops("reconcile", "--once", "--force", "--reason", "hotfix for INC-7", *where,
                  env={"USER": "alice"})
    assert "run #" in proc.stdout
    override, run = _runs(state)[1], _runs(state)[0]
    assert override["kind"] == "override" and override["actor"] == "alice"
    assert "hotfix for INC-7" in str(override["reason"]) and "change freeze" in str(
        override["reason"])
    assert run["kind"] == "reconcile" and run["actor"] == "alice"


def test_held_environment_refuses_reconcile_once(invalid: tuple[Path, Path]) -> None:
    """An environment held at a rolled-back revision refuses reconcile --once (the head would
    replace the hold) until resume."""
    repo, state = invalid
    sha = subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True)
    with Store(state) as store:
        store.set_controls("lab", held_sha=sha.strip(), held_head=sha.strip(), actor="bob",
                           since="2026-12-01T10:00:00+00:00")
    proc = gitops("reconcile", "--once", "--repo", str(repo), "--state-dir", str(state))
    assert proc.returncode == 2 and "held at" in proc.stderr and "bob" in proc.stderr
    assert gitops("resume", "--state-dir", str(state)).returncode == 0
    proc = gitops("reconcile", "--once", "--repo", str(repo), "--state-dir", str(state))
    assert "held at" not in proc.stderr and "run #" in proc.stdout


# -- through a running daemon ---------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``gitops run`` watching an invalid repository as environment ``staging`` (inventory
    ``lab``); yields the folder holding its gitops.toml, and the state folder."""
    repo = sample_repo(tmp_path, invalid=True)
    state = tmp_path / "state"
    port = free_port()
    (tmp_path / "gitops.toml").write_text(
        f'state_dir = "{state}"\nlisten = "127.0.0.1:{port}"\n'
        f'[[environments]]\nname = "staging"\nrepo = "{repo}"\ninventory = "lab"\n'
        "interval = 3600\nwatch = false\n")
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gitops", "run"], cwd=tmp_path,
                            stdout=log, stderr=log)
    try:
        try:  # its first cycle reconciles the head once
            wait_for(lambda: _runs(state), 30, "the daemon's first run")
        except AssertionError as exc:
            raise AssertionError((tmp_path / "daemon.log").read_text()) from exc
        yield tmp_path, state
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_reconcile_through_the_daemon_waits_for_its_run(daemon: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """Found through ./gitops.toml, -e names the daemon's entry: reconcile waits for the
    daemon's run and prints its id and outcome, exiting as a local run would (2: invalid)."""
    folder, state = daemon
    first = len(_runs(state))
    proc = gitops("reconcile", "-e", "staging", "--reason", "check", cwd=folder)
    runs = _runs(state)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(runs) == first + 1 and runs[0]["reason"] == "check"
    assert f"run #{runs[0]['id']}: invalid" in proc.stdout
    assert "fail_percent" in proc.stderr
    proc = gitops("reconcile", "--no-wait", cwd=folder)
    assert proc.returncode == 0 and "the daemon will reconcile now" in proc.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = gitops("reconcile", "--config", str(folder / "gitops.toml"), cwd=elsewhere)
    assert proc.returncode == 2 and "run #" in proc.stdout
    assert all(r["actor"] != "gitops-daemon" for r in _runs(state)[:2])


def test_daemon_refusals_exit_2_with_its_message(daemon: tuple[Path, Path]) -> None:
    """A request the daemon refuses (retry with no failed host) exits 2 with its reason."""
    folder, _ = daemon
    proc = gitops("retry", "--failed", cwd=folder)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "daemon at 127.0.0.1:" in proc.stderr and "no failed hosts to retry" in proc.stderr


def test_unquarantine_through_the_daemon_reconciles_the_head_again(
        daemon: tuple[Path, Path]) -> None:
    """``gitops unquarantine staging SHA`` (the daemon's entry name) goes through its API: the
    quarantined head is released with the caller as actor (``local``: the lab mode trusts
    loopback), and the daemon reconciles it again at once as their run, though its last run
    of that head failed; a sha the daemon has not quarantined is its refusal, one line,
    exit 2."""
    folder, state = daemon
    head = subprocess.run(["git", "-C", str(folder / "repo"), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: _runs(state)[0]["result"] is not None, 30,
             "the daemon's first run of the head to end (invalid)")
    with Store(state) as store:  # as a rollback after a failed verification leaves it
        store.quarantine("lab", head, "verification failed on lab-1")
    before = len(_runs(state))
    proc = gitops("unquarantine", "staging", head[:9], "--reason", "lab-1 was down",
                  cwd=folder, env={"USER": "alice"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"lab: {head[:10]} released from quarantine by local: "
                                  "lab-1 was down (recorded as run #")
    wait_for(lambda: len(_runs(state)) >= before + 2 and _runs(state)[0]["sha"] is not None,
             30, "the unquarantine and its run, once that run resolved the head")
    rerun, event = _runs(state)[:2]
    assert (event["kind"], event["actor"], event["reason"]) == (
        "unquarantine", "local", "lab-1 was down")
    assert (rerun["kind"], rerun["sha"], rerun["actor"]) == ("reconcile", head, "local")
    again = gitops("unquarantine", "staging", head[:9], "--reason", "twice", cwd=folder)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.splitlines() == [
        f"error: daemon at {_listen(folder)}: lab: {head[:9]} is not quarantined "
        "(quarantined there: none)"]


def _listen(folder: Path) -> str:
    return str(tomllib.loads((folder / "gitops.toml").read_text())["listen"])


def test_once_takes_the_daemon_entrys_repository(daemon: tuple[Path, Path]) -> None:
    """reconcile --once -e staging runs here on the entry's repository and inventory (not
    ./ and -e as an inventory name)."""
    folder, state = daemon
    proc = gitops("reconcile", "--once", "-e", "staging", cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert "inventories/lab.yml" in proc.stderr and "run #" in proc.stdout
    assert _runs(state)[0]["environment"] == "lab"


# -- output -----------------------------------------------------------------------------------


def test_live_progress_on_a_terminal_plain_lines_otherwise() -> None:
    """On a terminal a live line keeps each host's state; elsewhere only plain lines."""
    lines = ["batch 1/1: applying on lab-1, lab-2",
             "lab-1: 5 passed, 0 failed, 0 errors (1.0s)",
             "lab-2: 4 passed, 1 failed, 0 errors (1.1s)"]
    tty, plain = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (plain, False)):
        progress = LiveProgress(stream, tty=is_tty)
        for line in lines:
            progress(line)
        progress.done()
    assert "lab-1 ✓ 5 passed  lab-2 ✗ 1 failed" in tty.getvalue()
    assert "\r" in tty.getvalue()
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
    assert plain.getvalue().splitlines() == [f"· {line}" for line in lines]


def _in_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Output of ``python -m gitops ARGS`` run on a pseudo-terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gitops", *args], stdin=follower,
                            stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return out.decode(errors="replace")


def test_no_color_is_honoured_on_a_terminal(invalid: tuple[Path, Path]) -> None:
    """On a terminal errors are red; with NO_COLOR set no colour code is written."""
    repo, state = invalid
    args = ["reconcile", "--once", "--repo", str(repo), "--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[31m" in _in_a_terminal(args, env)
    plain = _in_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert "invalid" in plain and "\x1b[3" not in plain and "\x1b[2m" not in plain


def test_history_of_one_run_shows_operations_and_full_check_messages(tmp_path: Path) -> None:
    """history --run N in text lists each host's operations and every check with its whole
    message, as the JSON has them."""
    state = tmp_path / "state"
    message = "assert False\n +  where False = <service nginx>.is_running\n(at checks.py:7)"
    with Store(state) as store:
        record_run(store, revision(10))
        run_id = record_run(store, revision(11), failing={
            ("lab-2", "web", "port 80 listening"): message})
    proc = gitops("history", "--run", str(run_id), "--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "changed   web: web: configure" in out
    assert "where False = <service nginx>.is_running" in out and "(at checks.py:7)" in out
    assert "✓ base/packages: pass" in out
    assert f"run #{run_id}: failed, 9 changed, 14 checks passed, 1 failed" in out


def test_actor_is_the_uid_name_without_user_variables(tmp_path: Path) -> None:
    """With USER, LOGNAME and SUDO_USER unset the recorded actor is the uid's login name."""
    import pwd

    state = tmp_path / "state"
    proc = gitops("suspend", "--reason", "r", "--state-dir", str(state),
                  unset=("USER", "LOGNAME", "SUDO_USER"))
    assert proc.returncode == 0, proc.stderr
    assert _runs(state)[0]["actor"] == pwd.getpwuid(os.getuid()).pw_name != "unknown"


def test_suspend_and_resume_print_their_record(tmp_path: Path) -> None:
    """suspend and resume say which history entry records them."""
    from click.testing import CliRunner

    state = tmp_path / "state"
    out = CliRunner().invoke(main, ["suspend", "--reason", "freeze", "--state-dir", str(state)])
    assert out.exit_code == 0 and "recorded as run #1" in out.output
    out = CliRunner().invoke(main, ["resume", "--state-dir", str(state)])
    assert out.exit_code == 0 and "recorded as run #2" in out.output
    assert shutil.which("true")
