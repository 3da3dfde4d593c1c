"""End to end: what ``gitops plan`` says on real lab hosts, and what the apply then does.

The steps run in file order against one lab and one copy of the sample repository: converge,
plan (nothing to do), change parameters, plan, apply.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from statelab import StateRepo, make_state_repo

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    return make_state_repo(tmp_path_factory.mktemp("plan"), lab)


def _planned(plan: dict[str, Any]) -> dict[str, list[str]]:
    return {h["host"]: [op["name"] for op in h["ops"] if op["would_change"]]
            for h in plan["plan"]["hosts"]}


def _applied(result: dict[str, Any]) -> dict[str, list[str]]:
    return {h["host"]: [op["name"] for op in h["ops"] if op["status"] == "changed"]
            for h in result["apply"]["hosts"]}


def test_plan_on_converged_hosts_says_nothing_would_change(repo: StateRepo) -> None:
    """After a reconcile, plan says no change on every host (counted, or by fingerprint when
    the host's last apply changed nothing) and --exit-code exits 0."""
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    proc = repo.gitops("plan", "--exit-code")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in ("lab-1", "lab-2", "lab-3"):
        assert (f"{host}: 0 of " in proc.stdout
                or f"{host}: no change, by fingerprint" in proc.stdout), proc.stdout
    assert "plan: no changes" in proc.stdout
    code, plan = repo.gitops_json("plan", "--exit-code")
    assert code == 0 and plan["changes"] == 0, _planned(plan)


def test_plan_counts_exactly_what_the_apply_then_changes(repo: StateRepo) -> None:
    """After a parameter change, plan exits 3 with --exit-code and names, host by host, the
    operations the apply then changes; a restart that follows a change is listed apart."""
    inventory = repo.path / "inventories/lab.yml"
    inventory.write_text(inventory.read_text()
                         .replace("Hello from the gitops lab", "Hello from a new plan")
                         .replace("timezone: UTC", "timezone: Europe/Paris"))
    repo.commit("new message and timezone")
    code, plan = repo.gitops_json("plan", "--exit-code")
    assert code == 3, plan
    planned = _planned(plan)
    assert "app | Restart app (code, configuration or unit changed)" in planned["lab-1"]
    assert "app | Restart app (code, configuration or unit changed)" not in planned["lab-3"]
    restart = next(op for op in plan["plan"]["hosts"][0]["ops"] if op["name"].endswith(
        "Restart app (code, configuration or unit changed)"))
    assert restart["depends_on"] == ["app | App configuration"]
    text = repo.gitops("plan").stdout
    assert "runs if app | App configuration changes" in text, text
    assert f"plan: {plan['changes']} change(s) on 3 of 3 host(s)" in text, text

    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 0, result
    assert _applied(result) == planned
    assert plan["changes"] == sum(len(ops) for ops in planned.values())


def test_plan_with_a_relative_state_dir_reads_the_deploys(repo: StateRepo) -> None:
    """A relative --state-dir works: a deploy naming its files from ``__file__`` finds them."""
    proc = subprocess.run(
        [sys.executable, "-m", "gitops", "plan", "--repo", str(repo.path),
         "--state-dir", repo.state_dir.name],
        cwd=repo.state_dir.parent, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan: no changes" in proc.stdout, proc.stdout
