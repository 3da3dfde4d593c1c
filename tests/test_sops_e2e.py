"""End to end on lab hosts: SOPS secrets reach the hosts and nothing else.

The daemon watches the sample's base and app (its ``inventories/lab.secrets.sops.yaml``
encrypted for the throwaway demo age key, plus an encrypted file the app deploy uploads and a
``probe`` service whose secret a commit makes fail its check) and reports to a local
receiver. After a good commit, a bad one (rolled back, an incident) and a fix, the canary
secrets are on the hosts and in none of: the state folder, the database, the daemon's log,
/metrics, /api/*, the status page, the receiver's requests, the incident reports.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from polling import wait_for
from statelab import PROJECT, StateRepo, make_state_repo
from test_daemon_e2e import TOKEN, Daemon
from test_notify import HOOK_SECRET, Receiver
from test_notify import TOKEN as GIT_HOST_TOKEN

from gitops.lab import LabInfo
from gitops.pipeline import sops

pytestmark = pytest.mark.lab

DEMO_KEY = PROJECT / "gitops/lab/demo-age-key.txt"
DEMO_RECIPIENT = next(line.split(": ", 1)[1] for line in DEMO_KEY.read_text().splitlines()
                      if line.startswith("# public key: "))

PROBE_DEPLOY = """\
from io import StringIO
from pyinfra import host
from pyinfra.operations import files

files.put(name="Probe file", src=StringIO(host.data.get("value") + "\\n"),
          dest="/etc/gitops-probe", mode="0600")
"""
PROBE_CHECKS = """\
def test_probe_is_ok(host):
    \"\"\"The probe file says ok (a failure shows the file's content).\"\"\"
    assert host.file("/etc/gitops-probe").content_string.strip() == "ok"
"""
PROBE_MODEL = """\
from pydantic import BaseModel, ConfigDict, SecretStr


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: SecretStr
"""
FILE_DEPLOY = """
files.put(name="Encrypted settings file", src=str(HERE / "files" / "canary.sops.conf"),
          dest="/etc/app/canary.conf", user="root", group="root", mode="600")
"""


def applied_everywhere(d: Daemon, sha: str) -> bool:
    """Every lab host applied ``sha`` and is Ready (hosts not applied yet have no revision;
    read in this process: for waits)."""
    status = d.status_now()
    return all(
        ((status.get(h.name) or {}).get("last_applied_revision") or "").endswith(sha)
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in status[h.name]["conditions"])
        for h in d.repo.lab.hosts
    )


def _canary(what: str) -> str:
    return f"canary-{what}-{secrets.token_hex(8)}"


@dataclass
class Story:
    daemon: Daemon
    receiver: Receiver
    canaries: list[str] = field(default_factory=list)
    shas: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> StateRepo:
        return self.daemon.repo

    def get(self, path: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.daemon.port}{path}",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode(errors="replace"))


def _commit_secrets(story: Story, *, token: str, probe: str, file: str, message: str) -> str:
    """Encrypt this revision's secrets for the demo key and commit them."""
    doc = {"groups": {"all": {"services": {"probe": {"value": probe}}},
                      "web": {"services": {"app": {"token": token}}}}}
    path = story.repo.path / "inventories/lab.secrets.sops.yaml"
    path.write_text(sops.to_yaml(sops.encrypt(doc, [DEMO_RECIPIENT])))
    enc = sops.encrypt({"data": f"# managed by gitops\nsecret={file}\n"}, [DEMO_RECIPIENT])
    (story.repo.path / "deploys/app/files/canary.sops.conf").write_text(json.dumps(enc, indent=4))
    for value in (token, probe, file):
        if value not in story.canaries and value != "ok":
            story.canaries.append(value)
    return story.repo.commit(message)


@pytest.fixture(scope="module")
def story(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("sops")
    repo = make_state_repo(root, lab, services=("base", "app"))  # web holds no secret
    probe = repo.path / "deploys/probe"
    probe.mkdir()
    (probe / "deploy.py").write_text(PROBE_DEPLOY)
    (probe / "checks.py").write_text(PROBE_CHECKS)
    (probe / "model.py").write_text(PROBE_MODEL)
    deploy = repo.path / "deploys/app/deploy.py"
    deploy.write_text(deploy.read_text() + FILE_DEPLOY)
    inv = repo.inventory()
    inv["groups"]["all"]["services"]["probe"] = {}
    inv["settings"]["rollout"] = {"canary": 1, "batch": "100%"}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))

    receiver = Receiver()
    os.environ["GITOPS_TEST_GIT_TOKEN"] = GIT_HOST_TOKEN
    os.environ["GITOPS_TEST_NOTIFY_URL"] = f"{receiver.base}/hooks/{HOOK_SECRET}"
    daemon = Daemon(repo, root)
    daemon.config.write_text(
        f'sops = {{ age_key = {{ file = "{DEMO_KEY}" }} }}\n' + daemon.config.read_text()
        + "commit_status = [{provider = \"github\", "
        f'api_url = "{receiver.base}/github", repository = "ops/state", '
        'token = {env = "GITOPS_TEST_GIT_TOKEN"}}]\n'
        'notifiers = [{type = "webhook", url = {env = "GITOPS_TEST_NOTIFY_URL"}}]\n')
    s = Story(daemon, receiver)
    s.shas["good"] = _commit_secrets(s, token=_canary("token"), probe="ok",
                                     file=_canary("file"), message="secrets: first")
    daemon.start()
    try:
        wait_for(lambda: applied_everywhere(daemon, s.shas["good"]), 300, "the good commit")
        s.shas["bad"] = _commit_secrets(s, token=_canary("token2"), probe=_canary("probe"),
                                        file=_canary("file2"), message="secrets: broken probe")
        wait_for(lambda: any(r["kind"] == "rollback" and r["result"] and r["actor"] ==
                             "gitops-daemon" for r in daemon.runs_now()), 180, "the rollback")
        s.shas["fix"] = _commit_secrets(s, token=s.canaries[2], probe="ok",
                                        file=_canary("file3"), message="secrets: fixed")
        wait_for(lambda: applied_everywhere(daemon, s.shas["fix"]), 180, "the fix")
        yield s
    finally:
        daemon.stop()
        receiver.close()


def test_secrets_reach_every_host(story: Story) -> None:
    """The app's token (its check passed) and the decrypted file are on every lab host."""
    runs = story.daemon.history()
    fix = next(r for r in runs if r["sha"] == story.shas["fix"] and r["result"] == "succeeded")
    run = json.loads(story.get(f"/api/runs/{fix['id']}"))
    checks = [c for c in run["checks"] if c["check"] == "test_token_reached_the_app"]
    assert sorted(c["host"] for c in checks) == [h.name for h in story.repo.lab.hosts]
    assert all(c["status"] == "pass" for c in checks), checks
    file_secret = story.canaries[-1]
    token = story.canaries[2]
    for host in story.repo.lab.hosts:
        assert story.repo.ssh(host.name, "cat /etc/app/canary.conf") == (
            f"# managed by gitops\nsecret={file_secret}\n")
        assert token in story.repo.ssh(host.name, "cat /etc/app/config.json")


def test_the_recorded_plan_shows_secret_changed(story: Story) -> None:
    """The bad commit's recorded plan shows the token and the file as <secret changed>."""
    runs = story.daemon.history()
    bad = next(r for r in runs if r["sha"] == story.shas["bad"] and r["kind"] == "reconcile")
    run = json.loads(story.get(f"/api/runs/{bad['id']}"))
    diffs = {op["name"]: op["diff"] for h in run["plan"]["hosts"] for op in h["ops"]
             if op.get("diff")}
    assert "<secret changed>" in diffs["app | App configuration"]
    assert "<secret changed>" in diffs["app | Encrypted settings file"]
    failed = [c for c in run["checks"] if c["status"] != "pass"]
    assert [c["check"] for c in failed] == ["test_probe_is_ok"]
    assert "<secret>" in failed[0]["message"]


def _everything(story: Story) -> dict[str, str]:
    """Every place a secret must never reach, as text."""
    places: dict[str, str] = {}
    state = story.repo.state_dir
    for path in state.rglob("*"):
        if path.is_file():
            places[f"state:{path.relative_to(state)}"] = path.read_bytes().decode(
                errors="replace")
    with sqlite3.connect(state / "gitops.db") as db:
        places["db dump"] = "\n".join(db.iterdump())
    places["daemon log"] = story.daemon.log.read_text(errors="replace")
    paths = ["/", "/metrics", "/api/status", "/api/environments", "/api/hosts",
             "/api/runs?limit=1000", "/api/delivery", "/api/incidents", "/api/page",
             "/static/page.js"]
    runs = story.daemon.history()
    paths += [f"/api/runs/{r['id']}" for r in runs]
    paths += [f"/api/page/runs/{r['id']}" for r in runs]
    for path in paths:
        places[f"http:{path}"] = story.get(path)
    for n, r in enumerate(story.receiver.requests):
        places[f"receiver:{n}:{r.path}"] = json.dumps(r.body) + json.dumps(r.headers)
    proc = story.repo.gitops("history", "--json")
    places["gitops history"] = proc.stdout + proc.stderr
    return places


def test_the_canaries_are_nowhere_else(story: Story) -> None:
    """No canary secret is in the state folder (snapshots, database, reports), the database
    dump, the daemon's log, /metrics, /api/*, the status page or the receiver's requests."""
    places = _everything(story)
    assert any(k.startswith("state:reports/") for k in places), "no incident report written"
    assert any(k.startswith("receiver:") and "/hooks/" in k for k in places)
    # whole, or the random part alone (a value shortened to its ends still shows it)
    pieces = [*story.canaries, *(c[-16:] for c in story.canaries)]
    leaks = [(where, piece) for where, text in places.items() for piece in pieces
             if piece in text]
    assert leaks == []
    # and the canaries were real: every one reached a host or failed a check there
    assert len(story.canaries) == 6


def test_plan_on_the_cli_redacts_the_secret(story: Story) -> None:
    """`gitops plan` of a token change shows <secret changed> and never the token."""
    story.daemon.stop()  # so the commit below is only planned, never applied
    new = _canary("cli")
    sha = _commit_secrets(story, token=new, probe="ok", file=story.canaries[-1],
                          message="secrets: a new token, planned only")
    env = {**os.environ, "GITOPS_SOPS": json.dumps({"age_key": {"file": str(DEMO_KEY)}})}
    proc = subprocess.run(
        [sys.executable, "-m", "gitops", "plan", "--json",
         "--repo", str(story.repo.path), "--state-dir", str(story.repo.state_dir),
         "--environment", "lab"], capture_output=True, text=True, env=env, timeout=600)
    assert sha
    assert new not in proc.stdout + proc.stderr
    assert "<secret changed>" in proc.stdout, proc.stderr[-2000:]
