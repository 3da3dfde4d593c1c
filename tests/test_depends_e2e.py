"""End to end: web requires app (deploys/web/service.yml); on the one lab host where app
fails, its apply and then its checks, web is left DependencyNotReady, while the other hosts
get web applied and verified; once app is ready there, the next changed-only run applies and
verifies web on it.

app is made to fail on one host only by a marker file on that host (real state of a real
host): the test repository's app deploy refuses to apply where ``FAIL_APPLY`` exists, and
its checks fail where ``FAIL_CHECK`` exists.
"""

from __future__ import annotations

from typing import Any

import pytest
from statelab import StateRepo, http_get, make_state_repo

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

FAIL_APPLY = "/etc/gitops-test-app-refuses-apply"
FAIL_CHECK = "/etc/gitops-test-app-fails-checks"
BROKEN = "lab-2"
ANCHOR = 'token = host.data.get("token")'


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    state = make_state_repo(tmp_path_factory.mktemp("depends"), lab)
    deploy = state.path / "deploys/app/deploy.py"
    text = deploy.read_text()
    assert ANCHOR in text
    deploy.write_text(text.replace(ANCHOR, ANCHOR + f"""
server.shell(name="Refuse on a marked host", commands=["test ! -e {FAIL_APPLY}"])""", 1))
    checks = state.path / "deploys/app/checks.py"
    checks.write_text(checks.read_text() + f'''

def test_host_not_marked(host):
    """The host holds no marker that makes app's checks fail."""
    assert not host.file("{FAIL_CHECK}").exists
''')
    assert (state.path / "deploys/web/service.yml").read_text().count("requires: [app]") == 1
    state.commit("app: fail on a marked host")
    for h in lab.hosts:
        state.ssh(h.name, f"rm -f {FAIL_APPLY} {FAIL_CHECK}")
    return state


def _web(result: dict[str, Any], host: str) -> list[dict[str, Any]]:
    return [r for r in result["verify"]["results"] if r["host"] == host and r["service"] == "web"]


def _ok_elsewhere(repo: StateRepo, result: dict[str, Any]) -> None:
    for h in repo.lab.hosts:
        if h.name == BROKEN:
            continue
        web = _web(result, h.name)
        assert web and {r["status"] for r in web} == {"pass"}, web
        assert http_get(f"http://{h.address}/")[0] == 200


def test_failed_apply_of_app_leaves_web_not_ready_there(repo: StateRepo) -> None:
    """app's apply fails on one host: web's operations are not run there and web is
    recorded DependencyNotReady with the reason; the other hosts get web applied and
    verified; the host's status names it."""
    repo.ssh(BROKEN, f"touch {FAIL_APPLY}")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 1, result
    hosts = {h["host"]: h for h in result["apply"]["hosts"]}
    assert hosts[BROKEN]["status"] == "failed"
    assert {op["status"] for op in hosts[BROKEN]["ops"] if op["service"] == "web"} == {"skipped"}
    assert [(r["status"], r["message"]) for r in _web(result, BROKEN)] == [
        ("DependencyNotReady", "requires app, which failed its apply on this host")]
    assert {h["status"] for name, h in hosts.items() if name != BROKEN} == {"ok"}
    _ok_elsewhere(repo, result)
    _, status = repo.gitops_json("status")
    row = next(r for r in status if r["host"] == BROKEN)
    ready = next(c for c in row["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ApplyFailed"
    assert ready["message"].endswith("; DependencyNotReady: web"), ready


def test_failed_checks_of_app_leave_web_checks_not_ready(repo: StateRepo) -> None:
    """app applies but fails a check on one host: web's checks are not run there and are
    DependencyNotReady, said so in the run's output and its recorded detail."""
    repo.ssh(BROKEN, f"rm -f {FAIL_APPLY} && touch {FAIL_CHECK}")
    proc = repo.gitops("reconcile", "--once")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"✗ {BROKEN} web/requires: DependencyNotReady: requires app, which failed its "
            "checks on this host (app/test_host_not_marked)") in proc.stdout, proc.stdout
    assert "1 service(s) DependencyNotReady" in proc.stdout
    _, runs = repo.gitops_json("history", "-n", "1")
    _, detail = repo.gitops_json("history", "--run", str(runs[0]["id"]))
    web = [c for c in detail["checks"] if c["host"] == BROKEN and c["service"] == "web"]
    assert [(c["check"], c["status"]) for c in web] == [("requires", "DependencyNotReady")]
    others = [c for c in detail["checks"] if c["host"] != BROKEN and c["service"] == "web"]
    assert others and {c["status"] for c in others} == {"pass"}


def test_web_is_applied_and_verified_once_app_is_ready(repo: StateRepo) -> None:
    """With app ready again, the next changed-only run applies every service on that host
    (web included) and verifies web there; the other hosts apply nothing."""
    repo.ssh(BROKEN, f"rm -f {FAIL_CHECK}")
    code, result = repo.gitops_json("reconcile", "--changed-only")
    assert code == 0, result
    hosts = {h["host"]: h for h in result["apply"]["hosts"]}
    assert hosts[BROKEN]["unchanged_services"] == []
    assert "web" in {op["service"] for op in hosts[BROKEN]["ops"]}
    assert {r["status"] for r in _web(result, BROKEN)} == {"pass"}
    assert http_get(f"http://{repo.address(BROKEN)}/")[0] == 200
    for name, h in hosts.items():
        if name != BROKEN:
            assert h["unchanged_services"] == ["base", "app", "web"], h

