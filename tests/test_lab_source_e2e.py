"""End to end: the README's path from ``gitops lab up --name NAME`` to a verified reconcile of
the sample on that lab, with no inventory written by hand (``source: lab``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import copy_sample, git_repo
from statelab import http_get

import gitops.lab as lab_api

pytestmark = pytest.mark.lab


def _name() -> str:
    """A lab name of its own, derived from the session lab's (never another engineer's)."""
    return lab_api.resolve_name(None)[:5] + "try"


def _gitops(*args: str, lab: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitops", *args], cwd=cwd,
                          env={**os.environ, "GITOPS_LAB_NAME": lab},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding this project's sample exactly as it is: deploys/, inventories/."""
    repo = copy_sample(tmp_path_factory.mktemp("sample") / "gitops", "deploys", "inventories")
    return git_repo(repo, message="the sample")


@pytest.fixture(scope="module")
def named_lab(clone: Path) -> Iterator[tuple[str, str]]:
    """A lab of another name booted by ``gitops lab up --name``; its name and what up printed."""
    name = _name()
    if lab_api.current(name) is not None:
        lab_api.down(name)
    proc = subprocess.run([sys.executable, "-m", "gitops", "lab", "up", "--name", name],
                          cwd=clone, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    try:
        yield name, proc.stdout
    finally:
        lab_api.down(name)


def test_a_lab_that_is_not_up_is_one_clear_error(clone: Path, tmp_path: Path) -> None:
    """Reconciling the sample on a lab that is not up exits 2 naming the command that fixes it."""
    name = _name()[:5] + "nup"
    assert lab_api.current(name) is None
    proc = _gitops("reconcile", "--once", "--repo", ".", "-e", "lab",
                   "--state-dir", str(tmp_path), lab=name, cwd=clone)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"inventories/lab.yml:7 settings.source: lab {name} is not up: "
            f"run `gitops lab up --name {name}`") in proc.stderr, proc.stderr
    assert "1 problem(s)" in proc.stderr


def test_lab_up_with_a_name_then_the_readme_command_reconciles_the_sample(
    named_lab: tuple[str, str], clone: Path, tmp_path: Path
) -> None:
    """`gitops lab up --name X`, then the command it prints,
    `GITOPS_LAB_NAME=X gitops reconcile --once --repo . -e lab`: every host applied and
    verified, nginx answers on each, and a plan then says nothing would change."""
    name, printed = named_lab
    command = f"GITOPS_LAB_NAME={name} gitops reconcile --once --repo . -e lab"
    assert command in printed, printed
    info = lab_api.current(name)
    assert info is not None and len(info.hosts) == 3
    proc = _gitops("reconcile", "--once", "--repo", ".", "-e", "lab", "--json",
                   "--state-dir", str(tmp_path), lab=name, cwd=clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "succeeded"
    assert {h["host"]: h["status"] for h in result["apply"]["hosts"]} == {
        "lab-1": "ok", "lab-2": "ok", "lab-3": "ok"}
    assert result["verify"]["results"]
    assert {r["status"] for r in result["verify"]["results"]} == {"pass"}
    for host in info.hosts:
        status, body = http_get(f"http://{host.address}/")
        assert status == 200 and host.name in body
    plan = _gitops("plan", "--exit-code", "--repo", ".", "-e", "lab",
                   "--state-dir", str(tmp_path), lab=name, cwd=clone)
    assert plan.returncode == 0 and "plan: no changes" in plan.stdout, plan.stdout
