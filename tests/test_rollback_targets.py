"""Rollback, promote and unquarantine move an environment only to what its record allows:
a commit on the environment's branch verified there (``targets``). A real Git repository
with a fork's pull request ref, the real store, the real daemon behind the real HTTP server
(httpx), and the real CLI as a subprocess; no hosts (the inventories have none)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from builders import commit, git, git_repo
from clitools import gitops

from gitops.daemon.loop import Daemon
from gitops.pipeline import source
from gitops.record.store import Store
from gitops.records import Revision
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.server import bound_port, create_app, start_in_thread, stop

WHEN = "1764583200 +0000"


def _twins(repo: Path, parent: str) -> tuple[str, str]:
    """Two commits on ``parent`` whose shas begin with the same 7 hex digits (found by
    trying messages: a birthday search over about 20,000 commit objects)."""
    tree = git(repo, "rev-parse", f"{parent}^{{tree}}")
    seen: dict[str, bytes] = {}
    n = 0
    while True:
        body = (f"tree {tree}\nparent {parent}\nauthor T <t@example.invalid> {WHEN}\n"
                f"committer T <t@example.invalid> {WHEN}\n\ntwin {n}\n").encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        if sha[:7] in seen:
            pair = []
            for raw in (seen[sha[:7]], body):
                pair.append(git(repo, "hash-object", "-t", "commit", "-w", "--stdin",
                                 stdin=raw.decode()))
            return pair[0], pair[1]
        seen[sha[:7]] = body
        n += 1


@dataclass
class World:
    repo: Path
    state: Path
    verified: str
    """On main, verified in lab and staging."""
    unverified: str
    """On main (its head), never verified."""
    fork: str
    """A fork's commit, published as refs/pull/7/head."""
    twins: tuple[str, str]
    """Two verified commits on main with the same 7-digit prefix."""


def _verify(state: Path, environment: str, sha: str) -> None:
    """What a succeeded run of ``sha`` records (``reconcile._record_verified``)."""
    revision = Revision(sha=sha, branch="main", author="T", committed_at=datetime.now(UTC),
                        message="m")
    with Store(state) as store:
        run_id = store.start_run(environment, "reconcile", revision, actor="test")
        store.finish_run(run_id, "succeeded")
        store.record_verified(environment, revision, run_id)


@pytest.fixture
def world(tmp_path: Path) -> World:
    repo = git_repo(tmp_path / "repo", {f"inventories/{name}.yml": "hosts: {}\n"
                                        for name in ("lab", "staging", "production")}, "base")
    base = git(repo, "rev-parse", "HEAD")
    twins = _twins(repo, base)
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=T", "merge", "-q",
         "--no-ff", "-m", "both twins", twins[0], twins[1])
    verified = commit(repo, "verified", allow_empty=True)
    git(repo, "checkout", "-q", "-b", "fork", base)
    fork = commit(repo, "a fork's pull request: not merged", allow_empty=True)
    git(repo, "update-ref", "refs/pull/7/head", fork)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "fork")
    unverified = commit(repo, "the head, not verified yet", allow_empty=True)
    state = tmp_path / "state"
    for environment in ("lab", "staging"):
        for sha in (verified, *twins):
            _verify(state, environment, sha)
    # a preview fetched the pull request's head into the mirror, as the daemon does
    source.fetch(str(repo), "main", state)
    source.fetch_ref(str(repo), "refs/pull/7/head", "main", state)
    return World(repo, state, verified, unverified, fork, twins)


def _refused_targets(w: World) -> dict[str, str]:
    return {"pull request ref": "refs/pull/7/head", "fork commit": w.fork,
            "unknown sha": "0123456789abcdef0123", "unverified on the branch": w.unverified,
            "ambiguous prefix": w.twins[0][:7], "option": "--output=/tmp/x"}


def _held(state: Path, environment: str = "lab") -> tuple[object, list[str]]:
    with Store(state) as store:
        return (store.controls(environment)["held_sha"],
                [r.kind for r in store.history(environment, limit=50) if r.event])


@pytest.fixture
def api(world: World) -> Iterator[tuple[str, Daemon]]:
    settings = Settings(state_dir=world.state, environments=[
        EnvironmentConfig(name=name, repo=str(world.repo), watch=False,
                          **({"promote_from": "staging"} if name == "production" else {}))
        for name in ("lab", "staging", "production")])
    d = Daemon(settings, rand=lambda: 0.5)
    server, thread = start_in_thread(create_app(d, settings), "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}/api/environments", d
    finally:
        stop(server, thread)


def test_api_rollback_refuses_what_is_not_verified_on_the_branch(
        world: World, api: tuple[str, Daemon]) -> None:
    """POST rollback to a pull request's ref, a fork's commit, an unknown sha, a commit of
    the branch never verified, an ambiguous prefix: 409 with one line, nothing held, nothing
    recorded; a verified commit of the branch is held (200)."""
    url, _ = api
    answers = {case: httpx.post(f"{url}/lab/rollback", timeout=30,
                                json={"revision": revision, "reason": "probe"})
               for case, revision in _refused_targets(world).items()}
    assert _held(world.state) == (None, [])
    assert {case: a.status_code for case, a in answers.items()} == dict.fromkeys(answers, 409)
    for case, answer in answers.items():
        error = answer.json()["error"]
        assert error.startswith("lab: ") and "\n" not in error, (case, error)
    assert "not a commit of branch 'main'" in answers["pull request ref"].json()["error"]
    assert "not a commit of branch 'main'" in answers["fork commit"].json()["error"]
    assert "never verified on every host of lab" in (
        answers["unverified on the branch"].json()["error"])
    assert "is ambiguous" in answers["ambiguous prefix"].json()["error"]
    held = httpx.post(f"{url}/lab/rollback", timeout=30,
                      json={"revision": world.verified[:10], "reason": "bad release"})
    assert held.status_code == 200, held.text
    assert held.json()["held_sha"] == world.verified
    assert _held(world.state) == (world.verified, ["rollback"])


def test_api_promote_refuses_a_commit_off_the_branch_even_forced(
        world: World, api: tuple[str, Daemon]) -> None:
    """POST promote of a pull request's ref or a fork's commit: 409 even with force,
    nothing recorded; an ambiguous prefix: 422; a commit of the branch verified on staging
    is promoted."""
    url, _ = api
    body = {"reason": "probe", "force": True}
    refused = {case: httpx.post(f"{url}/production/promote", timeout=30,
                                json={**body, "revision": revision})
               for case, revision in (("ref", "refs/pull/7/head"), ("fork", world.fork))}
    ambiguous = httpx.post(f"{url}/production/promote", timeout=30,
                           json={**body, "revision": world.twins[1][:7]})
    assert _held(world.state, "production") == (None, [])
    for case, answer in refused.items():
        assert answer.status_code == 409, (case, answer.text)
        assert answer.json()["error"].startswith("production: ")
        assert "is not a commit of branch 'main'" in answer.json()["error"]
    assert ambiguous.status_code == 422 and "is ambiguous" in ambiguous.json()["error"]
    promoted = httpx.post(f"{url}/production/promote", timeout=30,
                          json={"revision": world.verified, "reason": "tested on staging"})
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["sha"], promoted.json()["forced"]) == (world.verified, False)


def test_api_unquarantine_releases_only_what_is_quarantined_there(
        world: World, api: tuple[str, Daemon]) -> None:
    """A revision quarantined in staging is not released through lab (400, nothing
    released); through staging it is."""
    url, _ = api
    with Store(world.state) as store:
        store.quarantine("staging", world.unverified, "verification failed on web1")
    other = httpx.post(f"{url}/lab/unquarantine", timeout=30,
                       json={"revision": world.unverified, "reason": "web1 was down"})
    assert other.status_code == 400 and "is not quarantined" in other.json()["error"]
    with Store(world.state) as store:
        assert [q.sha for q in store.quarantined("staging")] == [world.unverified]
    released = httpx.post(f"{url}/staging/unquarantine", timeout=30,
                          json={"revision": world.unverified, "reason": "web1 was down"})
    assert released.status_code == 200, released.text


def _config(world: World, tmp_path: Path) -> Path:
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{world.state}"\nlisten = "127.0.0.1:9"\n'
                      f'[[environments]]\nname = "lab"\nrepo = "{world.repo}"\n'
                      f'[[environments]]\nname = "staging"\nrepo = "{world.repo}"\n'
                      f'[[environments]]\nname = "production"\nrepo = "{world.repo}"\n'
                      'promote_from = "staging"\n')
    return config


def test_cli_rollback_refuses_with_exit_2_and_holds_a_verified_commit(
        world: World, tmp_path: Path) -> None:
    """`gitops rollback REV` (no daemon): exit 2 and one line for each refused target,
    nothing held or run; a verified commit of the branch is held and rolled back to."""
    config = _config(world, tmp_path)
    for case, revision in _refused_targets(world).items():
        proc = gitops("rollback", "--config", str(config), "-e", "lab", "--", revision)
        assert proc.returncode == 2, (case, proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)
        assert proc.stderr.startswith("error: lab: "), (case, proc.stderr)
    assert _held(world.state) == (None, [])
    history = gitops("history", "--json", "-e", "lab", "--config", str(config))
    assert [r["kind"] for r in json.loads(history.stdout)] == ["reconcile"] * 3
    done = gitops("rollback", "--config", str(config), "-e", "lab", world.verified[:12])
    assert done.returncode == 0, done.stdout + done.stderr
    assert _held(world.state)[0] == world.verified
    history = gitops("history", "--json", "-e", "lab", "--config", str(config))
    run = json.loads(history.stdout)[0]
    assert (run["kind"], run["sha"], run["result"]) == ("rollback", world.verified, "succeeded")


def test_cli_promote_refuses_a_pull_request_ref_with_exit_2(world: World,
                                                            tmp_path: Path) -> None:
    """`gitops promote --revision refs/pull/7/head --force`: exit 2, one line, nothing
    recorded in production."""
    config = _config(world, tmp_path)
    proc = gitops("promote", "--config", str(config), "-e", "production", "--revision",
                  "refs/pull/7/head", "--reason", "probe", "--force")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("error: production: 'refs/pull/7/head' is not a commit of "
                                   "branch 'main': only the branch's commits are promoted")
    assert _held(world.state, "production") == (None, [])
