"""Stage 5, verify: checks.py loading, argument binding, assertion messages, and real runs."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from gitops.errors import WorkerError
from gitops.lab.common import cmdlines
from gitops.model import DeclaredHost, DeclaredState, EnvironmentSettings, ResolvedSSH
from gitops.pipeline.verify import SshConnections, verify
from gitops.records import CheckResult, VerifyReport
from gitops.workers import verify_checks, verify_shell, verify_ssh

DEMO_CHECKS = """
def test_os_is_bookworm(host):
    assert "bookworm" in host.file("/etc/os-release").content_string

def test_sshd_running(host):
    assert host.service("ssh").is_running

def test_missing_file(host):
    assert host.file("/etc/gitops-verify-missing").exists

def test_raises(host):
    raise ValueError("boom from check")

def test_params_user(host, params):
    assert host.user(params["user"]).uid == params["uid"]

def test_unknown_argument(host, flavour):
    pass

def helper_not_a_check(host):
    raise AssertionError("never called")
"""


def _ssh(**overrides: Any) -> ResolvedSSH:
    values: dict[str, Any] = {
        "user": "root",
        "port": 22,
        "key_file": None,
        "known_hosts_file": "/dev/null",
        "host_key_checking": "no",
        "connect_timeout": 5,
    }
    values.update(overrides)
    return ResolvedSSH(**values)


def _host(name: str, address: str, services: dict[str, Any], **ssh: Any) -> DeclaredHost:
    return DeclaredHost(
        name=name, address=address, groups=("all",), ssh=_ssh(**ssh), vars={}, services=services
    )


def _state(root: Path, hosts: list[DeclaredHost], parallel: int = 20) -> DeclaredState:
    return DeclaredState(
        environment="test",
        root=str(root),
        settings=EnvironmentSettings(parallel=parallel),
        hosts=tuple(hosts),
        service_order=("demo",),
    )


def _write_checks(root: Path, service: str, source: str) -> Path:
    path = root / "deploys" / service / "checks.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short TMPDIR for the worker, so this test can tell its ssh processes from others'."""
    path = tempfile.mkdtemp(prefix="gvt", dir="/tmp")
    monkeypatch.setenv("TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _our_ssh(marker: str) -> dict[int, str]:
    """pid -> command line of the running ssh processes that mention ``marker`` (a folder)."""
    return {pid: line for pid, argv in cmdlines().items()
            if marker in (line := " ".join(argv)) and "ssh" in line}


def _our_ssh_processes(marker: str) -> list[str]:
    """Command lines of running ssh processes that mention ``marker`` (a TMPDIR)."""
    return list(_our_ssh(marker).values())


def _no_ssh_left(marker: str, grace: float = 3.0) -> list[str]:
    deadline = time.monotonic() + grace
    while (left := _our_ssh_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _by_check(report: VerifyReport, host: str) -> dict[str, CheckResult]:
    return {r.check: r for r in report.results if r.host == host}


# --- without hosts ------------------------------------------------------------------------


def test_bind_arguments_passes_host_and_params_by_name() -> None:
    """A check gets exactly the known arguments it names, in any order."""

    def check(params: object, host: object) -> None: ...

    assert verify_checks.bind_arguments(check, {"host": 1, "params": 2}) == {"params": 2, "host": 1}


def test_bind_arguments_allows_fewer_arguments() -> None:
    """A check may take only host, or nothing at all."""

    def only_host(host: object) -> None: ...

    def nothing() -> None: ...

    assert verify_checks.bind_arguments(only_host, {"host": 1, "params": 2}) == {"host": 1}
    assert verify_checks.bind_arguments(nothing, {"host": 1, "params": 2}) == {}


def test_bind_arguments_rejects_unknown_argument_by_name() -> None:
    """An argument the stage does not provide is an error naming it."""

    def check(host: object, flavour: object) -> None: ...

    with pytest.raises(verify_checks.CheckSignatureError, match="'flavour'"):
        verify_checks.bind_arguments(check, {"host": 1, "params": 2})


def test_bind_arguments_leaves_unknown_argument_with_default() -> None:
    """An unknown argument that has a default keeps its default."""

    def check(host: object, retries: int = 3) -> None: ...

    assert verify_checks.bind_arguments(check, {"host": 1, "params": 2}) == {"host": 1}


def test_rewritten_assert_explains_values(tmp_path: Path) -> None:
    """A failing assert in a checks file carries the expression and the values, as in pytest."""
    verify_checks.install_assertion_explanations()
    source = b"def test_eq():\n    got = 'bullseye'\n    assert got == 'bookworm'\n"
    namespace: dict[str, Any] = {}
    exec(verify_checks.compile_checks(source, str(tmp_path / "checks.py")), namespace)
    with pytest.raises(AssertionError) as info:
        namespace["test_eq"]()
    assert "assert 'bullseye' == 'bookworm'" in str(info.value)
    assert "- bookworm" in str(info.value)
    assert "+ bullseye" in str(info.value)


def test_load_suite_collects_test_functions_in_order(tmp_path: Path) -> None:
    """Only module-level test_* functions are checks, in definition order."""
    path = _write_checks(tmp_path, "demo", DEMO_CHECKS)
    suite = verify_checks.load_suite("demo", path, 0)
    assert suite.error is None
    assert [name for name, _ in suite.checks] == [
        "test_os_is_bookworm",
        "test_sshd_running",
        "test_missing_file",
        "test_raises",
        "test_params_user",
        "test_unknown_argument",
    ]


def test_load_suite_reports_a_broken_file_with_its_line(tmp_path: Path) -> None:
    """A checks.py that does not import is an error naming the file and line, not a crash."""
    path = _write_checks(tmp_path, "demo", "def test_x(host):\n    pass\n\nimport nope_not_here\n")
    suite = verify_checks.load_suite("demo", path, 0)
    assert suite.checks == ()
    assert suite.error is not None
    assert "nope_not_here" in suite.error
    assert "checks.py:4" in suite.error


def test_run_check_statuses(tmp_path: Path) -> None:
    """pass when it returns, fail on AssertionError with location, error on anything else."""
    verify_checks.install_assertion_explanations()
    path = _write_checks(
        tmp_path,
        "demo",
        """
        def test_ok(host):
            assert host == "h"

        def test_fail(host, params):
            assert params["n"] > 5

        def test_error(host):
            {}["missing"]

        def test_unknown(host, other):
            pass
        """,
    )
    suite = verify_checks.load_suite("demo", path, 0)
    results = {
        name: verify_checks.run_check("h1", suite, name, func, {"host": "h", "params": {"n": 1}})
        for name, func in suite.checks
    }
    assert results["test_ok"].status == "pass"
    assert results["test_fail"].status == "fail"
    assert "assert 1 > 5" in results["test_fail"].message
    assert "(at deploys/demo/checks.py:6)" in results["test_fail"].message
    assert results["test_error"].status == "error"
    assert results["test_error"].message.startswith("KeyError: 'missing'")
    assert results["test_unknown"].status == "error"
    assert "'other'" in results["test_unknown"].message
    assert all(r.host == "h1" and r.service == "demo" for r in results.values())


class _LocalShellBackend(verify_shell.ShellBackend):
    """The worker's shell protocol against a local bash standing in for the remote shell."""

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )


def test_shell_backend_keeps_commands_apart() -> None:
    """Each command gets its own exit status, stdout and stderr, exactly, in one shell."""
    backend = _LocalShellBackend("local-test")
    try:
        first = backend.run("printf 'a\\nb'; echo oops >&2; exit 3")
        assert (first.rc, first.stdout, first.stderr) == (3, "a\nb", "oops\n")
        assert backend.run("true").rc == 0
        assert backend.run("cd /; X=1").rc == 0
        after = backend.run("pwd; echo ${X:-unset}")
        assert after.stdout == f"{Path.cwd()}\nunset\n"
        assert backend.run("cat").stdout == ""
        assert backend.run("if then").rc != 0
        assert backend.run("echo %s", "it's $HOME").stdout == "it's $HOME\n"
        assert backend.run("echo %s", "héllo wörld").stdout == "héllo wörld\n"
        big = backend.run("head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2")
        assert (len(big.stdout_bytes), len(big.stderr_bytes)) == (300000, 200000)
        assert backend.run("exec sh -c 'exit 7'").rc == 7
    finally:
        backend.close()


def test_shell_backend_runs_a_repeated_command_once(tmp_path: Path) -> None:
    """One pass reads a host as a snapshot: the same command again gets the first answer."""
    backend = _LocalShellBackend("local-test")
    counter = tmp_path / "count"
    try:
        first = backend.run(f"sh -c 'echo . >> {counter}; wc -l < {counter}'")
        again = backend.run(f"sh -c 'echo . >> {counter}; wc -l < {counter}'")
        assert first.stdout == again.stdout == "1\n"
        assert counter.read_text() == ".\n"
    finally:
        backend.close()


def test_shell_backend_reports_a_lost_session_as_ssh_failure() -> None:
    """A shell that dies is a RuntimeError with exit status 255; the next command reopens it."""
    backend = _LocalShellBackend("local-test")
    try:
        with pytest.raises(RuntimeError) as info:
            backend.run("echo bye >&2; kill -9 $$")
        assert info.value.args[0].rc == 255
        assert backend.run("echo again").stdout == "again\n"
    finally:
        backend.close()


def test_ssh_config_blocks_per_host_and_kept_connections(tmp_path: Path) -> None:
    """Each host block sets its address, identity and host-key policy; only with a connection
    folder does it keep a control master there (named by ssh's own %C hash)."""
    hosts = {
        "web-1": _host("web-1", "10.0.0.1", {}, key_file="/k/id", port=2222),
        "_host-1": _host("web-2", "10.0.0.2", {}, known_hosts_file=None),
    }
    first, second = verify_ssh.ssh_config_text(hosts).split("\n\n")
    assert "Host web-1\n  HostName 10.0.0.1\n  Port 2222\n  User root" in first
    assert "IdentityFile /k/id" in first
    assert "UserKnownHostsFile /dev/null" in first
    assert "StrictHostKeyChecking no" in first
    assert "BatchMode yes" in first
    assert "Control" not in first + second
    assert "IdentityFile" not in second
    assert "UserKnownHostsFile" not in second
    kept = verify_ssh.ssh_config_text(hosts, str(tmp_path))
    assert kept.count(f"ControlPath {tmp_path}/%C") == 2
    assert kept.count("ControlMaster auto") == 2
    assert "ControlPersist" in kept and "ServerAliveInterval" in kept


def test_exec_form_only_for_one_external_command() -> None:
    """A lone external command is exec'd; lists, pipes, redirections, builtins are not."""
    assert verify_shell.exec_form("stat -Lc %a /etc/motd") == "exec stat -Lc %a /etc/motd"
    assert verify_shell.exec_form("sudo /bin/sh -c 'a; b | c'") == "exec sudo /bin/sh -c 'a; b | c'"
    for cmd in ("command -v ss", "test -f /x", "X=1 env", "ls | wc -l", "a && b", "a; b",
                "cat 2>/dev/null", "echo hi", "a\nb", "f $(a; b)", "'unbalanced"):
        assert verify_shell.exec_form(cmd) == cmd


def test_ssh_alias_falls_back_for_unusual_names() -> None:
    """Plain host names are their own SSH alias; others get one that cannot collide."""
    assert verify_ssh.ssh_alias("web-1.example", 0) == "web-1.example"
    assert verify_ssh.ssh_alias("odd name", 3) == "_host-3"


def test_verify_reports_refused_loopback_host(tmp_path: Path, short_tmpdir: str) -> None:
    """A host whose SSH port refuses lands in host_errors with why, and no ssh is left."""
    _write_checks(tmp_path, "demo", DEMO_CHECKS)
    state = _state(tmp_path, [_host("closed", "127.0.0.1", {"demo": {}}, port=1)])
    lines: list[str] = []
    report = verify(state, timeout=60, on_progress=lines.append)
    assert report.results == ()
    assert "Connection refused" in report.host_errors["closed"]
    assert any(line.startswith("closed: unreachable") for line in lines), lines
    assert not report.ok
    assert _no_ssh_left(short_tmpdir) == []


def test_verify_survives_prints_in_checks(tmp_path: Path) -> None:
    """A print() in a checks file goes to the worker's stderr, not into the JSON report."""
    _write_checks(tmp_path, "demo", 'print("hello from checks")\n')
    state = _state(tmp_path, [_host("closed", "127.0.0.1", {"demo": {}}, port=1)])
    report = verify(state, timeout=60)
    assert "closed" in report.host_errors


def test_verify_timeout_raises_worker_error(tmp_path: Path) -> None:
    """A worker that does not finish in time is killed and reported as WorkerError."""
    state = _state(tmp_path, [])
    with pytest.raises(WorkerError, match="timed out"):
        verify(state, timeout=0.01)


def test_verify_does_not_import_testinfra_in_parent() -> None:
    """The parent-side stage module imports neither testinfra nor pytest's assertion code."""
    import subprocess
    import sys

    code = (
        "import sys, gitops.pipeline.verify; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('testinfra', '_pytest', 'pytest')]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


# --- on lab hosts -------------------------------------------------------------------------


class LabRun(NamedTuple):
    report: VerifyReport
    lab: Any
    ghost: str
    tmpdir: str


@pytest.fixture(scope="module")
def lab_run(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    """One verify of the demo checks on every lab host plus one address nobody answers."""
    root = tmp_path_factory.mktemp("verify-state")
    _write_checks(root, "demo", DEMO_CHECKS)
    net = ipaddress.ip_network(f"{lab.hosts[0].address}/24", strict=False)
    ghost_address = str(net.network_address + 250)
    assert ghost_address not in {h.address for h in lab.hosts}
    hosts = [
        _host(h.name, h.address, {"demo": {"user": "root", "uid": 0}}, key_file=str(lab.key_file))
        for h in lab.hosts
    ]
    hosts.append(
        _host(
            "ghost", ghost_address, {"demo": {"user": "root", "uid": 0}}, key_file=str(lab.key_file)
        )
    )
    tmpdir = tempfile.mkdtemp(prefix="gvt", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", tmpdir)
        report = verify(_state(root, hosts), timeout=120)
    yield LabRun(report, lab, ghost_address, tmpdir)
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.lab
def test_lab_passing_checks_pass_on_every_host(lab_run: LabRun) -> None:
    """Checks that hold (bookworm, sshd running, params user) pass on every reachable host."""
    report, lab = lab_run.report, lab_run.lab
    for h in lab.hosts:
        checks = _by_check(report, h.name)
        for name in ("test_os_is_bookworm", "test_sshd_running", "test_params_user"):
            assert checks[name].status == "pass", checks[name].message
            assert checks[name].duration_s > 0


@pytest.mark.lab
def test_lab_failing_assert_carries_detail(lab_run: LabRun) -> None:
    """A failing assert is 'fail' with the assertion expression and values in its message."""
    report, lab = lab_run.report, lab_run.lab
    for h in lab.hosts:
        result = _by_check(report, h.name)["test_missing_file"]
        assert result.status == "fail"
        assert "assert False" in result.message
        assert "/etc/gitops-verify-missing" in result.message
        assert "exists" in result.message
        assert "checks.py:" in result.message


@pytest.mark.lab
def test_lab_other_exceptions_are_errors(lab_run: LabRun) -> None:
    """A check raising something else, or asking for an unknown argument, is 'error'."""
    report, lab = lab_run.report, lab_run.lab
    for h in lab.hosts:
        checks = _by_check(report, h.name)
        assert checks["test_raises"].status == "error"
        assert "ValueError: boom from check" in checks["test_raises"].message
        assert checks["test_unknown_argument"].status == "error"
        assert "'flavour'" in checks["test_unknown_argument"].message
        assert "helper_not_a_check" not in checks


@pytest.mark.lab
def test_lab_unreachable_host_in_host_errors(lab_run: LabRun) -> None:
    """A host nobody answers is in host_errors with why, has no results, and others still run."""
    report, lab, ghost_address = lab_run.report, lab_run.lab, lab_run.ghost
    assert set(report.host_errors) == {"ghost"}
    assert "Could not connect to" in report.host_errors["ghost"]
    assert ghost_address in report.host_errors["ghost"]
    assert not [r for r in report.results if r.host == "ghost"]
    assert {r.host for r in report.results} == {h.name for h in lab.hosts}
    assert report.failed_hosts == sorted([*(h.name for h in lab.hosts), "ghost"])


@pytest.mark.lab
def test_lab_leaves_no_ssh_processes(lab_run: LabRun) -> None:
    """After verify returns, no ssh client or control master of the worker is still running."""
    assert _no_ssh_left(lab_run.tmpdir) == []


@pytest.mark.lab
def test_lab_kept_connections_serve_the_next_verify(lab: Any, tmp_path: Path) -> None:
    """With a connection folder, each host keeps one SSH master that the next verify reuses
    (no new connection), and closing the folder ends every master."""
    _write_checks(tmp_path, "demo", "def test_up(host):\n    assert host.run('true').rc == 0\n")
    hosts = [_host(h.name, h.address, {"demo": {}}, key_file=str(lab.key_file))
             for h in lab.hosts]
    with SshConnections() as kept:
        marker = str(kept.path)
        assert verify(_state(tmp_path, hosts), timeout=120, connections=kept.path).ok
        masters = _our_ssh_processes(marker)
        assert len(masters) == len(hosts) == len(list(kept.path.iterdir()))
        pids = set(_our_ssh(marker))
        before = {h.address: _established_ssh(h.address) for h in lab.hosts}
        assert verify(_state(tmp_path, hosts), timeout=120, connections=kept.path).ok
        assert set(_our_ssh(marker)) == pids
        assert {h.address: _established_ssh(h.address) for h in lab.hosts} == before
    assert _no_ssh_left(marker) == []
    assert not kept.path.exists()


def _established_ssh(address: str) -> set[str]:
    """The local ends of the established TCP connections to ``address`` port 22."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", address,
                          "dport", "=", ":22"], capture_output=True, text=True, check=True)
    return {line.split()[2] for line in out.stdout.splitlines()}


@pytest.mark.lab
def test_lab_params_are_per_host(lab: Any, tmp_path: Path) -> None:
    """Each host's checks see that host's own validated parameters."""
    _write_checks(
        tmp_path,
        "demo",
        """
        def test_marker(host, params):
            assert params["expect"] == "yes", params["why"]
        """,
    )
    first, second = lab.hosts[0], lab.hosts[1]
    hosts = [
        _host(
            first.name,
            first.address,
            {"demo": {"expect": "yes", "why": "-"}},
            key_file=str(lab.key_file),
        ),
        _host(
            second.name,
            second.address,
            {"demo": {"expect": "no", "why": "declared no"}},
            key_file=str(lab.key_file),
        ),
    ]
    report = verify(_state(tmp_path, hosts), timeout=120)
    assert _by_check(report, first.name)["test_marker"].status == "pass"
    failed = _by_check(report, second.name)["test_marker"]
    assert failed.status == "fail"
    assert "declared no" in failed.message


def test_kept_connections_need_a_private_folder(tmp_path: Path) -> None:
    """The folder is made on first use (mode 0700); one others may write to is refused."""
    kept = SshConnections()
    assert not kept.path.exists()
    kept.close()  # nothing made, nothing to do
    open_to_all = tmp_path / "shared"
    open_to_all.mkdir(mode=0o777)
    open_to_all.chmod(0o777)
    with pytest.raises(WorkerError, match="not a private folder"):
        verify(_state(tmp_path, []), connections=open_to_all)


def test_connection_folders_of_gone_processes_are_pruned() -> None:
    """A folder left by a daemon killed with kill -9 goes at the next start; live ones stay."""
    live = SshConnections()
    live.path.mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = live.path.with_name(f"gitops-ssh-{dead.pid}-0123456789ab")
    left.mkdir(mode=0o700)
    try:
        assert left in SshConnections.prune()
        assert not left.exists() and live.path.is_dir()
    finally:
        live.close()
        shutil.rmtree(left, ignore_errors=True)


def test_a_failing_command_shows_its_command_exit_code_and_output(tmp_path: Path) -> None:
    """A check failing on a command's result shows the command, its exit code and output,
    not ``CommandResult(backend=<...ShellBackend object at 0x...>``."""
    import testinfra.host

    verify_checks.install_assertion_explanations()
    path = _write_checks(tmp_path, "redis", """
        def test_ping(host):
            assert host.run("echo 'Could not connect' >&2; exit 3").rc == 0

        def test_output(host):
            host.check_output("printf PONG; exit 4")
        """)
    suite = verify_checks.load_suite("redis", path, 0)
    backend = _LocalShellBackend("local-test")
    try:
        host = testinfra.host.Host(backend)
        ping, output = (verify_checks.run_check("h1", suite, name, func, {"host": host})
                        for name, func in suite.checks)
    finally:
        backend.close()
    assert "`echo 'Could not connect' >&2; exit 3` (exit 3" in ping.message
    assert "stderr: 'Could not connect\\n'" in ping.message
    assert "Unexpected exit code 4 for `printf PONG; exit 4` (exit 4, stdout: 'PONG'" \
        in output.message
    assert not any("backend=" in m or "object at 0x" in m for m in (ping.message,
                                                                     output.message))
