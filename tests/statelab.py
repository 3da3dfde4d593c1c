"""Test helpers: a real Git state repository made from this project's sample, aimed at a lab.

Used by the end-to-end tests: copies ``inventories/lab.yml`` and ``deploys/`` into a fresh Git
repository, naming the running lab and its hosts, and runs the real ``gitops`` CLI on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from builders import PROJECT, copy_sample, git, init_repo

from gitops.lab import LabInfo, resolve_name
from gitops.lab.sudo import USER as SUDO_USER

__all__ = ["PROJECT", "SUDO_USER", "StateRepo", "git", "http_get", "make_state_repo",
           "set_app_message", "side_lab"]


@dataclass
class StateRepo:
    """A state repository on disk, its reconciler state folder and the lab it targets."""

    path: Path
    state_dir: Path
    lab: LabInfo

    def commit(self, message: str) -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def inventory(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.path / "inventories/lab.yml").read_text())
        return data

    def gitops(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this repository (``--json`` output parsed by callers)."""
        targets = ["--repo", str(self.path), "--state-dir", str(self.state_dir)]
        if args and args[0] in ("status", "history"):
            targets = ["--state-dir", str(self.state_dir)]
        return subprocess.run(
            [sys.executable, "-m", "gitops", *args, *targets],
            capture_output=True, text=True, timeout=timeout,
        )

    def gitops_json(self, *args: str) -> tuple[int, Any]:
        proc = self.gitops(*args, "--json")
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def ssh(self, host: str, command: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["ssh", "-F", str(self.lab.ssh_config), host, command],
            capture_output=True, text=True, timeout=60,
        )
        if check:
            assert proc.returncode == 0, f"{host}: {command}: {proc.stderr}"
        return proc.stdout

    def address(self, host: str) -> str:
        return next(h.address for h in self.lab.hosts if h.name == host)


def make_state_repo(root: Path, lab: LabInfo, hosts: int | None = None,
                    services: tuple[str, ...] | None = None,
                    sudo_hosts: tuple[str, ...] = ()) -> StateRepo:
    """The sample state repository, its ``lab`` inventory aimed at ``lab``'s hosts.

    ``sudo_hosts``: those hosts log in as the lab's sudo user (``gitops.lab.sudo.USER``, made
    by the ``lab`` fixture) with ``_sudo: true``, as real hosts do; the others as root.

    ``services``: keep only those of the sample's services (their folders and parameters;
    the groups stay, emptied of the others), for a test that needs no more: each reconcile
    then plans, applies and checks only what the test is about.
    """
    repo = root / "state-repo"
    copy_sample(repo)
    (repo / "inventories").mkdir()
    inventory = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    if services is not None:
        _keep_services(repo, inventory, services)
    template = dict(next(iter(inventory["hosts"].values())))
    overrides = {name: spec.get("services") for name, spec in inventory["hosts"].items()}
    chosen = lab.hosts[:hosts] if hosts else lab.hosts
    inventory["hosts"] = {}
    for h in chosen:
        spec = dict(template)
        spec.pop("services", None)
        if overrides.get(h.name):
            spec["services"] = overrides[h.name]
        if h.name in sudo_hosts:
            spec["ssh"] = {"user": SUDO_USER}
            spec["vars"] = {**spec.get("vars", {}), "_sudo": True}
        inventory["hosts"][h.name] = spec
    inventory["settings"]["lab"] = lab.name  # addresses and key from that lab (source: lab)
    (repo / "inventories/lab.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    init_repo(repo)
    state = StateRepo(repo, root / "state", lab)
    state.commit("sample state for the lab")
    return state


def _keep_services(repo: Path, inventory: dict[str, Any], services: tuple[str, ...]) -> None:
    """Drop the sample's services not in ``services`` from ``repo``'s deploys and from the
    ``inventory``'s groups and hosts."""
    unknown = set(services) - {p.name for p in (repo / "deploys").iterdir()}
    assert not unknown, f"not services of the sample: {sorted(unknown)}"
    for folder in (repo / "deploys").iterdir():
        if folder.name not in services:
            shutil.rmtree(folder)
    for spec in [*inventory["groups"].values(), *inventory["hosts"].values()]:
        if spec.get("services") is not None:
            spec["services"] = {k: v for k, v in spec["services"].items() if k in services}


def set_app_message(repo: StateRepo, message: str) -> str:
    """Commit the sample's ``app`` service (group ``web``) serving ``message``; the sha."""
    inv = repo.inventory()
    inv["groups"]["web"]["services"]["app"]["message"] = message
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    return repo.commit(f"app: {message}")


def side_lab(tag: str) -> str:
    """A lab name of its own for one test, derived from the session lab's name, so that two
    engineers running the suite with different GITOPS_LAB_NAME never share it."""
    return resolve_name(None)[:5] + tag


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    """GET a URL on a lab host (never anything else)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()
