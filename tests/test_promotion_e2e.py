"""End to end: ``gitops run`` with staging and production, production promoting from staging.

The session lab's hosts split in two inventories of one repository and branch (staging: the
first host; production: the others), one small ``probe`` service (its check reads the file it
writes), a real daemon watching the local repository. A good commit reaches production only
after staging verified it on every host; a commit that fails staging's checks is rolled back
and quarantined there and production never applies it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import commit, free_port, git, init_repo
from polling import wait_for
from test_daemon_e2e import PROBE_DEPLOY, PROBE_MODEL, record

from gitops.lab import LabInfo
from gitops.record.store import Store

pytestmark = pytest.mark.lab

PROBE_CHECKS = """\
def test_probe_is_ok(host):
    \"\"\"The probe file says ok.\"\"\"
    assert host.file("/etc/gitops-probe").content_string.startswith("ok")
"""


class Pipeline:
    """A ``gitops run`` of staging and production over one repository, and that repository."""

    def __init__(self, root: Path, lab: LabInfo) -> None:
        self.lab = lab
        self.repo = root / "repo"
        self.state = root / "state"
        self.staging = [lab.hosts[0].name]
        self.production = [h.name for h in lab.hosts[1:]]
        probe = self.repo / "deploys/probe"
        probe.mkdir(parents=True)
        (probe / "deploy.py").write_text(PROBE_DEPLOY)
        (probe / "checks.py").write_text(PROBE_CHECKS)
        (probe / "model.py").write_text(PROBE_MODEL)
        (self.repo / "inventories").mkdir()
        init_repo(self.repo)
        self.port = free_port()
        self.config = root / "gitops.toml"
        self.config.write_text(
            f'state_dir = "{self.state}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'[[environments]]\nname = "staging"\nrepo = "{self.repo}"\ninterval = 1\n'
            "drift_interval = 3600\nretry_base = 1\n"
            f'[[environments]]\nname = "production"\nrepo = "{self.repo}"\ninterval = 1\n'
            'drift_interval = 3600\nretry_base = 1\npromote_from = "staging"\n')
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def commit(self, value: str) -> str:
        """Both inventories with the probe at ``value``; the new commit's SHA."""
        for name, hosts in (("staging", self.staging), ("production", self.production)):
            inventory = {
                "settings": {"source": "lab", "lab": self.lab.name},
                "groups": {"probe": {"services": {"probe": {"value": value}}}},
                "hosts": {h: {"groups": ["probe"]} for h in hosts},
            }
            (self.repo / f"inventories/{name}.yml").write_text(
                yaml.safe_dump(inventory, sort_keys=False))
        return commit(self.repo, f"probe: {value}")

    def start(self) -> None:
        env = {**os.environ, "GITOPS_CONFIG": str(self.config)}
        self.proc = subprocess.Popen([sys.executable, "-m", "gitops", "run"],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
                                     env=env)
        try:
            wait_for(lambda: self.http_ok(), 30, "daemon health")
        except AssertionError:  # never leave a daemon behind
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise

    def http_ok(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=300)

    def cli(self, *args: str) -> Any:
        proc = subprocess.run([sys.executable, "-m", "gitops", *args, "--json"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GITOPS_CONFIG": str(self.config)})
        assert proc.stdout.strip(), proc.stderr
        data = json.loads(proc.stdout)
        if isinstance(data, dict) and data.get("result") == "error":
            return []  # an environment with nothing recorded yet
        return data

    def runs(self, env: str) -> list[dict[str, Any]]:
        return [r for r in self.cli("history", "-e", env, "-n", "100") if r["kind"] != "promote"]

    def runs_now(self, env: str) -> list[dict[str, Any]]:
        """What ``runs`` gives, read in this process (for waits)."""
        rows = record(self.state, lambda store: store.history(env, 100)) or []
        return [r.as_dict() for r in rows if r.kind != "promote"]

    def verified_everywhere(self, env: str, hosts: list[str], sha: str) -> bool:
        """Each of ``hosts`` applied and verified ``sha`` (read in this process, as
        ``gitops status`` reads it: for waits)."""
        rows = {r.host: r.as_dict()
                for r in record(self.state, lambda store: store.status(env)) or []}
        return all(((rows.get(h) or {}).get("last_verified_revision") or "").endswith(sha)
                   and ((rows.get(h) or {}).get("last_applied_revision") or "").endswith(sha)
                   for h in hosts)

    def probe(self, host: str) -> str:
        return subprocess.run(["ssh", "-F", str(self.lab.ssh_config), host,
                               "cat /etc/gitops-probe"], capture_output=True, text=True,
                              timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def pipeline(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path_factory.mktemp("promotion"), lab)
    p.commit("ok 1")
    p.start()
    try:
        yield p
    finally:
        p.stop()


def _finished(run: dict[str, Any]) -> str:
    return str(run["finished_at"])


def test_good_commit_reaches_production_only_after_staging_verified_it(
        pipeline: Pipeline) -> None:
    """Production's run of a commit starts only after staging's run verified it on every
    host; then production's hosts have it; the pipeline and the stages say so."""
    first = git(pipeline.repo, "rev-parse", "HEAD")
    wait_for(lambda: pipeline.verified_everywhere("production", pipeline.production, first),
             240, "the first commit on production")
    good = pipeline.commit("ok 2")
    wait_for(lambda: pipeline.verified_everywhere("production", pipeline.production, good),
             180, "the good commit on production")
    staging = next(r for r in reversed(pipeline.runs("staging"))
                   if r["sha"] == good and r["result"] == "succeeded")
    production = [r for r in pipeline.runs("production") if r["sha"] == good]
    assert production and all(r["started_at"] >= _finished(staging) for r in production)
    assert production[-1]["reason"].startswith("promoted from staging")
    for host in pipeline.production:
        assert pipeline.probe(host) == "ok 2"
    metrics = pipeline.cli("metrics", "-e", "production")["production"]
    assert [s["stage"] for s in metrics["stages"]] == [
        "commit -> verified on staging", "verified on staging -> verified on production"]


def test_bad_commit_stops_at_staging_and_never_reaches_production(pipeline: Pipeline) -> None:
    """A commit failing staging's checks is rolled back and quarantined there; production
    never runs it, keeps its revision, and its status names the quarantined commit."""
    before = git(pipeline.repo, "rev-parse", "HEAD")
    wait_for(lambda: pipeline.verified_everywhere("production", pipeline.production, before),
             180, "production on the last good commit")
    bad = pipeline.commit("broken")
    wait_for(lambda: any(r["kind"] == "rollback" and r["result"] == "succeeded"
                         for r in pipeline.runs_now("staging")[:3]), 180,
             "the rollback on staging")
    with Store(pipeline.state, readonly=True) as store:
        assert bad in [q.sha for q in store.quarantined("staging")]
        assert bad not in [v.sha for v in store.verified_revisions("staging")]
    assert pipeline.probe(pipeline.staging[0]) == "ok 2"  # rolled back
    time.sleep(3)  # several poll intervals of production
    assert not [r for r in pipeline.runs("production") if r["sha"] == bad]
    for host in pipeline.production:
        assert pipeline.probe(host) == "ok 2"
    row = next(r for r in pipeline.cli("status", "-e", "production") if r["host"] == "")
    waiting = next(c for c in row["conditions"] if c["type"] == "Reconciling")
    assert waiting["reason"] == "WaitingForPromotion"
    assert waiting["message"] == f"{bad[:10]} is quarantined on staging: it is not promoted"
