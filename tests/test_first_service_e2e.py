"""``docs/get-started/first-service.md`` followed literally on a lab, so the page cannot rot:
each file block (a fenced block with ``title="path"``) is written to its path, each ``sh``
block's commands run in order in one folder (``test_the_first_service_page_runs_as_written``,
a lab test) (a command ending in ``&`` is started in the background and stopped at the end),
every command must succeed, and the last commit ends verified on every host, applied by the
daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import PROJECT, git

import gitops.lab as lab_api

PAGE = PROJECT / "docs" / "get-started" / "first-service.md"
_BLOCK = re.compile(r"^```(?P<lang>[\w-]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_TITLE = re.compile(r'title="(?P<path>[^"]+)"')
_BACKGROUND = re.compile(r"(?<!&)&\s*(#.*)?$")


@dataclass(frozen=True)
class Step:
    """A file to write (``path``, ``text``) or a shell command to run (``command``)."""

    path: str | None = None
    text: str = ""
    command: str | None = None
    background: bool = False


def steps(page: str) -> list[Step]:
    """The page's file blocks and ``sh`` commands, in the page's order."""
    out: list[Step] = []
    for block in _BLOCK.finditer(page):
        title = _TITLE.search(block["info"])
        if title:
            out.append(Step(path=title["path"], text=block["body"]))
        elif block["lang"] == "sh":
            for line in block["body"].replace("\\\n", " ").splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                background = bool(_BACKGROUND.search(line))
                command = _BACKGROUND.sub("", line).strip() if background else line
                out.append(Step(command=command, background=background))
    return out


def test_the_page_has_files_and_commands_to_follow() -> None:
    """The page's blocks parse into the files and commands the lab test follows."""
    found = steps(PAGE.read_text())
    paths = [s.path for s in found if s.path]
    assert paths == ["my-state/inventories/lab.yml", "my-state/deploys/redis/model.py",
                     "my-state/deploys/redis/deploy.py",
                     "my-state/deploys/redis/templates/redis.conf.j2",
                     "my-state/deploys/redis/checks.py", "gitops.toml"]
    commands = [s.command for s in found if s.command]
    assert commands[0] == "gitops lab up --hosts 2"
    assert [s.command for s in found if s.background] == ["gitops run > daemon.log 2>&1"]
    assert "gitops reconcile --once" in commands
    assert "gitops reconcile --reason \"see the commit through\"" in commands


def _lab_name() -> str:
    return lab_api.resolve_name(None)[:5] + "fs"


@pytest.fixture
def lab_name() -> Iterator[str]:
    """The page boots its own lab (``gitops lab up``): a name of its own, down before and
    after."""
    name = _lab_name()
    if lab_api.current(name) is not None:
        lab_api.down(name)
    try:
        yield name
    finally:
        if lab_api.current(name) is not None:
            lab_api.down(name)


def _env(lab: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITOPS_", "GIT_"))}
    return env | {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        "GITOPS_LAB_NAME": lab, "NO_COLOR": "1",
        "GIT_AUTHOR_NAME": "First Service", "GIT_AUTHOR_EMAIL": "first@example.invalid",
        "GIT_COMMITTER_NAME": "First Service", "GIT_COMMITTER_EMAIL": "first@example.invalid",
    }


@pytest.mark.lab
def test_the_first_service_page_runs_as_written(lab_name: str, tmp_path: Path) -> None:
    """Every command of the page succeeds in order, and its last commit is applied by the
    daemon and verified on both hosts."""
    env = _env(lab_name)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for step in steps(PAGE.read_text()):
            if step.path is not None:
                target = tmp_path / step.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.text)
                continue
            assert step.command is not None
            if step.background:
                started.append(subprocess.Popen(
                    ["bash", "-c", f"exec {step.command}"], cwd=tmp_path, env=env,
                    start_new_session=True))
                continue
            done = subprocess.run(["bash", "-c", step.command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, (
                f"$ {step.command}\nexit {done.returncode}\n{done.stdout[-4000:]}"
                f"\n{done.stderr[-4000:]}")
        head = git(tmp_path / "my-state", "rev-parse", "HEAD")
        status = subprocess.run(["gitops", "status", "--json"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60, check=True)
        rows = {r["host"]: r for r in json.loads(status.stdout)}
        assert set(rows) == {"", "lab-1", "lab-2"}
        for row in rows.values():
            assert row["last_verified_revision"] == f"main@sha1:{head}", row
        history = subprocess.run(["gitops", "history", "--json"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60, check=True)
        assert any(r["sha"] == head and r["reason"] == "see the commit through"
                   and r["result"] == "succeeded" for r in json.loads(history.stdout))
        assert f"lab: revision main@sha1:{head} by First Service" in (
            tmp_path / "daemon.log").read_text()  # the daemon's run, not one of the CLI
    finally:
        for proc in started:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

