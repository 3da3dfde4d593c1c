"""A failed run explains itself: the daemon's log names an invalid revision's problems (file
and line), each failed operation with its stderr's end and each host's failed checks;
``gitops status`` prints an invalid revision's problems."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from clitools import sample_repo

from gitops.cli import main
from gitops.daemon.loop import Daemon
from gitops.records import ApplyReport, CheckResult, HostApply, OpResult, VerifyReport
from gitops.report.explain import failure_lines
from gitops.settings import EnvironmentConfig, Settings

PROBLEM = ("inventories/lab.yml:{line} settings.fail_percent: Input should be less than or "
           "equal to 100")


def test_an_invalid_commit_logs_its_problems_and_status_prints_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon logs each problem of an invalid commit with its file and line (not just
    the commit's message), and ``gitops status`` prints them with the run that has them."""
    repo = sample_repo(tmp_path, invalid=True)
    lines = (repo / "inventories/lab.yml").read_text().splitlines()
    problem = PROBLEM.format(line=lines.index("  fail_percent: 340") + 1)
    state = tmp_path / "state"
    d = Daemon(Settings(state_dir=state, environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False)]), rand=lambda: 0.5)
    with caplog.at_level(logging.INFO, logger="gitops"):
        d.cycle(d.envs["lab"], None)
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("lab: main@sha1:") and m.endswith(
        " is invalid (1 problem(s)), nothing applied:") for m in logged), logged
    assert f"lab:   {problem}" in logged
    assert "lab: run #1: invalid, nothing applied" in logged  # how the run ended
    out = CliRunner().invoke(main, ["status", "--state-dir", str(state)])
    assert out.exit_code == 0, out.output
    assert ("    Problems (run #1; all of them: gitops history --run 1):\n"
            f"      {problem}\n") in out.output


def test_a_failed_apply_and_failed_checks_are_named() -> None:
    """A failed run's lines name the failed operation with the last lines of its stderr, and
    each host's failed checks by name with the first line of their message."""
    apply = ApplyReport(hosts=(
        HostApply(host="lab-1", status="failed", ops=(
            OpResult(name="Install redis", service="redis", status="failed",
                     stderr="Reading package lists...\nE: Unable to locate package redis-srv"),
        )),
        HostApply(host="lab-2", status="ok"),
    ))
    verify = VerifyReport(results=(
        CheckResult(host="lab-2", service="redis", check="test_maxmemory", status="fail",
                    message="assert '64mb' == '128mb'\n - 128mb"),
        CheckResult(host="lab-2", service="redis", check="test_running", status="pass"),
    ), host_errors={"lab-3": "ssh: connect to host lab-3 port 22: No route to host"})
    assert failure_lines(result="failed", ref="main@sha1:abc", error=None, apply=apply,
                         verify=verify) == [
        "lab-1: redis: Install redis failed: Reading package lists... | "
        "E: Unable to locate package redis-srv",
        "lab-2: checks failed: redis/test_maxmemory (fail: assert '64mb' == '128mb')",
        "lab-3: not verified: ssh: connect to host lab-3 port 22: No route to host",
    ]
    assert failure_lines(result="succeeded", ref=None, error=None, apply=apply,
                         verify=verify) == []
