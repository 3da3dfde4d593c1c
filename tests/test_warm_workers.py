"""Warm workers (``gitops.pipeline.warm``, ``gitops.workers.forkserver``): a job runs in a child
forked from a server that imported the worker module once, with the result, progress, errors,
timeouts and kills of a fresh ``python -m`` worker, and nothing of one job left for the next.

Most tests run a probe worker module written into the test's folder (on PYTHONPATH), so each
test has a server of its own; the last ones plan on a lab host with the real apply worker.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import free_port
from clitools import sample_repo
from polling import wait_for

from gitops.errors import WorkerError
from gitops.lab import LabInfo
from gitops.lab.common import cmdlines
from gitops.pipeline import warm
from gitops.pipeline.worker import PARENT_ENV, run_worker
from gitops.workers import forkserver

PROBE = '''
import json, os, subprocess, sys
IMPORTED_IN = os.getpid()
RUNS = []


def main():
    job = json.loads(sys.stdin.read())
    RUNS.append(job)
    print(f"progress: started {os.getpid()}", file=sys.stderr, flush=True)
    if job.get("read"):
        sys.path.insert(0, job["read"])
        import deployish
        job["value"] = deployish.VALUE
    if job.get("sleep"):
        subprocess.run(["sleep", job["sleep"]])
    if job.get("crash"):
        print("the probe's last words", file=sys.stderr)
        raise RuntimeError("the probe crashed")
    print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "imported_in": IMPORTED_IN,
                      "runs": len(RUNS), "env": {k: os.environ.get(k) for k in job["env"]},
                      "cwd": os.getcwd(), "argv0": sys.argv[0], "value": job.get("value"),
                      "session": os.getsid(0) == os.getpid()}))
    return job.get("exit", 0)


if __name__ == "__main__":
    sys.exit(main())
'''

_names = itertools.count()


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A worker module of this test's own (so a server of its own), on PYTHONPATH."""
    name = f"warm_probe_{os.getpid()}_{next(_names)}"
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{name}.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.delenv(warm.ENV, raising=False)
    yield name
    warm.shutdown()


def _run(module: str, timeout: float = 60, **job: Any) -> dict[str, Any]:
    job.setdefault("env", ["PROBE_A", "PROBE_B"])
    out: dict[str, Any] = json.loads(run_worker(module, json.dumps(job), timeout=timeout))
    return out


def _gone(marker: str) -> bool:
    return not any(marker in " ".join(argv) for argv in cmdlines().values())


def _marker(seconds: int) -> str:
    """A ``sleep`` argument no other run of these tests uses."""
    return f"{seconds}.{os.getpid()}"


def test_a_warm_job_gives_what_a_fresh_worker_gives(probe: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same job through the warm server and as a fresh ``python -m``: the same answer
    (environment, working directory, argv[0], a session of its own, the status); only
    where the module was imported differs."""
    monkeypatch.setenv("PROBE_A", "a")
    lines: list[str] = []
    warm_out = json.loads(run_worker(probe, json.dumps({"env": ["PROBE_A"]}), timeout=60,
                                     on_progress=lines.append))
    monkeypatch.setenv(warm.ENV, "0")
    fresh = _run(probe, env=["PROBE_A"])
    for key in ("env", "cwd", "argv0", "session", "runs"):
        assert warm_out[key] == fresh[key], key
    assert lines == [f"started {warm_out['pid']}"]
    assert fresh["imported_in"] == fresh["pid"] and fresh["ppid"] == os.getpid()
    assert warm_out["imported_in"] == warm_out["ppid"] != warm_out["pid"]


def test_the_second_job_imports_nothing_again(probe: str) -> None:
    """Each job is a new child of the one server, which imported the module before any job
    (the apply and verify workers' pyinfra, gevent and testinfra)."""
    first, second = _run(probe), _run(probe)
    server = warm.servers()[probe]
    assert first["ppid"] == second["ppid"] == server
    assert first["imported_in"] == second["imported_in"] == server
    assert first["pid"] != second["pid"]


def test_nothing_of_a_job_reaches_the_next(probe: str, tmp_path: Path) -> None:
    """Module-level state and imported modules are the server's, untouched, in every job: a
    module a job imported, changed on disk before the next job, is read again."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "deployish.py").write_text("VALUE = 1\n")
    first = _run(probe, read=str(deploy))
    (deploy / "deployish.py").write_text("VALUE = 'two'\n")
    second = _run(probe, read=str(deploy))
    assert (first["value"], second["value"]) == (1, "two")
    assert first["runs"] == second["runs"] == 1


def test_a_job_sees_the_environment_of_its_request(probe: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """Variables set or removed after the server started, and the working directory, are
    the job's own, as a fresh worker would see them."""
    monkeypatch.setenv("PROBE_A", "at the server's start")
    _run(probe)
    monkeypatch.delenv("PROBE_A")
    monkeypatch.setenv("PROBE_B", "b")
    monkeypatch.chdir(tmp_path)
    out = _run(probe, env=["PROBE_A", "PROBE_B", PARENT_ENV])
    assert out["env"] == {"PROBE_A": None, "PROBE_B": "b", PARENT_ENV: str(out["ppid"])}
    assert out["cwd"] == str(tmp_path)


def test_a_timeout_kills_the_child_and_its_process_group(probe: str) -> None:
    """A job past its timeout is a WorkerError; the child and what it started are killed."""
    _run(probe)  # the server is up: the timeout is the job's alone
    marker = _marker(301)
    with pytest.raises(WorkerError, match="timed out after 2s"):
        _run(probe, timeout=2, sleep=marker)
    wait_for(lambda: _gone(f"sleep {marker}"), 10, "the job's sleep killed")
    assert _run(probe)["runs"] == 1  # the server serves on


def test_stop_kills_the_child_and_its_process_group(probe: str) -> None:
    """``stop`` set while a job runs: a WorkerError, the job's processes killed."""
    stop = threading.Event()
    marker = _marker(302)

    def progress(line: str) -> None:
        wait_for(lambda: not _gone(f"sleep {marker}"), 30, "the job's sleep")
        stop.set()

    with pytest.raises(WorkerError, match="stopped on request"):
        run_worker(probe, json.dumps({"env": [], "sleep": marker}), timeout=60,
                   on_progress=progress, stop=stop)
    wait_for(lambda: _gone(f"sleep {marker}"), 10, "the job's sleep killed")


def test_a_crashed_job_is_a_worker_error_with_its_last_lines(probe: str) -> None:
    """A child that raises: WorkerError with its status and the tail of its stderr; a child
    that exits non-zero: its status."""
    with pytest.raises(WorkerError) as crashed:
        _run(probe, crash=True)
    message = str(crashed.value)
    assert message.startswith(f"{probe} exited with status 1")
    assert "the probe's last words" in message and "RuntimeError: the probe crashed" in message
    with pytest.raises(WorkerError, match="exited with status 3"):
        _run(probe, exit=3)


def test_off_switch_starts_every_worker_fresh(probe: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """GITOPS_WARM_WORKERS=0: each job is a ``python -m`` of its own, no server started."""
    monkeypatch.setenv(warm.ENV, "0")
    out = _run(probe)
    assert out["ppid"] == os.getpid() and out["imported_in"] == out["pid"]
    assert probe not in warm.servers()


def test_a_module_the_server_cannot_serve_starts_fresh(probe: str, tmp_path: Path) -> None:
    """A module without main() (the server refuses it): its jobs start fresh as before."""
    module = tmp_path / "modules" / f"{probe}_bare.py"
    module.write_text("import json, os, sys\n"
                      "print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid()}))\n")
    out = json.loads(run_worker(module.stem, "{}", timeout=60))
    assert out["ppid"] == os.getpid()
    assert module.stem not in warm.servers()


OWNER = """
import json, sys
from gitops.pipeline import warm
from gitops.pipeline.worker import run_worker
def progress(line):
    print(json.dumps({"server": warm.servers()[sys.argv[1]], "child": int(line.split()[1])}),
          flush=True)
run_worker(sys.argv[1], json.dumps({"env": [], "sleep": sys.argv[2]}), timeout=600,
           on_progress=progress)
"""


def test_killing_the_owner_ends_its_server_and_the_job(probe: str) -> None:
    """``kill -9`` of the process that owns the server (a daemon, a reconcile): the server,
    the job and what it started are gone, nothing left applying."""
    marker = _marker(303)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, probe, marker],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pids = json.loads(owner.stdout.readline())
    wait_for(lambda: not _gone(f"sleep {marker}"), 30, "the job's sleep")
    owner.kill()
    owner.wait()
    owner.stdout.close()
    for pid in (pids["server"], pids["child"]):
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}/cmdline").exists()
                 or not Path(f"/proc/{pid}/cmdline").read_bytes(), 10, f"process {pid} gone")
    wait_for(lambda: _gone(f"sleep {marker}"), 10, "the job's sleep killed")


def _servers_of(pid: int) -> set[int]:
    """The warm servers ``pid`` started (their parent is it)."""
    found = set()
    for child, argv in cmdlines().items():
        if warm.SERVER in argv:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{child}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(child)
    return found


def test_a_daemon_killed_leaves_no_warm_server(tmp_path: Path) -> None:
    """``gitops run`` starts the apply and verify workers' servers as it starts; ``kill -9``
    of the daemon ends them (they see their socket's other end close)."""
    repo = sample_repo(tmp_path, invalid=True)
    (tmp_path / "gitops.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[[environments]]\nname = "staging"\nrepo = "{repo}"\ninventory = "lab"\n'
        "interval = 3600\nwatch = false\n")
    env = {k: v for k, v in os.environ.items() if k != warm.ENV}
    with (tmp_path / "daemon.log").open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "gitops", "run"], cwd=tmp_path,
                                  stdout=log, stderr=log, env=env)
    try:
        servers = wait_for(lambda: len(_servers_of(daemon.pid)) == 2 and _servers_of(daemon.pid),
                           60, "the daemon's two warm servers")
    finally:
        daemon.kill()
        daemon.wait()
    for pid in servers:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}/cmdline").exists()
                 or not Path(f"/proc/{pid}/cmdline").read_bytes(), 10, f"server {pid} gone")


def test_the_server_and_run_worker_agree_on_the_parent_variable() -> None:
    """The child's ``GITOPS_WORKER_PARENT`` (its server) is the variable ``die_with_parent``
    reads."""
    assert forkserver.PARENT_ENV == PARENT_ENV


DEPLOY = textwrap.dedent("""\
    from pyinfra.operations import server

    server.shell(name="Say {word}", commands=["echo {word}"])
""")


@pytest.mark.lab
def test_lab_plans_through_the_warm_apply_worker_as_fresh_and_see_a_changed_deploy(
        lab: LabInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real apply worker (gevent, pyinfra) forked from its server plans as a fresh one,
    and a deploy file changed between two plans is planned changed: pyinfra's caches of
    compiled deploy files do not outlive a job."""
    from gitops.pipeline.apply import WORKER, plan
    from gitops.pipeline.load import load

    monkeypatch.delenv(warm.ENV, raising=False)
    root = tmp_path / "repo"
    (root / "deploys/say").mkdir(parents=True)
    (root / "inventories").mkdir()
    host = lab.hosts[0]
    (root / "inventories/lab.yml").write_text(yaml.safe_dump({
        "settings": {"ssh": {"user": "root", "key_file": str(lab.key_file),
                             "known_hosts_file": "/dev/null", "host_key_checking": "no"},
                     "require_checks": False},
        "groups": {"all": {"services": {"say": {}}}},
        "hosts": {host.name: {"address": host.address, "groups": ["all"]}},
    }))

    def planned(word: str) -> list[str]:
        (root / "deploys/say/deploy.py").write_text(DEPLOY.format(word=word))
        return [op.name for h in plan(load(root, "lab"), timeout=300).hosts for op in h.ops]

    try:
        first = planned("hello")
        assert WORKER in warm.servers()
        assert planned("goodbye-and-more") == ["say | Say goodbye-and-more"]
        monkeypatch.setenv(warm.ENV, "0")
        assert planned("hello") == first == ["say | Say hello"]
    finally:
        warm.shutdown()
