"""End to end: the sample state repository reconciled on real lab hosts by the real CLI.

The steps run in file order against one lab and one repository, as a user would take them:
first reconcile, no-op reconcile, a one-template change, a broken commit, drift by hand.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from polling import wait_for
from statelab import StateRepo, http_get, make_state_repo

import gitops.lab as lab_api
from gitops.lab import LabInfo
from gitops.lab import hosts as lab_hosts
from gitops.lab.hostsource import LAB
from gitops.pipeline.reconcile import Request, Target, run
from gitops.record.store import Store

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    return make_state_repo(tmp_path_factory.mktemp("reconcile"), lab)


def _changed_ops(result: dict[str, Any]) -> dict[str, set[str]]:
    return {
        h["host"]: {op["name"] for op in h["ops"] if op["status"] == "changed"}
        for h in result["apply"]["hosts"]
    }


def _messages(repo: StateRepo) -> dict[str, str]:
    inv = repo.inventory()
    default = inv["groups"]["web"]["services"]["app"]["message"]
    return {
        name: (spec.get("services") or {}).get("app", {}).get("message", default)
        for name, spec in inv["hosts"].items()
    }


def test_reconcile_applies_and_verifies_every_service(repo: StateRepo) -> None:
    """A first reconcile converges every host, all checks pass, nginx answers with the app."""
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert result["result"] == "succeeded"
    assert {h["status"] for h in result["apply"]["hosts"]} == {"ok"}
    assert result["verify"]["results"] and not result["verify"]["host_errors"]
    assert {r["status"] for r in result["verify"]["results"]} == {"pass"}
    for host, message in _messages(repo).items():
        status, body = http_get(f"http://{repo.address(host)}/")
        assert status == 200
        assert message in body and host in body


def test_second_reconcile_changes_nothing(repo: StateRepo) -> None:
    """Reconciling the same revision again reports zero changes on every host."""
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert all(not ops for ops in _changed_ops(result).values()), _changed_ops(result)


def test_template_change_changes_only_that(repo: StateRepo) -> None:
    """A commit that edits one template changes only that file, and the record has the SHA."""
    motd = repo.path / "deploys/base/templates/motd.j2"
    motd.write_text(motd.read_text() + "\n  maintenance window: Sundays 04:00 UTC\n")
    sha = repo.commit("motd: announce the maintenance window")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert result["revision"] == f"main@sha1:{sha}"
    changed = _changed_ops(result)
    assert all(ops == {"base | Message of the day"} for ops in changed.values()), changed
    assert "maintenance window" in repo.ssh("lab-1", "cat /etc/motd")
    _, status = repo.gitops_json("status")
    assert {row["last_applied_revision"] for row in status} == {f"main@sha1:{sha}"}


def test_changed_only_applies_the_changed_service_and_verifies_all(repo: StateRepo) -> None:
    """--changed-only applies only the service a commit touched (the daemon's way for new
    commits) and still runs every check; a host that then fails a check of a service left out
    gets every service applied on the next run."""
    site = repo.path / "deploys/web/files/site/index.html"
    site.write_text(site.read_text().replace("</body>", "<p>changed-only</p></body>", 1))
    sha = repo.commit("site: one more paragraph")
    code, result = repo.gitops_json("reconcile", "--changed-only")
    assert code == 0, result
    assert result["revision"] == f"main@sha1:{sha}"
    for h in result["apply"]["hosts"]:
        assert h["unchanged_services"] == ["base", "app"], h
        assert {op["service"] for op in h["ops"]} == {"web"}
    assert {r["service"] for r in result["verify"]["results"]} == {"base", "app", "web"}
    assert "changed-only" in http_get(f"http://{repo.address('lab-1')}/static/index.html")[1]

    # drift in a service the next changed-only run leaves out: its check catches it ...
    repo.ssh("lab-3", "echo hand-edited > /etc/motd")
    site.write_text(site.read_text().replace("<p>changed-only</p>", "<p>again</p>", 1))
    repo.commit("site: reword")
    code, result = repo.gitops_json("reconcile", "--changed-only")
    assert code == 1 and result["result"] == "failed"
    assert result["verify"]["results"] and {
        r["host"] for r in result["verify"]["results"] if r["status"] != "pass"} == {"lab-3"}
    # ... and the next run applies every service there (and only web elsewhere was done)
    code, result = repo.gitops_json("reconcile", "--changed-only")
    assert code == 0, result
    by_host = {h["host"]: h for h in result["apply"]["hosts"]}
    assert by_host["lab-3"]["unchanged_services"] == []
    assert "base | Message of the day" in {
        op["name"] for op in by_host["lab-3"]["ops"] if op["status"] == "changed"}
    assert by_host["lab-1"]["unchanged_services"] == ["base", "app", "web"]
    assert not by_host["lab-1"]["ops"]
    assert "hand-edited" not in repo.ssh("lab-3", "cat /etc/motd")


def test_a_rollout_is_recorded_batch_by_batch(repo: StateRepo) -> None:
    """With batches of one host, a host's results and status are recorded as soon as its batch
    is verified, while the rollout goes on (what the status page and metrics show)."""
    inv = repo.inventory()
    inv["settings"]["rollout"] = {"batch": 1}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    motd = repo.path / "deploys/base/templates/motd.j2"
    motd.write_text(motd.read_text() + "\n  rolled out one host at a time\n")
    ref = f"main@sha1:{repo.commit('one host per batch')}"
    seen: dict[int, tuple[set[str], set[str], bool]] = {}

    def progress(line: str) -> None:
        found = re.match(r"batch (\d)/3: applying", line)
        if found is None or found.group(1) == "1":
            return
        with closing(Store(repo.state_dir)) as store:
            applied = {row["host"] for row in store.status("lab")
                       if row["last_applied_revision"] == ref}
            run_id = store.history("lab", limit=1)[0]["id"]
            recorded = {row[0] for row in store.db.execute(
                "SELECT host FROM host_results WHERE run_id=?", (run_id,))}
            unfinished = store.history("lab", limit=1)[0]["finished_at"] is None
        seen[int(found.group(1))] = (applied, recorded, unfinished)

    target = Target(repo=str(repo.path), branch="main", environment="lab",
                    state_dir=repo.state_dir, lab=LAB)
    outcome = run(target, Request(reason="batches"), progress)
    assert outcome.result == "succeeded", outcome.as_dict()
    assert seen == {2: ({"lab-1"}, {"lab-1"}, True),
                    3: ({"lab-1", "lab-2"}, {"lab-1", "lab-2"}, True)}
    del inv["settings"]["rollout"]
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    repo.commit("rollout: one batch again")


def test_invalid_commit_lists_every_problem_and_applies_nothing(repo: StateRepo) -> None:
    """Three mistakes: all reported with file and line, exit 2, nothing changes on any host."""
    good = repo.inventory()
    inv = repo.inventory()
    inv["settings"]["colour"] = "blue"  # unknown field
    inv["groups"]["web"]["services"]["web"]["listen_port"] = "eighty"  # wrong type
    inv["groups"]["web"]["services"]["cache"] = {}  # undefined service
    path = repo.path / "inventories/lab.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    motd = repo.path / "deploys/base/templates/motd.j2"
    motd.write_text(motd.read_text() + "\n  THIS MUST NOT REACH ANY HOST\n")
    bad = repo.commit("three mistakes")
    lines = path.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    proc = repo.gitops("validate")
    assert proc.returncode == 2
    assert f"inventories/lab.yml:{line_of('colour:')} settings.colour: Extra inputs" in proc.stderr
    assert (f"inventories/lab.yml:{line_of('listen_port: eighty')} "
            "groups.web.services.web.listen_port: Input should be a valid integer") in proc.stderr
    assert (f"inventories/lab.yml:{line_of('cache:')} groups.web.services.cache: service 'cache'"
            in proc.stderr)
    assert "Traceback" not in proc.stderr

    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 2 and result["result"] == "invalid"
    assert len(result["problems"]) == 3
    for host in ("lab-1", "lab-2", "lab-3"):
        assert "MUST NOT" not in repo.ssh(host, "cat /etc/motd")
    _, status = repo.gitops_json("status")
    env = next(row for row in status if row["host"] == "")
    conditions = {c["type"]: c for c in env["conditions"]}
    assert conditions["Stalled"]["status"] == "True"
    assert env["last_attempted_revision"] == f"main@sha1:{bad}"
    assert env["last_applied_revision"] != f"main@sha1:{bad}"

    path.write_text(yaml.safe_dump(good, sort_keys=False))
    motd.write_text(motd.read_text().replace("\n  THIS MUST NOT REACH ANY HOST\n", ""))
    repo.commit("fix the three mistakes")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result


def test_verify_names_the_host_where_nginx_was_stopped(repo: StateRepo) -> None:
    """nginx stopped by hand on one host: verify names that host and check, exit 1."""
    repo.ssh("lab-2", "systemctl stop nginx")
    proc = repo.gitops("verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failing = [ln for ln in proc.stdout.splitlines() if "✗" in ln]
    assert failing and all("lab-2" in ln for ln in failing), proc.stdout
    assert any("web/test_nginx_running_and_enabled" in ln for ln in failing)
    _, runs = repo.gitops_json("history")
    assert runs[0]["kind"] == "verify" and runs[0]["failed_hosts"] == ["lab-2"]
    code, result = repo.gitops_json("reconcile", "--once")  # drift corrected
    assert code == 0, result
    assert "active" in repo.ssh("lab-2", "systemctl is-active nginx")


@pytest.fixture
def own_lab() -> Iterator[LabInfo]:
    """A separate lab, since this test stops one of its hosts."""
    name = (os.environ.get("GITOPS_LAB_NAME", "gitops")[:4] + "stop")[:8]
    info = lab_api.up(hosts=3, name=name)
    try:
        yield info
    finally:
        lab_api.down(name)


def test_host_stopped_mid_run_fails_alone(own_lab: LabInfo, tmp_path: Path) -> None:
    """A host that dies during apply is recorded as failed, with why; the others complete."""
    repo = make_state_repo(tmp_path, own_lab)
    slow = repo.path / "deploys/slow"  # a step long enough to stop a host in the middle of
    slow.mkdir()
    (slow / "deploy.py").write_text(
        "from pyinfra.operations import server\n"
        "server.shell(name='Long step', commands=['sleep 4'])\n"
        "server.shell(name='After the long step',"
        " commands=['echo done > /tmp/gitops-after-long-step'])\n"
    )
    inv = repo.inventory()  # the slow step alone: fresh hosts need no converge of the sample
    inv["settings"]["require_checks"] = False  # the slow step has nothing to check
    inv["groups"] = {"all": {"services": {}}, "slow": {"services": {"slow": {}}}}
    for spec in inv["hosts"].values():
        spec["groups"] = ["slow"]
        spec.pop("services", None)
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    repo.commit("a slow step")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitops", "reconcile", "--once", "--json", "--repo",
         str(repo.path), "--state-dir", str(repo.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if re.search(r"applying on \d+ host\(s\)", line):  # the worker has planned
            break
    wait_for(lambda: all(repo.ssh(h, "pgrep -f '^sleep 4'", check=False).strip()
                         for h in ("lab-1", "lab-2", "lab-3")), 60,
             "every host inside the long step")
    victims = [pid for pid, index in lab_hosts.find_nspawn(own_lab.name).items() if index == 3]
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGTERM)  # the host halts, as a real one would
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1
    result = json.loads(out)
    assert result["apply"] is not None, result["error"]
    hosts = {h["host"]: h for h in result["apply"]["hosts"]}
    assert hosts["lab-1"]["status"] == "ok" and hosts["lab-2"]["status"] == "ok"
    assert hosts["lab-3"]["status"] in ("failed", "unreachable")
    _, status = repo.gitops_json("status")
    lab3 = next(row for row in status if row["host"] == "lab-3")
    ready = next(c for c in lab3["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"]
    _, runs = repo.gitops_json("history")
    assert runs[0]["failed_hosts"] == ["lab-3"]
    for host in ("lab-1", "lab-2"):  # their apply went on past the long step to its end
        assert repo.ssh(host, "cat /tmp/gitops-after-long-step").strip() == "done"
