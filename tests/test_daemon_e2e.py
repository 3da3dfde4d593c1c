"""End to end: ``gitops run`` reconciling a watched local repository onto real lab hosts.

One daemon per test module, watching a fresh state repository of one small ``probe`` service
on the lab's hosts (its check a commit can break; a note file any commit can change), with a
canary batch of one host: what the daemon does is the same for any service, and each rollout
then applies and checks two files.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import free_port
from polling import wait_for
from statelab import StateRepo, make_state_repo

from gitops.lab import LabInfo
from gitops.record.store import NoStore, Store, StoreOutdated

pytestmark = pytest.mark.lab

TOKEN = "operator-token-for-tests"
HOOK_SECRET = "webhook-secret-for-tests"
NOTE = "/etc/gitops-probe-note"
"""The file the probe service writes its ``note`` parameter to (``PROBE_DEPLOY``)."""
PROBE_DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files

files.put(name="Probe file", src=__import__("io").StringIO(host.data.get("value") + "\\n"),
          dest="/etc/gitops-probe", mode="0644")
files.put(name="Probe note", src=__import__("io").StringIO(host.data.get("note") + "\\n"),
          dest="/etc/gitops-probe-note", mode="0644")
"""
PROBE_CHECKS = """\
def test_probe_is_ok(host):
    \"\"\"The probe file says ok.\"\"\"
    assert host.file("/etc/gitops-probe").content_string.strip() == "ok"
"""
PROBE_MODEL = """\
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = "ok"
    note: str = ""
"""


class Daemon:
    """A ``gitops run`` subprocess and the repository it watches."""

    def __init__(self, repo: StateRepo, root: Path) -> None:
        self.repo = repo
        self.port = free_port()
        self.config = root / "gitops.toml"
        self.config.write_text(
            f'state_dir = "{repo.state_dir}"\n'
            f'listen = "127.0.0.1:{self.port}"\n'
            'api_token = {env = "GITOPS_TEST_TOKEN"}\n'
            "[[environments]]\n"
            'name = "lab"\n'
            f'repo = "{repo.path}"\n'
            "interval = 1\n"  # a poll a second: the waits for nothing to happen are short
            "drift_interval = 3600\n"
            "retry_base = 1\n"
            'webhook_secret = {env = "GITOPS_TEST_HOOK_SECRET"}\n'
        )
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "GITOPS_TEST_TOKEN": TOKEN, "GITOPS_TEST_HOOK_SECRET": HOOK_SECRET,
               "GITOPS_CONFIG": str(self.config)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=env,
        )
        try:
            wait_for(lambda: self.http("GET", "/healthz")[0] == 200, 30, "daemon health")
        except AssertionError:  # never leave a daemon behind (its callers' finally is later)
            self.stop(signal.SIGKILL)
            raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=300)

    def http(self, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body or None,
                                         method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, None

    def api(self, action: str, **body: Any) -> tuple[int, Any]:
        return self.http("POST", f"/api/environments/lab/{action}", json.dumps(body).encode(),
                         {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})

    def env_status(self) -> dict[str, Any]:
        """``gitops status --json`` by host."""
        _, rows = self.repo.gitops_json("status")
        return {row["host"]: row for row in rows}

    def history(self) -> list[dict[str, Any]]:
        """``gitops history --json``: the last 20 runs, newest first."""
        return list(self.repo.gitops_json("history")[1])

    def status_now(self) -> dict[str, Any]:
        """What ``env_status`` gives, read in this process: for the waits, which read it
        every half second (a ``gitops`` command costs a second of CPU, taken from the
        daemon under test)."""
        rows = record(self.repo.state_dir, lambda store: store.status("lab")) or []
        return {row.host: row.as_dict() for row in rows}

    def runs_now(self) -> list[dict[str, Any]]:
        """What ``history`` gives, read in this process (for the waits)."""
        rows = record(self.repo.state_dir, lambda store: store.history("lab", 20)) or []
        return [row.as_dict() for row in rows]


def record(state_dir: Path, read: Callable[[Store], Any]) -> Any:
    """``read`` of the record in ``state_dir``, opened read-only as the CLI's readers open
    it; None while there is no record yet (or the daemon is migrating it)."""
    try:
        store = Store(state_dir, readonly=True)
    except (NoStore, StoreOutdated):
        return None
    with store:
        return read(store)


def applied_everywhere(d: Daemon, sha: str) -> bool:
    """Every lab host applied ``sha`` and is Ready (read in this process: for waits)."""
    status = d.status_now()
    hosts = [h.name for h in d.repo.lab.hosts]
    return all(
        ((status.get(h) or {}).get("last_applied_revision") or "").endswith(sha)
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in status[h]["conditions"])
        for h in hosts
    )


def make_probe_repo(root: Path, lab: LabInfo) -> StateRepo:
    """The ``probe`` service alone on the lab's hosts (its check a commit can break, its note
    any commit can change); canary of one."""
    repo = make_state_repo(root, lab, services=())
    probe = repo.path / "deploys/probe"
    probe.mkdir()
    (probe / "deploy.py").write_text(PROBE_DEPLOY)
    (probe / "checks.py").write_text(PROBE_CHECKS)
    (probe / "model.py").write_text(PROBE_MODEL)
    inv = repo.inventory()
    inv["groups"]["all"]["services"]["probe"] = {}
    inv["settings"]["rollout"] = {"canary": 1, "batch": "100%"}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    repo.commit("probe service, canary rollout")
    return repo


@pytest.fixture(scope="module")
def daemon(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    repo = make_probe_repo(root, lab)
    d = Daemon(repo, root)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _set_probe(repo: StateRepo, value: str | None = None, *, note: str | None = None) -> str:
    """Commit the probe's ``value`` (its check passes on ``ok`` only) or its ``note``."""
    inv = repo.inventory()
    params = inv["groups"]["all"]["services"]["probe"]
    if value is not None:
        params["value"] = value
    if note is not None:
        params["note"] = note
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    return repo.commit(f"probe: {value}" if value is not None else f"probe note: {note}")


def _note(repo: StateRepo, host: str) -> str:
    return repo.ssh(host, f"cat {NOTE}")


def test_a_commit_reaches_every_host_verified_unattended(daemon: Daemon) -> None:
    """The daemon applies and verifies the watched branch's head with nobody running anything."""
    head = subprocess.check_output(["git", "-C", str(daemon.repo.path), "rev-parse", "HEAD"],
                                   text=True).strip()
    wait_for(lambda: applied_everywhere(daemon, head), 300, "the first rollout")
    sha = _set_probe(daemon.repo, note="deployed by the daemon")
    wait_for(lambda: applied_everywhere(daemon, sha), 120, "the new commit on every host")
    for host in daemon.repo.lab.hosts:
        assert "deployed by the daemon" in _note(daemon.repo, host.name)
    runs = daemon.history()
    assert runs[0]["sha"] == sha and runs[0]["actor"] in ("watch", "gitops-daemon")


def test_a_commit_breaking_the_canary_is_rolled_back_and_quarantined(daemon: Daemon) -> None:
    """A check failing on the canary stops the rollout there, rolls the canary back,
    quarantines the commit; the next good commit rolls out everywhere."""
    canary, *others = [h.name for h in daemon.repo.lab.hosts]
    before = {h: daemon.repo.ssh(h, "cat /etc/gitops-probe").strip() for h in others}
    bad = _set_probe(daemon.repo, "broken")
    wait_for(lambda: any(q == bad for row in daemon.status_now().values()
                         for q in row.get("quarantined", [])) or
             any(r["kind"] == "rollback" and r["result"] for r in daemon.runs_now()[:3]),
             180, "the rollback of the canary")
    wait_for(lambda: daemon.repo.ssh(canary, "cat /etc/gitops-probe").strip() == "ok", 120,
             "the canary back on the last verified revision")
    for host in others:  # never reached
        assert daemon.repo.ssh(host, "cat /etc/gitops-probe").strip() == before[host] == "ok"
    _, status = daemon.http("GET", "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    env = next(row for row in status if row["host"] == "")
    assert bad in env["quarantined"]
    runs = daemon.history()
    failed = next(r for r in runs if r["sha"] == bad and r["kind"] == "reconcile")
    assert failed["result"] == "failed" and failed["failed_hosts"] == [canary]
    time.sleep(2.5)  # several poll intervals: the quarantined head is not applied again
    assert not [r for r in daemon.history() if r["sha"] == bad and r["id"] > failed["id"]
                and r["kind"] == "reconcile"]
    good = _set_probe(daemon.repo, "ok")
    wait_for(lambda: applied_everywhere(daemon, good), 180, "the fix on every host")


def test_suspend_stops_applies_until_resume(daemon: Daemon) -> None:
    """While suspended nothing is applied; resume applies the waiting commit."""
    code, answer = daemon.api("suspend", reason="change freeze for the test")
    assert code == 200 and answer["suspended"] == 1
    sha = _set_probe(daemon.repo, note="written while suspended")
    time.sleep(3)  # three poll intervals and a watch trigger
    assert not [r for r in daemon.history() if r["sha"] == sha]
    assert "written while suspended" not in _note(daemon.repo, "lab-1")
    code, _ = daemon.api("resume")
    assert code == 200
    wait_for(lambda: applied_everywhere(daemon, sha), 120, "the commit after resume")
    kinds = [r["kind"] for r in daemon.history()]
    assert "suspend" in kinds and "resume" in kinds
    run = next(r for r in daemon.history() if r["sha"] == sha and r["kind"] == "reconcile")
    ended = f"lab: run #{run['id']}: succeeded, "  # the log says how each run ended
    wait_for(lambda: ended in daemon.log.read_text(), 30, "the run's last line in the log")


def test_webhook_with_a_wrong_signature_is_refused(daemon: Daemon) -> None:
    """A GitHub push signed with another secret gets 401 and triggers nothing."""
    head = subprocess.check_output(["git", "-C", str(daemon.repo.path), "rev-parse", "HEAD"],
                                   text=True).strip()
    body = json.dumps({"ref": "refs/heads/main", "before": head, "after": head}).encode()
    wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
    before = len(daemon.history())
    code, answer = daemon.http("POST", "/hooks/lab", body, {
        "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={wrong}",
        "Content-Type": "application/json"})
    assert code == 401
    assert HOOK_SECRET not in json.dumps(answer) and wrong not in json.dumps(answer)
    assert HOOK_SECRET not in daemon.log.read_text()
    right = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    code, answer = daemon.http("POST", "/hooks/lab", body, {
        "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={right}",
        "Content-Type": "application/json"})
    assert code == 202
    time.sleep(3)
    assert len(daemon.history()) == before  # head already applied: nothing to do


def test_kill_9_mid_rollout_then_restart_completes_it(daemon: Daemon) -> None:
    """kill -9 of the daemon during a rollout; after a restart the rollout completes and the
    record is consistent (the cut run is marked interrupted, the next one succeeds)."""
    slow = daemon.repo.path / "deploys/probe/deploy.py"
    slow.write_text(PROBE_DEPLOY + "\nfrom pyinfra.operations import server\n"
                    "server.shell(name='Slow step', commands=['sleep 3'])\n")
    sha = daemon.repo.commit("probe: a slow step")
    wait_for(lambda: any(r["sha"] == sha and r["result"] is None for r in daemon.runs_now()),
             60, "the rollout to start")
    time.sleep(1)
    daemon.stop(signal.SIGKILL)
    cut = next(r for r in daemon.history() if r["sha"] == sha)
    assert cut["result"] is None
    daemon.start()
    wait_for(lambda: applied_everywhere(daemon, sha), 180, "the rollout after restart")
    wait_for(lambda: all(r["result"] is not None for r in daemon.runs_now()), 60,
             "every run to be finished")
    runs = {r["id"]: r for r in daemon.history()}
    assert runs[cut["id"]]["result"] == "interrupted"
    assert any(r["sha"] == sha and r["result"] == "succeeded" and r["id"] > cut["id"]
               for r in runs.values())
