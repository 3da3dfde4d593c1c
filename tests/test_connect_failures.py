"""A host the apply cannot connect to is reported as such, each with its own reason.

pyinfra's ``connect_all`` stops at the first host whose connector raises (a key file it
cannot read) and leaves the hosts after it neither connected nor failed; the apply then
reported them ``ok`` with nothing applied. No lab needed: the hosts are loopback
addresses and the reasons come before any connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from builders import PROJECT, copy_sample, free_port, git_repo
from clitools import gitops


def test_each_host_whose_key_file_is_missing_is_unreachable_with_its_own_reason(
        tmp_path: Path) -> None:
    repo = copy_sample(tmp_path / "repo")
    inventory = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    port = free_port()
    inventory["settings"] = {"ssh": {"user": "root", "port": port, "connect_timeout": 2},
                             "require_checks": False}
    inventory["groups"] = {"all": {"services": {
        "base": inventory["groups"]["all"]["services"]["base"]}}}
    inventory["hosts"] = {
        "h1": {"address": "127.0.0.1", "groups": ["all"],
               "ssh": {"key_file": str(tmp_path / "gone-1")}},
        "h2": {"address": "127.0.0.2", "groups": ["all"],
               "ssh": {"key_file": str(tmp_path / "gone-2")}}}
    git_repo(repo, {"inventories/prod.yml": yaml.safe_dump(inventory, sort_keys=False)}, "s")
    proc = gitops("reconcile", "--once", "--repo", str(repo), "-e", "prod", "--state-dir",
                  str(tmp_path / "state"), "--json")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "failed"
    hosts = {h["host"]: h for h in result["apply"]["hosts"]}
    for name, key in (("h1", "gone-1"), ("h2", "gone-2")):
        assert hosts[name]["status"] == "unreachable", hosts[name]
        assert hosts[name]["error"] == f"cannot connect: No such private key file: " \
                                       f"{tmp_path / key}", hosts[name]
        assert hosts[name]["ops"] == []
