"""End to end: a failed rollout on lab hosts, under the daemon, heard where people are.

The daemon's notifiers: Microsoft Teams (Apprise ``workflows://`` to an HTTPS receiver),
Mattermost (``mmost://``) and e-mail (``mailto://`` to a real SMTP server), each for failures;
two webhooks filtered by team (the lab is the ``web`` team's); an Alertmanager. A bad commit
fails on the canary and is rolled back; the fix follows. Each receiver checks every request
against its service's documented format (``tests/receivers.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from builders import free_port, git
from receivers import HttpReceiver, SmtpReceiver, self_signed
from test_daemon_e2e import Daemon, _set_probe, applied_everywhere, make_probe_repo, wait_for

from gitops.daemon.notify_providers import ALERT_NAME
from gitops.lab import LabInfo

pytestmark = pytest.mark.lab

SECRET = "tEamSsig0123456789"


@dataclass
class World:
    daemon: Daemon
    teams: HttpReceiver
    mattermost: HttpReceiver
    web: HttpReceiver
    db: HttpReceiver
    alertmanager: HttpReceiver
    smtp: SmtpReceiver
    bad: str = ""
    fix: str = ""


def _mail_text(message: Message) -> str:
    part = message.get_payload(0) if message.is_multipart() else message
    body = part.get_payload(decode=True)  # type: ignore[union-attr]
    assert isinstance(body, bytes)
    return body.decode().replace("\r\n", "\n").strip()


@pytest.fixture(scope="module")
def world(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("notify")
    repo = make_probe_repo(root, lab)
    made = [HttpReceiver("teams", cert=self_signed(root)), HttpReceiver("mattermost"),
            HttpReceiver("webhook"), HttpReceiver("webhook"), HttpReceiver("alertmanager")]
    smtp = SmtpReceiver()
    w = World(Daemon(repo, root), *made, smtp=smtp)
    urls = {
        "T_TEAMS": f"workflows://127.0.0.1:{w.teams.port}/wf1/{SECRET}?verify=no&image=no",
        "T_MATTERMOST": f"mmost://127.0.0.1:{w.mattermost.port}/{SECRET}",
        "T_MAIL": f"mailto://127.0.0.1:{smtp.port}?from=gitops@example.com"
                  "&to=web-team@example.com&mode=insecure",
        "T_WEB": f"http://127.0.0.1:{w.web.port}/hook",
        "T_DB": f"http://127.0.0.1:{w.db.port}/hook",
        "T_AM": f"http://127.0.0.1:{w.alertmanager.port}",
        "T_DEAD": f"http://127.0.0.1:{free_port()}/nobody-listens",
    }
    os.environ.update(urls)
    text = w.daemon.config.read_text()
    top = (f'teams = ["web", "db"]\npage_url = "http://127.0.0.1:{w.daemon.port}/"\n')
    notifiers = "".join(
        f'[[notifiers]]\nname = "{name}"\ntype = "{kind}"\nurl = {{ env = "{var}" }}\n{extra}'
        for name, kind, var, extra in (
            ("teams-chat", "apprise", "T_TEAMS", 'events = ["failure"]\n'),
            ("mattermost", "apprise", "T_MATTERMOST", 'events = ["failure"]\n'),
            ("mail", "apprise", "T_MAIL", 'events = ["failure"]\n'),
            ("web-team", "webhook", "T_WEB", 'teams = ["web"]\n'),
            ("db-team", "webhook", "T_DB", 'teams = ["db"]\n'),
            ("pager", "alertmanager", "T_AM", ""),
            ("dead", "webhook", "T_DEAD", 'events = ["rollback"]\n'),
        ))
    w.daemon.config.write_text(top + text + 'team = "web"\n' + notifiers)
    w.daemon.start()
    try:
        good = _head(repo.path)
        wait_for(lambda: applied_everywhere(w.daemon, good), 300, "the good commit")
        w.bad = _set_probe(repo, "broken")
        wait_for(lambda: any(r["kind"] == "rollback" and r["result"]
                             for r in w.daemon.runs_now()), 300, "the rollback")
        w.fix = _set_probe(repo, "ok")
        wait_for(lambda: applied_everywhere(w.daemon, w.fix), 300, "the fix")
        wait_for(lambda: any("endsAt" in r.json()[0]
                             for r in w.alertmanager.requests[_fired(w):]), 60,
                 "the alert's resolution")
        yield w
    finally:
        w.daemon.stop()
        for r in made:
            r.close()
        smtp.close()


def _head(path: Path) -> str:
    return git(path, "rev-parse", "HEAD")


def _fired(w: World) -> int:
    """The index of the first firing alert at the Alertmanager (after it: its resolution)."""
    return next((i for i, r in enumerate(w.alertmanager.requests)
                 if "startsAt" in r.json()[0]), len(w.alertmanager.requests))


def test_teams_mattermost_and_email_get_the_same_short_message(world: World) -> None:
    """The failed rollout of the bad commit reaches all three, each in its own format, with
    the same title and text: what, where, the commit, what failed, the page's link."""
    assert world.teams.problems == [] and world.mattermost.problems == []
    card = world.teams.requests[0].json()["attachments"][0]["content"]["body"]
    title, text = (re.sub(r"\\(.)", r"\1", b["text"]) for b in card)
    assert title.startswith("Rollout failed in lab on lab-1")
    assert f"commit {world.bad[:10]}" in text and "probe: broken" in text
    assert f"http://127.0.0.1:{world.daemon.port}/#run-" in text
    said = world.mattermost.requests[0].json()["text"]
    assert title in said and text in said
    mail = world.smtp.messages[0]
    assert mail["Subject"] == title and _mail_text(mail) == text
    assert world.smtp.envelopes[0][1] == ["web-team@example.com"]
    assert SECRET not in world.daemon.log.read_text()


def test_a_team_filtered_notifier_hears_only_its_environments(world: World) -> None:
    """The web team's webhook heard the lab's failure and rollback; the db team's, nothing."""
    kinds = [r.json()["kind"] for r in world.web.requests]
    assert "failure" in kinds and "rollback" in kinds, kinds
    assert world.web.problems == []
    assert world.db.requests == []


def test_alertmanager_gets_a_firing_alert_then_its_resolution(world: World) -> None:
    """The failure fires GitopsRolloutFailed for lab; a later request with the same labels
    ends it."""
    assert world.alertmanager.problems == []
    requests = [r.json()[0] for r in world.alertmanager.requests]
    fired = _fired(world)
    assert fired < len(requests)
    alert = requests[fired]
    assert alert["labels"]["alertname"] == ALERT_NAME and alert["labels"]["environment"] == "lab"
    resolved = [a for a in requests[fired + 1:] if "endsAt" in a]
    assert resolved and resolved[0]["labels"] == alert["labels"]


def test_deliveries_are_recorded_and_a_dead_receiver_fails_no_run(world: World) -> None:
    """Every notifier's deliveries are in the record; the one nobody listens for is
    recorded failed after its retries, and the rollback and the fix it was told of went on
    (the fix verified everywhere); less than an hour of failures is no condition yet."""
    from gitops.record.store import Store

    with Store(world.daemon.repo.state_dir, readonly=True) as store:
        found = store.deliveries(limit=200)
        rows = store.status("lab")
    names = {d["notifier"] for d in found if d["status"] == "delivered"}
    assert {"teams-chat", "mattermost", "mail", "web-team", "pager"} <= names
    assert "db-team" not in {d["notifier"] for d in found}
    dead = [d for d in found if d["notifier"] == "dead"]
    assert dead and all(d["status"] == "failed" and d["event"] == "rollback" for d in dead)
    assert "connection failed" in dead[0]["reason"]
    rollbacks = [r for r in world.daemon.runs_now() if r["kind"] == "rollback"]
    assert rollbacks and all(r["result"] == "succeeded" for r in rollbacks)
    assert not any(c.type == "NotifierFailing" for r in rows for c in r.conditions)
