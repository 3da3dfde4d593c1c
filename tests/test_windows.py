"""Maintenance windows end to end without a lab: the real Daemon with an injected wall clock
on a real Git repository (its one host unreachable on loopback, so a run is quick and
recorded), the real store, the HTTP API and the real CLI. The rules are tables in
``test_policy.py``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from builders import git, git_repo
from clitools import gitops

from gitops.daemon.loop import Daemon
from gitops.errors import Suspended
from gitops.record.store import Store
from gitops.schedule import Window
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.page import page_data

EVENING = "0 22 * * *"
"""Opens at 22:00 UTC every day (the windows below stay open an hour)."""
NEW_YEAR = "0 0 1 1 *"
"""Opens a minute a year: closed whenever the CLI tests run (but on 1 January at 00:00)."""
BEFORE = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
INSIDE = datetime(2026, 12, 1, 22, 0, 30, tzinfo=UTC)


def _inventory(schedule: str | None) -> str:
    windows = (f'  windows:\n    - schedule: "{schedule}"\n      duration: 1h\n'
               if schedule else "")
    return ("settings:\n" + windows + "  ssh:\n    port: 9\n    connect_timeout: 2\n"
            "groups:\n  web: {}\nhosts:\n  h1:\n    address: 127.0.0.1\n    groups: [web]\n")


def _repo(tmp_path: Path, schedule: str | None = EVENING) -> Path:
    return git_repo(tmp_path / "repo", {"inventories/lab.yml": _inventory(schedule)})


class Clock:
    """The wall clock the daemon reads its windows against, moved by the test."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _daemon(tmp_path: Path, repo: Path, clock: Clock, **env: object) -> Daemon:
    settings = Settings(state_dir=tmp_path / "state", environments=[EnvironmentConfig(
        name="lab", repo=str(repo), watch=False, interval=7200, jitter=0,
        **env)])  # type: ignore[arg-type]
    return Daemon(settings, now=clock)


def _runs(d: Daemon) -> list[dict[str, object]]:
    with Store(d.settings.state_dir) as store:
        return [r.as_dict() for r in store.history("lab", limit=20)]


def _reconciling(d: Daemon) -> tuple[str, str] | None:
    with Store(d.settings.state_dir) as store:
        row = store.environment_status("lab")
        found = row.condition("Reconciling") if row is not None else None
    return (found.reason, found.message) if found is not None else None


def test_a_commit_outside_the_window_waits_and_is_applied_when_it_opens(
        tmp_path: Path) -> None:
    """A commit outside the window is not run, status says when the window opens, and the
    daemon wakes at the opening and runs it (injected clock)."""
    repo = _repo(tmp_path)
    clock = Clock(BEFORE)
    d = _daemon(tmp_path, repo, clock)
    head = git(repo, "rev-parse", "HEAD")

    delay = d.cycle(d.envs["lab"], None)
    assert _runs(d) == []
    assert _reconciling(d) == ("WaitingForWindow", "waiting for the maintenance window that "
                                                   "opens at 2026-12-01 22:00 UTC")
    assert delay == 3600  # woken at the opening, not after the two-hour poll interval
    status = gitops("status", "--json", env={"GITOPS_STATE_DIR": str(d.settings.state_dir)})
    assert status.returncode == 0, status.stderr
    shown = next(c for row in json.loads(status.stdout) for c in row["conditions"]
                 if c["type"] == "Reconciling")
    assert shown["reason"] == "WaitingForWindow" and "22:00 UTC" in shown["message"]
    api = [c for row in d.status() for c in row["conditions"]]  # GET /api/status
    assert {"type": "Reconciling", "status": "False", "reason": "WaitingForWindow",
            "message": shown["message"]} in api
    with Store(d.settings.state_dir) as store:
        page = json.dumps(page_data(store))  # the status page's data
    assert "waiting for the maintenance window that opens at 2026-12-01 22:00 UTC" in page

    clock.at = INSIDE
    d.cycle(d.envs["lab"], None)
    runs = _runs(d)
    assert [(r["kind"], r["sha"]) for r in runs] == [("reconcile", head)]
    assert runs[0]["result"] is not None  # finished (its one host is unreachable)
    assert _reconciling(d) is None or _reconciling(d)[0] != "WaitingForWindow"  # type: ignore[index]


def test_the_daemon_settings_windows_win_over_the_inventorys(tmp_path: Path) -> None:
    """Windows in the daemon settings decide, even where the inventory's window is open."""
    repo = _repo(tmp_path, schedule="* * * * *")  # the inventory: always open
    d = _daemon(tmp_path, repo, Clock(BEFORE),
                windows=[Window(schedule=EVENING, duration="1h")])  # type: ignore[arg-type]
    d.cycle(d.envs["lab"], None)
    assert _runs(d) == []
    assert _reconciling(d) is not None and _reconciling(d)[0] == "WaitingForWindow"  # type: ignore[index]


def test_operator_trigger_outside_the_window_is_refused_unless_forced(tmp_path: Path) -> None:
    """Reconcile-now outside the window answers when it opens; forced with a reason it is
    recorded as an override and the next cycle runs despite the window."""
    repo = _repo(tmp_path)
    clock = Clock(BEFORE)
    d = _daemon(tmp_path, repo, clock)
    d.cycle(d.envs["lab"], None)  # reads the inventory's windows: waiting
    with pytest.raises(Suspended, match="outside its maintenance window: waiting for the "
                                        "maintenance window that opens at 2026-12-01 22:00"):
        d.trigger("lab", reason="now please", actor="bob")
    assert d.envs["lab"].pending is None

    assert d.trigger("lab", reason="hotfix for INC-7", actor="alice", force=True) is True
    pending = d.envs["lab"].pending
    d.envs["lab"].pending = None
    d.cycle(d.envs["lab"], pending)
    runs = _runs(d)
    assert [(r["kind"], r["actor"]) for r in runs] == [("reconcile", "alice"),
                                                      ("override", "alice")]
    assert "outside the maintenance window" in str(runs[1]["reason"])
    assert "hotfix for INC-7" in str(runs[1]["reason"])


def test_api_reconcile_force_outside_the_window(tmp_path: Path) -> None:
    """POST reconcile outside the window: 409 with the opening; with force and a reason,
    202 and an override recorded; force without a reason: 400."""
    from gitops.web.server import bound_port, create_app, start_in_thread, stop

    repo = _repo(tmp_path)
    d = _daemon(tmp_path, repo, Clock(BEFORE))
    d.cycle(d.envs["lab"], None)
    server, thread = start_in_thread(create_app(d, d.settings), "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{bound_port(server)}/api/environments/lab/reconcile"
        refused = httpx.post(url, json={"reason": "now please"}, timeout=10)
        no_reason = httpx.post(url, json={"force": True}, timeout=10)
        forced = httpx.post(url, json={"reason": "hotfix", "force": True}, timeout=10)
    finally:
        stop(server, thread)
    assert refused.status_code == 409
    assert "opens at 2026-12-01 22:00 UTC" in refused.json()["error"]
    assert no_reason.status_code == 400
    assert forced.status_code == 202
    assert d.envs["lab"].pending is not None and d.envs["lab"].pending.force
    assert [r["kind"] for r in _runs(d)] == ["override"]


def test_reconcile_once_outside_the_window_exits_2_unless_forced(tmp_path: Path) -> None:
    """`gitops reconcile --once` outside the inventory's window exits 2 with the opening
    time and runs nothing; with --force --reason it runs and the override is recorded."""
    repo = _repo(tmp_path, schedule=NEW_YEAR)
    env = {"GITOPS_STATE_DIR": str(tmp_path / "state"), "GITOPS_REPO": str(repo),
           "GITOPS_ENVIRONMENT": "lab"}
    refused = gitops("reconcile", "--once", env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "lab is outside its maintenance window: waiting for the maintenance window that " \
           "opens at 20" in refused.stderr
    assert "-01-01 00:00 UTC" in refused.stderr and "Traceback" not in refused.stderr

    forced = gitops("reconcile", "--once", "--force", "--reason", "hotfix", env=env)
    assert "reconcile forced by" in forced.stderr, forced.stderr
    assert forced.returncode == 1  # ran: its one host is unreachable
    history = gitops("history", "--json", env=env)
    kinds = [(r["kind"], r["reason"]) for r in json.loads(history.stdout)]
    assert kinds[0][0] == "reconcile"
    assert kinds[1][0] == "override" and "hotfix" in kinds[1][1]


def test_bad_window_in_the_settings_file_names_its_line(tmp_path: Path) -> None:
    """A bad cron, duration or time zone in the settings file exits 2 naming file and line."""
    config = tmp_path / "gitops.toml"
    config.write_text('[[environments]]\nname = "lab"\nrepo = "/srv/state"\n\n'
                      '[[environments.windows]]\nschedule = "0 25 * * *"\nduration = "2x"\n'
                      'timezone = "Mars/Olympus"\n')
    proc = gitops("--config", str(config), "status", env={
        "GITOPS_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for field in ("schedule", "duration", "timezone"):
        assert f"environments.0.windows.0.{field}" in proc.stderr, proc.stderr
    assert "gitops.toml:" in proc.stderr and "Traceback" not in proc.stderr
