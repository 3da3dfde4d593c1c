"""End to end: a guarded step longer than ``confirm_timeout`` is not reverted mid-apply.

While a guarded apply runs, the apply worker keeps moving each host's revert deadline (a
beat every quarter of the timeout). The beat runs in an SSH session of its own: in the
host's one shell it would wait behind the long step (an install on a busy host), the
deadline would pass, and the host would revert the apply while it was still going on, then
report files "NOT back as saved" (seen with 50 lab hosts converging at once). Two hosts: lab-1
logs in as root, lab-2 as the lab's sudo user with ``_sudo: true`` (the beat runs through sudo).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from statelab import make_state_repo

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

TIMEOUT = 5
"""``settings.guard.confirm_timeout`` (seconds): the smallest the settings allow."""
LONG_STEP = ("\nserver.shell(name='A guarded step longer than the confirm timeout (test)',\n"
             f"             commands=['sleep {TIMEOUT * 2 + 2}'])\n")


def test_a_guarded_step_longer_than_the_timeout_is_confirmed_not_reverted(
        lab: LabInfo, tmp_path: Path) -> None:
    """A guarded service whose step runs 12 s under a 5 s confirm timeout: the host does not
    revert while the step runs; the apply ends Confirmed and leaves no armed revert, on a
    host reached as root and on one reached as a user with sudo."""
    repo = make_state_repo(tmp_path, lab, hosts=2, sudo_hosts=("lab-2",))
    inv = repo.inventory()
    inv["settings"]["guard"] = {"confirm_timeout": TIMEOUT, "margin": 10}
    for spec in inv["hosts"].values():  # in group `all` only: base only
        spec["groups"] = ["all"]
        spec.pop("services", None)
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    deploy = repo.path / "deploys/base/deploy.py"  # guarded by the sample's service.yml
    deploy.write_text(deploy.read_text() + LONG_STEP)
    repo.commit("base: a guarded step longer than the confirm timeout")

    code, result = repo.gitops_json("reconcile", "--once")

    hosts = (result.get("apply") or {}).get("hosts", [])
    assert [h["host"] for h in hosts] == ["lab-1", "lab-2"], result
    for record in hosts:
        assert record["guard"]["result"] == "Confirmed", record
        assert record["status"] in ("ok", "changed"), record
    assert code == 0, result
    for record in hosts:
        left = repo.ssh(record["host"], "ls /var/lib/gitops-guard 2>/dev/null; "
                        "systemctl list-timers --all --no-legend | grep gitops-guard; true")
        assert left.strip() == "", left
