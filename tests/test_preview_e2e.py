"""End to end: a signed pull-request webhook to ``gitops run`` previews the branch on a
disposable lab and reports it at a local stand-in for the GitHub API (``githost``).

One daemon, one pull request, two pushes (two lab boots): a change of the app's message
(success, a new comment), then a commit that breaks nginx's proxying (failure, the same
comment edited). The sample with one host per group: one preview host. Then a fork's pull
request whose ``deploy.py`` tries to reach the daemon (refused, then previewed with a
trusted label: its code ran as ``nobody`` and found nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import PROJECT, commit, copy_sample, free_port, git, init_repo
from githost import TOKEN, GitHost
from pyrage import x25519
from test_preview_sandbox import PAYLOAD

import gitops.lab as lab_api

pytestmark = pytest.mark.lab

HOOK_SECRET = "webhook-secret-for-preview-tests"
CONTEXT = "gitops/preview/lab"


def _lab_prefix() -> str:
    return (os.environ.get("GITOPS_LAB_NAME") or "gitops")[:5] + "p"


class Setup:
    """The state repository (the sample), the GitHub stand-in and the daemon."""

    def __init__(self, root: Path) -> None:
        self.repo = root / "state-repo"
        copy_sample(self.repo)
        (self.repo / "inventories").mkdir()
        shutil.copy(PROJECT / "inventories/lab.secrets.sops.yaml", self.repo / "inventories")
        inventory = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
        # the environment's own lab is never up: the daemon's reconciles of main stall, and
        # only the previews touch hosts
        inventory["settings"]["lab"] = _lab_prefix()[:2] + "none"
        self.write_inventory(inventory)
        init_repo(self.repo)
        self.commit("sample state")
        self.github = GitHost("github")
        self.port = free_port()
        self.state_dir = root / "state"
        self.config = root / "gitops.toml"
        self.key = root / "environment-age.key"  # the environment's own SOPS key
        self.key.write_text(f"{x25519.Identity.generate()}\n")
        self.key.chmod(0o600)
        self.config.write_text(
            f'state_dir = "{self.state_dir}"\n'
            f'listen = "127.0.0.1:{self.port}"\n'
            f'[sops]\nage_key = {{file = "{self.key}"}}\n'
            "[preview]\ntimeout = 600\n"
            'allow_forks = true\ntrusted_labels = ["preview-ok"]\n'
            "[[environments]]\n"
            'name = "lab"\n'
            f'repo = "{self.repo}"\n'
            "interval = 3600\ndrift_interval = 3600\nwatch = false\n"
            'webhook_secret = {env = "GITOPS_TEST_HOOK_SECRET"}\n'
            "[[environments.commit_status]]\n"
            'provider = "github"\n'
            f'api_url = "{self.github.base}"\n'
            'repository = "acme/state"\n'
            'token = {env = "GITOPS_TEST_API_TOKEN"}\n')
        self.log = (root / "daemon.log").open("w")
        env = {**os.environ, "GITOPS_TEST_HOOK_SECRET": HOOK_SECRET,
               "GITOPS_TEST_API_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_healthy()

    def write_inventory(self, inventory: dict[str, Any]) -> None:
        (self.repo / "inventories/lab.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))

    def inventory(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.repo / "inventories/lab.yml").read_text())
        return data

    def commit(self, message: str) -> str:
        return commit(self.repo, message)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the daemon exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the daemon did not answer /healthz")

    def pull_request(self, action: str, number: int, branch: str, sha: str, *,
                     head_repo: str = "acme/state", labels: tuple[str, ...] = (),
                     status: int = 202) -> dict[str, Any]:
        """Send GitHub's ``pull_request`` delivery, signed as GitHub signs it; its answer
        (of ``status``)."""
        body = json.dumps({
            "action": action, "number": number,
            "pull_request": {"number": number, "state": "open", "user": {"login": "someone"},
                             "labels": [{"name": n} for n in labels],
                             "head": {"ref": branch, "sha": sha,
                                      "repo": {"full_name": head_repo}},
                             "base": {"ref": "main", "repo": {"full_name": "acme/state"}}}
        }).encode()
        signature = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/hooks/lab", data=body, method="POST",
            headers={"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                     "X-GitHub-Delivery": f"{number}-{action}-{sha}",  # one per delivery
                     "X-Hub-Signature-256": f"sha256={signature}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == status
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            assert exc.code == status, exc
            refused: dict[str, Any] = json.loads(exc.read())
            return refused

    def final_status(self, sha: str) -> dict[str, Any] | None:
        done = [s for s in self.github.statuses if s["sha"] == sha
                and s.get("context") == CONTEXT and s["state"] != "pending"]
        return done[-1] if done else None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        self.github.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("preview"))
    try:
        yield s
    finally:
        s.close()
        for slot in range(2):
            lab_api.down(f"{_lab_prefix()}{slot}")


def _lab_gone(name: str) -> bool:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    return lab_api.current(name) is None and f"{name}-br" not in links


def test_pull_request_is_previewed_and_second_push_edits_the_comment(setup: Setup) -> None:
    """A PR changing the app's message gets a success status and a comment with the changed
    operations and passing checks; a push that breaks nginx edits that comment to a failure
    naming the failed check on the preview host; the lab is gone after each."""
    git(setup.repo, "checkout", "-q", "-b", "message")
    inventory = setup.inventory()
    inventory["groups"]["web"]["services"]["app"]["message"] = "Hello from a preview"
    setup.write_inventory(inventory)
    first = setup.commit("app: a new message")
    answer = setup.pull_request("opened", 7, "message", first)
    assert answer["decision"] == "queued"

    assert setup.github.wait(lambda g: g.comments, 480), \
        f"no comment; requests {setup.github.requests}, problems {setup.github.problems}"
    assert setup.github.problems == []
    status = setup.final_status(first)
    assert status is not None and status["state"] == "success", status
    [comment] = setup.github.comments
    assert comment.number == 7
    assert "<!-- gitops-preview:lab -->" in comment.body
    assert "gitops preview of `message` on `lab`: success" in comment.body
    assert "| lab-1 | app | App configuration |" in comment.body, comment.body
    assert "0 failed" in comment.body and "web/test_root_is_proxied_to_the_app" in comment.body
    assert _lab_gone(f"{_lab_prefix()}0")

    inventory["groups"]["web"]["services"]["web"]["app_port"] = 8001  # nginx proxies nowhere
    setup.write_inventory(inventory)
    second = setup.commit("web: proxy to the wrong port")
    setup.pull_request("synchronize", 7, "message", second)

    assert setup.github.wait(lambda g: g.comments[0].edits == 1, 480), \
        f"comment not edited; requests {setup.github.requests}"
    assert setup.github.problems == []
    assert len(setup.github.comments) == 1  # edited in place, not a second comment
    status = setup.final_status(second)
    assert status is not None and status["state"] == "failure", status
    assert "lab-1 web/test_root_is_proxied_to_the_app" in status["description"]
    body = setup.github.comments[0].body
    assert ": failure" in body
    assert "| lab-1 | web/test_root_is_proxied_to_the_app | ❌ fail |" in body
    assert _lab_gone(f"{_lab_prefix()}0")


def test_fork_deploy_py_runs_as_nobody_and_finds_nothing_of_the_daemon(setup: Setup) -> None:
    """A fork's pull request is refused (403) until it carries a trusted label; then its
    ``deploy.py``, applied on the preview lab, ran as ``nobody``: it could not read the
    daemon's environment (``/proc/<pid>/environ``, its tokens), the settings, the state
    database or folder, the environment's SOPS key, nor write beside the state folder, and
    had no token in its own environment; no secret is in the comment."""
    sink = Path(tempfile.mkdtemp(prefix="gitops-test-sink-"))
    sink.chmod(0o777)
    try:
        git(setup.repo, "checkout", "-q", "main")
        git(setup.repo, "checkout", "-q", "-b", "fork")
        deploy = setup.repo / "deploys/app/deploy.py"
        deploy.write_text(deploy.read_text() + PAYLOAD.format(
            token=f"/proc/{setup.proc.pid}/environ", config=str(setup.config),
            db=str(setup.state_dir / "gitops.db"), key=str(setup.key),
            state=str(setup.state_dir), outside=str(setup.state_dir.parent / "written"),
            in_state=str(setup.state_dir / "written"), sink=str(sink / "deploy.json")))
        sha = setup.commit("app: a fork's change")
        git(setup.repo, "update-ref", "refs/pull/9/head", sha)  # as GitHub publishes it
        refused = setup.pull_request("opened", 9, "fork", sha, head_repo="mallory/state",
                                     status=403)
        assert "neither a trusted author nor a trusted label" in refused["refused"]
        setup.pull_request("reopened", 9, "fork", sha,
                           head_repo="mallory/state", labels=("preview-ok",))
        assert setup.github.wait(lambda g: any(c.number == 9 for c in g.comments), 480), \
            f"no comment; requests {setup.github.requests}"
        found = json.loads((sink / "deploy.json").read_text())  # deploy.py did run
        assert found["uid"] != 0
        for what in ("token", "settings", "db", "key", "state", "outside", "in_state"):
            assert str(found[what]).startswith("denied: PermissionError"), (what, found[what])
        assert not (setup.state_dir.parent / "written").exists()
        assert not [k for k in found["environ"] if k.startswith("GITOPS_TEST")]
        [comment] = [c for c in setup.github.comments if c.number == 9]
        for secret in (TOKEN, HOOK_SECRET, setup.key.read_text().strip()):
            assert secret not in comment.body and secret not in json.dumps(found)
        assert _lab_gone(f"{_lab_prefix()}0")
    finally:
        subprocess.run(["rm", "-rf", str(sink)], check=False)


def test_preview_lab_left_by_a_crash_is_taken_down_at_start(tmp_path: Path) -> None:
    """A preview lab that a killed daemon left up is found by its name at the next start
    and taken down; the preview it ran is recorded interrupted."""
    from gitops.daemon.preview import Previews
    from gitops.record.store import Database
    from gitops.settings import EnvironmentConfig, Settings

    name = f"{_lab_prefix()}1"
    settings = Settings(state_dir=tmp_path / "state",
                        environments=[EnvironmentConfig(name="lab", repo=str(tmp_path))])
    with Database(settings.state_dir).open() as store:
        cut = store.start_preview("lab", provider="github", number=1, branch="b", base="main",
                                  head_sha=None)
        store.preview_running(cut, name)
    lab_api.up(hosts=1, name=name)
    try:
        assert name in Previews(settings).recover()
        assert _lab_gone(name)
    finally:
        lab_api.down(name)
    with Database(settings.state_dir).open(readonly=True) as store:
        row = store.preview(cut)
    assert row is not None and row.state == "interrupted"
