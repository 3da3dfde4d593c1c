"""End to end: failures that are not what they first look like.

A service of one's own (``note``) on two lab hosts. An ordinary failed apply (it installs a
package no apt source has) is a failure, not a crash: the next commit's run is an ordinary one
(not "recovering from an interrupted apply"), its own failure is a counted change failure, and
the fixed commit after it verifies. A commit that only makes a check stricter, under the
daemon, finds the hosts short of it: nothing is rolled back or quarantined, and it is no
failed change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from polling import wait_for
from statelab import StateRepo, make_state_repo
from test_daemon_e2e import Daemon

from gitops.lab import LabInfo
from gitops.pipeline import journal

pytestmark = pytest.mark.lab

MISSING = "gitops-no-such-package"
DEPLOY = '''\
from pyinfra.operations import apt, files

files.line(name="Note", path="/etc/gitops-note", line={line!r})
{install}
'''
INSTALL = f'apt.packages(name="Install the note tool", packages=["{MISSING}"])'
CHECKS = '''\
def test_the_note_is_written(host, params):
    """The note holds the declared text."""
    assert host.file("/etc/gitops-note").contains({wanted!r})
'''


def _note(repo: StateRepo, *, install: bool, wanted: str, message: str,
          line: str = "note") -> str:
    folder = repo.path / "deploys/note"
    folder.mkdir(exist_ok=True)
    (folder / "deploy.py").write_text(DEPLOY.format(install=INSTALL if install else "",
                                                    line=line))
    (folder / "checks.py").write_text(CHECKS.format(wanted=wanted))
    inv = repo.inventory()
    inv["groups"]["all"]["services"]["note"] = {}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    return repo.commit(message)


def test_a_failed_apply_is_not_recovered_as_a_crash(lab: LabInfo, tmp_path: Path) -> None:
    """Run 1 fails on apt; run 2 (a commit that changes the note, whose check then fails) is
    an ordinary reconcile, recorded failed (no "interrupted", no "crash"); run 3 verifies.
    Both failures are counted change failures: no rollout is left "not counted yet"."""
    repo = make_state_repo(tmp_path, lab, hosts=2, services=("base",))
    _note(repo, install=True, wanted="note", message="note: install the note tool")
    first = repo.gitops("reconcile", "--once")
    assert first.returncode == 1, first.stdout + first.stderr
    assert MISSING in first.stdout + first.stderr
    folder = repo.state_dir / "journal" / "lab"
    assert journal.interrupted(folder) == set()  # it failed; nothing cut it

    _note(repo, install=False, wanted="another note", line="a new note",
          message="note: without the tool, a new note")
    second = repo.gitops("reconcile", "--once")
    said = second.stdout + second.stderr
    assert second.returncode == 1, said
    assert "interrupted" not in said and "crash" not in said, said
    assert "note/test_the_note_is_written" in said or "test_the_note_is_written" in said, said

    _note(repo, install=False, wanted="note", message="note: the check as it was")
    third = repo.gitops("reconcile", "--once")
    assert third.returncode == 0, third.stdout + third.stderr

    code, history = repo.gitops_json("history")
    assert code == 0
    assert [r["result"] for r in history if r["kind"] == "reconcile"][:3] == [
        "succeeded", "failed", "failed"]
    lab_metrics = _metrics(repo)
    assert lab_metrics["rollouts_pending"] == 0, lab_metrics
    assert lab_metrics["failed_rollouts"] == 2, lab_metrics
    assert lab_metrics["deployments"] == 1, lab_metrics


def _metrics(repo: StateRepo) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "gitops", "metrics", "--json", "--state-dir",
                           str(repo.state_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures: dict[str, object] = json.loads(proc.stdout)["lab"]
    return figures


def test_a_stricter_check_is_not_rolled_back(lab: LabInfo, tmp_path: Path) -> None:
    """Under the daemon, a commit that only makes a check stricter (the hosts do not meet
    it): its run fails with nothing changed on the hosts; the daemon says the checks found
    them short, rolls nothing back, quarantines nothing; the hosts' status says so, and the
    delivery metrics count it apart from failed changes."""
    repo = make_state_repo(tmp_path / "repo", lab, hosts=2, services=("base",))
    good = _note(repo, install=False, wanted="note", message="note: a note")
    daemon = Daemon(repo, tmp_path)
    daemon.start()
    try:
        wait_for(lambda: all((daemon.status_now().get(h) or {}).get(
            "last_verified_revision", "").endswith(good) for h in ("lab-1", "lab-2")),
            600, "the note verified on both hosts")
        stricter = _note(repo, install=False, wanted="a stricter note",
                         message="note: a stricter check")
        wait_for(lambda: "short of the checks of " + stricter[:10] in daemon.log.read_text(),
                 300, "the daemon's word on the stricter check")
        runs = daemon.runs_now()
        status = daemon.status_now()
    finally:
        daemon.stop()
    assert [r["kind"] for r in runs if r["kind"] == "rollback"] == []
    assert [r["result"] for r in runs if r["sha"] == stricter] == ["failed"]
    assert next(r for r in runs if r["sha"] == stricter)["changed"] == 0
    code, rows = repo.gitops_json("status")
    assert code in (0, 1)
    env = next(row for row in rows if row["host"] == "")
    assert env["quarantined"] == []
    for host in ("lab-1", "lab-2"):
        ready = status[host]["conditions"][0]
        assert ready["reason"] == "VerificationFailed"
        assert "the checks found it short of them" in ready["message"]
        assert status[host]["last_verified_revision"].endswith(good)
    figures = _metrics(repo)
    assert figures["failed_rollouts"] == 0, figures
    assert figures["short_of_checks"] == 1, figures
    assert figures["rollouts_pending"] == 0, figures


def test_a_rollout_stopped_before_any_operation_applies_and_checks_nothing(
        lab: LabInfo, tmp_path: Path) -> None:
    """One host of two cannot be reached (a key file that is not there): over the sample's
    ``fail_percent`` (34), the apply stops before any operation. The host it did reach is
    reported not applied (``skipped``, with why; it was ``ok``, then checked as if applied),
    none of its checks run, nothing is recorded as applied there, and the last line names
    both hosts."""
    repo = make_state_repo(tmp_path, lab, hosts=2, services=())
    _note(repo, install=False, wanted="note", message="a note")
    inv = repo.inventory()
    inv["hosts"]["lab-2"]["ssh"] = {"key_file": str(tmp_path / "no-such-key")}
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    repo.commit("lab-2 with a key file that is not there")
    code, result = repo.gitops_json("reconcile", "--once")
    assert code == 1, result
    hosts = {h["host"]: h for h in result["apply"]["hosts"]}
    assert hosts["lab-2"]["status"] == "unreachable", hosts["lab-2"]
    assert hosts["lab-1"]["status"] == "skipped", hosts["lab-1"]
    assert hosts["lab-1"]["error"] == ("not applied: the apply stopped before it ran any "
                                       "operation"), hosts["lab-1"]
    assert not hosts["lab-1"]["ops"]
    checked = (result["verify"] or {"results": []})["results"]
    assert not [r for r in checked if r["host"] == "lab-1"], checked
    _, rows = repo.gitops_json("status")
    lab1 = next(r for r in rows if r["host"] == "lab-1")
    assert lab1["last_applied_revision"] is None, lab1
    text = repo.gitops("reconcile", "--once")
    assert text.returncode == 1, text.stdout + text.stderr
    assert text.stdout.rstrip().splitlines()[-1].endswith(
        "1 host(s) unreachable (lab-2); not applied on lab-1: the rollout stopped first"
    ), text.stdout
