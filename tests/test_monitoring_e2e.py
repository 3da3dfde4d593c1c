"""End to end, measured and shared: a good commit, a bad commit (rolled back) and a fix,
through the daemon on lab hosts, then the delivery metrics, the incident, the commit statuses
at a Git host receiver and the status page in headless Chromium all tell the same story.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from test_daemon_e2e import (
    TOKEN,
    Daemon,
    _set_probe,
    applied_everywhere,
    make_probe_repo,
    wait_for,
)
from test_notify import HOOK_SECRET, Receiver
from test_notify import TOKEN as GIT_HOST_TOKEN
from test_page import browser_factory  # noqa: F401  (a fixture)

from gitops.lab import LabInfo

pytestmark = pytest.mark.lab


class Story:
    def __init__(self, daemon: Daemon, receiver: Receiver) -> None:
        self.daemon = daemon
        self.receiver = receiver
        self.good = ""
        self.bad = ""
        self.fix = ""

    def api(self, path: str) -> Any:
        code, data = self.daemon.http("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 200, (path, code, data)
        return data


@pytest.fixture(scope="module")
def story(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("monitoring")
    repo = make_probe_repo(root, lab)
    receiver = Receiver()
    os.environ["GITOPS_TEST_GIT_TOKEN"] = GIT_HOST_TOKEN
    os.environ["GITOPS_TEST_NOTIFY_URL"] = f"{receiver.base}/hooks/{HOOK_SECRET}"
    daemon = Daemon(repo, root)
    with daemon.config.open("a") as f:
        f.write(
            "commit_status = [{provider = \"github\", "
            f'api_url = "{receiver.base}/github", repository = "ops/state", '
            'token = {env = "GITOPS_TEST_GIT_TOKEN"}}]\n'
            'notifiers = [{type = "webhook", url = {env = "GITOPS_TEST_NOTIFY_URL"}}]\n'
        )
    s = Story(daemon, receiver)
    daemon.start()
    try:
        s.good = subprocess.check_output(["git", "-C", str(repo.path), "rev-parse", "HEAD"],
                                         text=True).strip()
        wait_for(lambda: applied_everywhere(daemon, s.good), 300, "the good commit")
        s.bad = _set_probe(repo, "broken")
        wait_for(lambda: any(r["kind"] == "rollback" and r["result"] and r["actor"] ==
                             "gitops-daemon" for r in daemon.runs_now()), 180, "the rollback")
        s.fix = _set_probe(repo, "ok")
        wait_for(lambda: applied_everywhere(daemon, s.fix), 180, "the fix")
        yield s
    finally:
        daemon.stop()
        receiver.close()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_delivery_metrics_match_the_record(story: Story) -> None:
    """Three rollouts (good, bad rolled back, fix): 2 deployments, change failure rate 1/3,
    and a time to restore equal to the recorded failure -> rollback interval."""
    metrics = story.api("/api/delivery?environment=lab")
    lab = metrics["lab"] if "lab" in metrics else metrics[0]
    assert lab["deployments"] == 2
    assert lab["rollouts"] == 3 and lab["failed_rollouts"] == 1
    assert lab["change_failure_rate"] == pytest.approx(1 / 3)
    runs = story.daemon.history()
    failed = next(r for r in runs if r["sha"] == story.bad and r["kind"] == "reconcile")
    rollback = next(r for r in runs if r["kind"] == "rollback" and r["actor"] == "gitops-daemon")
    expected = (_when(rollback["finished_at"]) - _when(failed["finished_at"])).total_seconds()
    assert lab["restore_intervals_s"] == [pytest.approx(expected, abs=0.01)]
    assert lab["lead_time_median_s"] is not None


def test_the_incident_has_its_full_timeline(story: Story) -> None:
    """The failed rollout opened an incident: commit, what failed where with the check
    output, the rollback, and the commit that restored it; a Markdown report is written."""
    incidents = story.api("/api/incidents?environment=lab")
    incidents = incidents.get("incidents", incidents) if isinstance(incidents, dict) else incidents
    incident = next(i for i in incidents if i["commit"]["sha"] == story.bad)
    assert incident["cause"] == "failed rollout" and incident["status"] == "closed"
    assert incident["commit"]["message"].startswith("probe: broken")
    failure = incident["failures"][0]
    assert failure["host"] == "lab-1"
    assert any("ok" in c["message"] and c["check"] == "test_probe_is_ok"
               for c in failure["checks"])
    assert incident["rollbacks"] and incident["restored_by"] is not None
    assert len(incident["timeline"]) >= 2
    reports = list((story.daemon.repo.state_dir / "reports").glob("*.md"))
    text = "\n".join(p.read_text() for p in reports)
    assert story.bad[:10] in text and "test_probe_is_ok" in text


def test_commit_statuses_reached_the_git_host(story: Story) -> None:
    """The Git host got pending then failure for the bad commit and success for the fix, in
    its documented format."""
    statuses: dict[str, list[str]] = {}
    for r in story.receiver.requests:
        if "/statuses/" in r.path:
            statuses.setdefault(r.path.rsplit("/", 1)[-1], []).append(r.body["state"])
    assert story.receiver.problems == []
    assert statuses[story.bad][0] == "pending" and statuses[story.bad][-1] == "failure"
    assert statuses[story.fix][-1] == "success"
    kinds = [r.body["kind"] for r in story.receiver.requests if r.path.startswith("/hooks/")]
    assert "quarantine" in kinds and "failure" in kinds


def test_metrics_expose_the_story(story: Story) -> None:
    """/metrics has the runs by result, hosts ready and the change failure ratio."""
    request = urllib.request.Request(f"http://127.0.0.1:{story.daemon.port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    assert 'gitops_runs_total{environment="lab",kind="rollback",result="succeeded"}' in text
    assert 'gitops_host_ready{environment="lab",host="lab-1"} 1.0' in text
    assert "gitops_change_failure_ratio" in text
    assert TOKEN not in text and story.bad not in text


def test_the_status_page_shows_it_all(story: Story, browser_factory: Any) -> None:  # noqa: F811
    """In headless Chromium: the lab hosts, the delivery figures and the closed incident;
    after another reconcile the open page shows the new run without a reload. The daemon has
    an API token, so loopback is not trusted: the operator signs in with it first."""
    p = browser_factory(f"http://127.0.0.1:{story.daemon.port}/", ready="#signin")
    p.fill("#signin input[name=token]", TOKEN)
    p.click("#signin button")
    p.wait_for_selector("tr[data-host]")
    hosts = p.locator("tr[data-host]").evaluate_all("rows => rows.map(r => r.dataset.host)")
    assert sorted(hosts) == ["lab-1", "lab-2", "lab-3"]
    delivery = p.locator('[data-testid="delivery"]').inner_text()
    assert "33" in delivery  # change failure rate 1/3
    incidents = p.locator('[data-testid="incidents"]').inner_text()
    assert story.bad[:7] in incidents or "probe: broken" in incidents
    history = p.locator('[data-testid="history"]').inner_text()
    assert "rollback" in history
    runs_shown = p.locator("tr.run-row").count()
    sha = _set_probe(story.daemon.repo, note="a change the open page must show")
    wait_for(lambda: applied_everywhere(story.daemon, sha), 180, "the new commit")
    wait_for(lambda: p.locator("tr.run-row").count() > runs_shown
             and sha[:7] in p.locator('[data-testid="history"]').inner_text(), 30,
             "the open page to show the new run without a reload")
    assert p.js_errors == []
    p.screenshot(path=str(story.daemon.repo.state_dir / "page.png"), full_page=True)
    assert json.dumps(p.content()).count(TOKEN) == 0
