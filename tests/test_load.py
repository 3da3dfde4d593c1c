"""Validation of a state repository (gitops.pipeline.load): the syntax of every value that reaches
an
ssh_config or a command line, YAML that would lose data, services' Python files, warnings,
and the same checks in validate, validate --worktree, plan, reconcile and the daemon."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builders import commit, git_repo, init_repo, load_problems
from mutations import make_sample

from gitops.errors import InvalidDeclaration
from gitops.model import DeclaredHost, ResolvedSSH, check_address, check_path, check_user
from gitops.pipeline import load as load_module
from gitops.pipeline.load import load
from gitops.workers import verify_ssh, verify_worker

INJECTED = "10.213.0.11\\n  ProxyCommand sh -c 'touch {marker}'"


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """The project's sample (inventories/lab.yml, deploys/) in a fresh Git repository."""
    return git_repo(make_sample(tmp_path / "repo", links=False), message="x")


def _edit(repo: Path, old: str, new: str, rel: str = "inventories/lab.yml") -> None:
    path = repo / rel
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _gitops(repo: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", *args, "--repo", str(repo), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=300)


def _line_of(repo: Path, needle: str, rel: str = "inventories/lab.yml") -> int:
    lines = (repo / rel).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --- the address-with-newline injection and a deploy.py syntax error, end to end ----------


@pytest.mark.parametrize("command", [["validate", "--worktree"], ["validate"], ["plan"],
                                     ["reconcile", "--once"], ["verify"]])
def test_injected_address_is_refused_by_every_command(sample: Path, tmp_path: Path,
                                                      command: list[str]) -> None:
    """An address holding a newline and a ProxyCommand exits 2 with file:line from validate,
    plan, reconcile and verify, and the injected command never runs."""
    marker = tmp_path / "pwned"
    _edit(sample, "address: 10.213.0.11", f'address: "{INJECTED.format(marker=marker)}"')
    commit(sample, "x")
    proc = _gitops(sample, tmp_path / "state", *command)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"inventories/lab.yml:{_line_of(sample, 'ProxyCommand')} hosts.lab-1.address" \
        in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("command", [["validate", "--worktree"], ["plan"],
                                     ["reconcile", "--once"]])
def test_deploy_syntax_error_is_invalid_before_any_host(sample: Path, tmp_path: Path,
                                                       command: list[str]) -> None:
    """A syntax error in a used service's deploy.py exits 2 naming deploy.py and its line,
    and nothing is planned or applied (the run is recorded as invalid)."""
    deploy = sample / "deploys/web/deploy.py"
    lines = deploy.read_text().splitlines()
    deploy.write_text("\n".join([*lines[:5], "if broken", *lines[5:]]) + "\n")
    commit(sample, "x")
    proc = _gitops(sample, tmp_path / "state", *command, "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    problems = [p if isinstance(p, str) else f"{p['file']}:{p['line']}: {p['message']}"
                for p in out["problems"]]  # validate: objects; plan, reconcile: strings
    assert any(p.startswith("deploys/web/deploy.py:6: syntax error") for p in problems), problems
    assert out.get("plan") is None and out.get("apply") is None


def test_validate_leaves_no_snapshot_behind(sample: Path, tmp_path: Path) -> None:
    """Commits validated one by one (as CI validates each pull request), valid or not,
    leave nothing in the state folder's snapshots: validate keeps no extraction."""
    state = tmp_path / "state"
    for n in range(3):
        _edit(sample, f"parallel: {20 + n}", f"parallel: {21 + n}")
        commit(sample, "x")
        assert _gitops(sample, state, "validate").returncode == 0
    _edit(sample, "fail_percent: 34", "fail_percent: 340")
    commit(sample, "x")
    assert _gitops(sample, state, "validate").returncode == 2
    assert list((state / "snapshots").iterdir()) == []


def test_daemon_path_loads_with_the_same_checks(sample: Path, tmp_path: Path) -> None:
    """The reconcile the daemon runs (reconcile.run) refuses the same deploy.py syntax error."""
    from gitops.pipeline import reconcile

    _edit(sample, "from pyinfra", "from pyinfra import (", "deploys/app/deploy.py")
    commit(sample, "x")
    target = reconcile.Target(repo=str(sample), branch="main", environment="lab",
                              state_dir=tmp_path / "state")
    outcome = reconcile.run(target, reconcile.Request(reason="test"))
    assert outcome.result == "invalid"
    assert isinstance(outcome.error, InvalidDeclaration)
    assert outcome.error.problems[0].file == "deploys/app/deploy.py"
    assert outcome.apply is None and outcome.verify is None


# --- the syntax of values --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["10.213.0.11", "::1", "2001:db8::1", "web-1.prod.example.com",
                                   "localhost", "a" * 63 + ".example"])
def test_addresses_accepted(value: str) -> None:
    """IP addresses (v4, v6) and DNS names are host addresses."""
    assert check_address(value) == value


@pytest.mark.parametrize("value", ["10.213.0.11\n  ProxyCommand x", "10.0.0.256", "a b",
                                   "-oProxyCommand=x", "fe80::1%eth0", "", "a..b", "-a.com",
                                   "a_b.com", "x" * 64 + ".com", "host.", "é.com", "1.2.3"])
def test_addresses_refused(value: str) -> None:
    """Anything else (newlines, spaces, options, zones, bad labels, bad IPs) is refused."""
    with pytest.raises(ValueError):
        check_address(value)


@pytest.mark.parametrize(("check", "good", "bad"), [
    (check_user, ["root", "ops", "deploy-bot", "_svc", "a.b"],
     ["Root", "-oX", "root\n", "a b", "", "1ops", "x" * 33, "us%r"]),
    (check_path, ["/var/lib/gitops/id_ed25519", "~/.ssh/id_ed25519", "/dev/null", "/a b/k"],
     ["id_ed25519", "/k\n", '/k"', "/k%h", "/$HOME/k", "~root/k", "/k\\x", "/k\x00"]),
])
def test_users_and_paths(check: Any, good: list[str], bad: list[str]) -> None:
    """SSH users are POSIX user names; key paths are absolute or ~/ with plain characters."""
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(ValueError):
            check(value)


@pytest.mark.parametrize(("old", "new", "field"), [
    ("    user: root", "    user: 'root -oProxyCommand=x'", "settings.ssh.user"),
    ("    key_file: /var/lib/gitops/lab/gitops/id_ed25519", '    key_file: "/k\\nHost *"',
     "settings.ssh.key_file"),
    ("  lab-2:", "  'lab 2':", "hosts.lab 2"),
    ("  web:\n    services:", '  "web\\n":\n    services:', "groups.web\\n"),
    ("      base:", "      ../base:", "groups.all.services.../base"),
    ("    groups: [web]", "    groups: [web, nope]", "hosts.lab-1.groups.1"),
    ("(throwaway)\"", "(throwaway)\\nssh-rsa AAAA injected\"",
     "groups.all.services.base.admin_keys.0"),
])
def test_inventory_values_refused_at_their_line(sample: Path, old: str, new: str,
                                                field: str) -> None:
    """Users, key paths, host, group and service names outside their syntax (and a sample
    service's admin key holding a newline) are problems at the value's line, naming the field."""
    _edit(sample, old, new)
    problems = load_problems(sample)
    assert any(f" {field}: " in p for p in problems), problems


# --- YAML that would lose data or crash --------------------------------------------------


@pytest.mark.parametrize(("text", "line", "message"), [
    (b"hosts:\n  a:\n    groups: [web]\n  a:\n    groups: [x]\n", 4,
     "hosts.a: duplicate key (first at line 2)"),
    (b"hosts:\n  a:\n    groups: [\xff]\n", 3, "not UTF-8"),
    (b"hosts: !!python/object/apply:os.system ['true']\n", 1, "could not determine a constructor"),
    (b"hosts:\n  a: !!binary aGVsbG8=\n", 2, "tag !!binary is not allowed"),
    (b"hosts:\n  a: !!set {x}\n", 2, "tag !!set is not allowed"),
    (b"hosts:\n  1: {groups: [web]}\n", 2, "a key should be a string"),
    (b"hosts:\n  yes: {groups: [web]}\n", 2, "a key should be a string"),
    (b"hosts:\n  ? [a]\n  : {}\n", 2, "a key should be a string"),
    (b"hosts: &a\n  x: *a\n", 1, "an alias refers to itself"),
    (b"a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     b"e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", 5, "expands to more than"),
    (b"hosts: " + b"[" * 100 + b"]" * 100 + b"\n", 1, "nested deeper than"),
    (b"hosts: {}\n---\nhosts: {}\n", 2, "expected a single document"),
    (b"hosts:\n  a:\n\tgroups: [web]\n", 3, "YAML:"),
    (b"hosts:\n  a: \x07\n", 2, "is not allowed"),
    (b"hosts: [unclosed\n", 2, "YAML:"),
])
def test_yaml_that_would_lose_data_is_a_problem_at_its_line(
        sample: Path, text: bytes, line: int, message: str) -> None:
    """Duplicate keys, bytes that are not UTF-8, object tags, non-string keys, alias bombs,
    deep nesting and syntax errors are one problem at file:line, never a traceback."""
    (sample / "inventories/lab.yml").write_bytes(text)
    problems = load_problems(sample)
    assert problems[0].startswith(f"inventories/lab.yml:{line}"), problems
    assert message in problems[0], problems


def test_a_service_or_group_listed_with_nothing_under_it_is_empty(sample: Path) -> None:
    """``web:`` with nothing under it lists the service with no parameters (its model needs
    none: valid, its defaults), and ``edge:`` so declared is a group of no services."""
    _edit(sample, "      web:\n        listen_port: 80\n        app_port: 8000\n",
          "      web:\n")
    _edit(sample, "  web:\n    services:", "  edge:\n  web:\n    services:")
    _edit(sample, "groups: [web]", "groups: [web, edge]")
    state = load(sample, "lab")
    lab1 = next(h for h in state.hosts if h.name == "lab-1")
    assert lab1.groups == ("web", "edge")
    assert lab1.services["web"]["listen_port"] == 80


def test_unquoted_dates_stay_strings(sample: Path) -> None:
    """A value that looks like a date is kept as the string written (no silent date)."""
    _edit(sample, "        environment: lab", "        environment: 2024-01-01")
    state = load(sample, "lab")
    assert state.hosts[0].services["base"]["environment"] == "2024-01-01"


def test_read_yaml_is_the_one_reader(sample: Path) -> None:
    """read_yaml returns the data and the line of every key path."""
    data, lines = load_module.read_yaml(sample / "inventories/lab.yml", "inventories/lab.yml")
    assert data["hosts"]["lab-1"]["address"] == "10.213.0.11"
    assert lines[("hosts", "lab-1", "address")] == _line_of(sample, "address: 10.213.0.11")


# --- the services' Python files -----------------------------------------------------------


@pytest.mark.parametrize(("rel", "old", "new", "expected"), [
    ("deploys/app/checks.py", "def test_healthz(host, params):", "def test_healthz(host, params)",
     "deploys/app/checks.py:{line}: syntax error"),
    ("deploys/web/model.py", "class Params(BaseModel):", "class Params(BaseModel)",
     "deploys/web/model.py:{line}: syntax error"),
    ("deploys/app/checks.py", "def test_healthz(host, params):", "def test_healthz(host, prams):",
     "deploys/app/checks.py:{line} test_healthz: takes prams"),
    ("deploys/app/checks.py", "def test_healthz(host, params):",
     "async def test_healthz(host, params):", "deploys/app/checks.py:{line} test_healthz: a check "
     "cannot be async"),
    ("deploys/web/model.py", "class Params(BaseModel):", "raise RuntimeError\nclass Params:",
     "deploys/web/model.py:{line}: cannot import: RuntimeError"),
])
def test_service_python_problems_at_their_line(sample: Path, rel: str, old: str, new: str,
                                               expected: str) -> None:
    """Syntax errors in checks.py or model.py, a check taking something other than host and
    params, an async check and a model.py that fails to import are problems at their line."""
    line = _line_of(sample, old, rel)
    _edit(sample, old, new, rel)
    problems = load_problems(sample)
    assert any(p.startswith(expected.format(line=line)) for p in problems), problems


def test_checks_without_tests_and_never_executed(sample: Path, tmp_path: Path) -> None:
    """A checks.py with no test_ function is a problem; validation never runs checks.py
    (nor deploy.py): code at their top level leaves no trace."""
    marker = tmp_path / "ran"
    (sample / "deploys/app/checks.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (sample / "deploys/web/deploy.py").write_text(f"open({str(marker)!r}, 'w')\n")
    problems = load_problems(sample)
    assert problems == ["deploys/app/checks.py:1: no check functions: define "
                        "test_<name>(host, params) functions"]
    assert not marker.exists()


# --- services without a model -----------------------------------------------------------


def test_service_without_model_warns_or_fails(sample: Path, tmp_path: Path) -> None:
    """A used service without model.py is valid with a warning naming the service (printed by
    validate); with settings.require_models it is an error at the inventory line."""
    (sample / "deploys/web/model.py").unlink()
    _edit(sample, "        app_port: 8000", "        app_prot: 8000")  # a typo nobody sees
    state = load(sample, "lab")
    assert len(state.warnings) == 1 and "'web' has no deploys/web/model.py" in state.warnings[0]
    proc = _gitops(sample, tmp_path / "state", "validate", "--worktree")
    assert proc.returncode == 0 and "warning: inventories/lab.yml:" in proc.stderr
    _edit(sample, "  parallel: 20", "  parallel: 20\n  require_models: true")
    problems = load_problems(sample)
    assert any("'web' has no deploys/web/model.py" in p and "require_models" in p
               for p in problems), problems


def test_service_without_checks_warns_or_fails(sample: Path, tmp_path: Path) -> None:
    """A used service without checks.py is valid with a warning (printed by validate): its
    hosts are applied, not verified by it; with settings.require_checks (on in the sample) it
    is an error at the inventory line that uses it."""
    (sample / "deploys/web/checks.py").unlink()
    problems = load_problems(sample)
    assert any(p.startswith("inventories/lab.yml:") and "'web' has no deploys/web/checks.py"
               in p and "require_checks" in p for p in problems), problems
    _edit(sample, "  require_checks: true", "  require_checks: false")
    state = load(sample, "lab")
    assert len(state.warnings) == 1
    assert "'web' has no deploys/web/checks.py" in state.warnings[0]
    assert "not verified" in state.warnings[0]
    proc = _gitops(sample, tmp_path / "state", "validate", "--worktree")
    assert proc.returncode == 0, proc.stderr
    assert "warning: inventories/lab.yml:" in proc.stderr and "checks.py" in proc.stderr


# --- the second line of defence: the ssh_config writer ----------------------------------------


def _unchecked_host(**changes: Any) -> DeclaredHost:
    """A host built without validation, as if a value had slipped past the loader."""
    ssh = ResolvedSSH.model_construct(user="root", port=22, key_file=None, known_hosts_file=None,
                                      host_key_checking="no", connect_timeout=5)
    fields: dict[str, Any] = {"name": "lab-1", "address": "10.0.0.1", "groups": ("all",),
                              "ssh": ssh, "vars": {}, "services": {}}
    for key, value in changes.items():
        if key.startswith("ssh_"):
            fields["ssh"] = fields["ssh"].model_copy(update={key[4:]: value})
        else:
            fields[key] = value
    return DeclaredHost.model_construct(**fields)


@pytest.mark.parametrize("changes", [
    {"address": "10.0.0.1\n  ProxyCommand touch /tmp/x"}, {"ssh_user": "root\nHost *"},
    {"ssh_key_file": "/k\n  ProxyCommand x"}, {"ssh_known_hosts_file": '/k" x'},
    {"ssh_port": 0},
])
def test_ssh_config_writer_refuses_unsafe_values(changes: dict[str, Any]) -> None:
    """The verify worker writes no ssh_config for a host whose address, user, key path or
    port is unsafe, even if one got past validation."""
    host = _unchecked_host(**changes)
    assert verify_ssh.unsafe_field(host) is not None
    with pytest.raises(ValueError):
        verify_ssh.ssh_config_text({"lab-1": host})
    assert verify_ssh.unsafe_field(_unchecked_host()) is None


# --- the state folder and an empty repository -------------------------------------------


def test_state_folder_is_private(sample: Path, tmp_path: Path) -> None:
    """The state folder is 0700 and the database and locks 0600, also when the folder
    existed world-readable before."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    _edit(sample, "import json", "import json (", "deploys/app/deploy.py")  # reach no host
    commit(sample, "x")
    proc = _gitops(sample, state, "reconcile", "--once")
    assert proc.returncode == 2, proc.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [state / "gitops.db", *(state / "locks").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    fresh = tmp_path / "fresh" / "state"
    assert _gitops(sample, fresh, "validate").returncode == 2  # fetched, snapshot made
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_repository_without_commit_says_so(tmp_path: Path) -> None:
    """validate of a repository with no commit says to commit first or use --worktree."""
    repo = init_repo(make_sample(tmp_path / "repo", links=False))
    proc = _gitops(repo, tmp_path / "state", "validate")
    assert proc.returncode == 2
    assert "no commit yet: commit first, or validate the files on disk with --worktree" \
        in proc.stderr


def test_values_from_vagrant_are_held_to_the_same_syntax(sample: Path) -> None:
    """Addresses and SSH settings read from ``vagrant ssh-config`` are refused like the
    inventory's own when they break the syntax (a newline in a HostName line)."""
    _edit(sample, "  parallel: 20", "  parallel: 20\n  source: vagrant")
    for name in ("lab-1", "lab-2", "lab-3"):
        _edit(sample, f"    address: 10.213.0.1{name[-1]}\n", "")

    def source(names: list[str]) -> dict[str, dict[str, Any]]:
        good = {"user": "vagrant", "port": 22, "key_file": "/home/v/.vagrant.d/key"}
        return {n: {"address": f"192.168.121.{i}", "ssh": good} for i, n in enumerate(names)} | {
            "lab-2": {"address": "192.168.121.9\n  ProxyCommand x", "ssh": good},
            "lab-3": {"address": "192.168.121.8", "ssh": {**good, "key_file": "k\nHost *"}}}

    with pytest.raises(InvalidDeclaration) as info:
        load(sample, "lab", host_source=source)
    fields = sorted(p.field for p in info.value.problems)
    assert fields == ["hosts.lab-2.address", "hosts.lab-3.address"], info.value
    assert all(p.line for p in info.value.problems)


def test_verify_worker_never_connects_to_an_unsafe_host(tmp_path: Path) -> None:
    """A host whose address carries a ProxyCommand is reported as refused by the verify
    worker, and the command never runs."""
    from gitops.model import DeclaredState, EnvironmentSettings

    marker = tmp_path / "pwned"
    host = _unchecked_host(address=f"10.0.0.1\n  ProxyCommand touch {marker}")
    state = DeclaredState.model_construct(
        environment="lab", root=str(tmp_path), settings=EnvironmentSettings(), hosts=(host,),
        service_order=(), warnings=(), service_digests={})
    report = verify_worker.run(state)
    assert report.host_errors == {"lab-1": "refused: address is not safe to write to an "
                                           "ssh_config"}
    assert not marker.exists()
