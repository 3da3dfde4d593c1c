"""Post-mortems written in the status page by people signed in through a real OpenID provider.

The provider is panva's oidc-provider run by Node on 127.0.0.1 (``tests/oidcsite.py``); each
person signs in from their own browser context (Debian's chromium through Playwright, beyond
loopback through the trusted proxy). ``lab`` belongs to team payments; alice (payments-ops)
and bob (search-dev) are operators there through their groups, carol (visitors) only reads.
The record is seeded with a failed rollout, so ``lab`` has an open incident.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import gitops
from oidcsite import ACCOUNTS, Site, oidc_site, sign_in_as
from test_csrf_browser import browser  # noqa: F401  (the fixture)
from test_page import seed
from test_server import RecordingController, environments

from gitops.record.store import Store
from gitops.report import incidents
from gitops.settings import EnvironmentConfig, GrantConfig

MARKUP = '<img src=x onerror="window.pwned=1">lab-3 lost its uplink'
PEOPLE = {**ACCOUNTS, "carol": {"password": "carol-pw", "email": "carol@example.org",
                                "groups": ["visitors"]}}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, str]]:
    """The app behind the provider over a record with an open incident in ``lab``: (the
    site, the incident's id)."""
    state = tmp_path / "state"
    seed(state)
    with Store(state, readonly=True) as store:
        (incident,) = incidents.incidents(store, "lab")
    with oidc_site(tmp_path, monkeypatch, RecordingController(environments()),
                   accounts=PEOPLE, teams=["payments", "search"],
                   environments=[EnvironmentConfig(name="lab", repo="/srv/state",
                                                   team="payments")],
                   grants=[GrantConfig(subject="group:payments-ops", role="operator",
                                       team="payments"),
                           GrantConfig(subject="group:search-dev", role="operator",
                                       team="payments")]) as served:
        yield served, incident.id


def open_postmortem(p: Any, incident_id: str) -> Any:
    """The incident's post-mortem block on page ``p``, its details opened."""
    item = p.locator(f'[data-incident="{incident_id}"]')
    details = item.locator("details").first
    if details.get_attribute("open") is None:
        item.locator("summary").first.click()
    return item.locator('[data-testid="postmortem"]')


def post(p: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A POST from page ``p``'s own origin with its session, as a script in the page could
    send it: the status and the answer."""
    return dict(p.evaluate("""async ([path, body]) => {
        const r = await fetch(path, {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
        return {status: r.status, answer: await r.json()};
    }""", [path, body]))


def audit(site: Site) -> list[dict[str, Any]]:
    """``gitops audit --json`` over the site's record: the audit trail, newest first."""
    config = site.settings.state_dir.parent / "audit.toml"
    config.write_text(f"state_dir = {json.dumps(str(site.settings.state_dir))}\n")
    done = gitops("audit", "--json", env={"GITOPS_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_two_people_write_one_post_mortem_each_under_their_own_name(
        site: tuple[Site, str], browser: Any) -> None:  # noqa: F811
    """alice writes the summary (with markup in it) and an action item for search; bob, from
    his own browser, adds a contributing cause (what he types survives his page drawing
    alice's item meanwhile) and marks alice's item done. Both pages show both names beside
    what each wrote, the markup as text (no element made of it), the item's "done by bob";
    alice gives the item to another team and opens it again; ``gitops audit`` lists each
    write under the right person."""
    served, iid = site
    alice = sign_in_as(browser, served, "alice")
    bob = sign_in_as(browser, served, "bob")
    pm_a = open_postmortem(alice, iid)
    pm_a.locator('[data-field$="/summary"]').fill(MARKUP)
    pm_a.locator('[data-save="summary"]').click()
    pm_a.locator('[data-section="summary"] li[data-by="user:alice"]',
                 has_text="lab-3 lost its uplink").wait_for()
    pm_b = open_postmortem(bob, iid)
    pm_b.locator('[data-section="summary"] li[data-by="user:alice"]').wait_for()  # polled
    pm_b.locator('[data-field$="/causes"]').fill("the uplink has no second path")

    pm_a.locator('[data-field$="/action-text"]').fill("Alert when an uplink drops")
    pm_a.locator('select[data-field$="/action-team"]').select_option("search")
    pm_a.locator('[data-save="action"]').click()
    pm_a.locator('li[data-action][data-by="user:alice"]', has_text="team: search").wait_for()
    # bob's page draws alice's item at its next poll: what he is typing stays, focused
    pm_b.locator('li[data-action][data-by="user:alice"]').wait_for()
    assert pm_b.locator('[data-field$="/causes"]').input_value() == \
        "the uplink has no second path"
    assert str(bob.evaluate("document.activeElement.dataset.field")).endswith("/causes")
    pm_b.locator('[data-save="causes"]').click()
    pm_b.locator('[data-section="causes"] li[data-by="user:bob"]').wait_for()
    pm_b.locator('li[data-action] [data-do="done"]').click()
    pm_b.locator("li[data-action] .pm-done[data-by='user:bob']").wait_for()

    for p in (alice, bob):
        pm = open_postmortem(p, iid)
        pm.locator('[data-section="causes"] li[data-by="user:bob"]').wait_for()
        pm.locator("li[data-action] .pm-done[data-by='user:bob']").wait_for()
        summary = pm.locator('[data-section="summary"] li')
        assert summary.locator(".pm-text").inner_text() == MARKUP
        assert "user:alice" in summary.locator(".pm-by").inner_text()
        assert "user:bob" in pm.locator('[data-section="causes"] .pm-by').inner_text()
        action = pm.locator("li[data-action]")
        assert "added by user:alice" in action.inner_text()
        assert "done by user:bob" in action.inner_text()
        assert pm.locator("img").count() == 0 and p.locator("img").count() == 0
        assert p.evaluate("window.pwned") is None
        who = pm.locator('[data-testid="who-did"]')
        who.locator('li[data-actor="user:bob"]', has_text="action 1: done").wait_for()
        assert "user:alice" in who.inner_text() and "wrote summary" in who.inner_text()

    pm_a = open_postmortem(alice, iid)  # alice gives the item to payments, opens it again
    pm_a.locator("li[data-action] select").select_option("payments")
    pm_a.locator("li[data-action]", has_text="team: payments").wait_for()
    # who gave it the team, and when, beside the item on everyone's page
    pm_b = open_postmortem(bob, iid)
    given = pm_b.locator('li[data-action] .pm-team-by[data-by="user:alice"]')
    given.wait_for()
    assert given.inner_text().startswith("(given to payments by user:alice, ")
    pm_a.locator('li[data-action] [data-do="reopen"]').click()
    pm_a.locator('li[data-action] [data-do="done"]').wait_for()
    assert pm_a.locator("li[data-action] .pm-done").count() == 0
    assert pm_a.locator("li[data-action] .badge").inner_text() == "open"

    trail = [(e["actor"], e["action"], e["target"], e["reason"], e["outcome"])
             for e in reversed(audit(served)) if e["action"] == "postmortem"]
    assert trail == [
        ("user:alice", "postmortem", iid, "wrote summary", "ok"),
        ("user:alice", "postmortem", iid, "new action item (team search)", "ok"),
        ("user:bob", "postmortem", iid, "wrote causes", "ok"),
        ("user:bob", "postmortem", iid, "action 1: done", "ok"),
        ("user:alice", "postmortem", iid, "action 1: team payments", "ok"),
        ("user:alice", "postmortem", iid, "action 1: open again", "ok"),
    ]


def test_a_body_naming_someone_else_is_refused_and_nothing_is_written(
        site: tuple[Site, str], browser: Any) -> None:  # noqa: F811
    """From alice's signed-in page, a write whose body says ``"actor": "bob"`` is refused
    400 naming the field; the record holds no entry under bob nor any entry at all, and the
    audit trail has the refusal under alice."""
    served, iid = site
    alice = sign_in_as(browser, served, "alice")
    for path, body in ((f"/api/incidents/{iid}/annotate", {"summary": "x", "actor": "bob"}),
                       (f"/api/incidents/{iid}/actions", {"text": "y", "actor": "bob"})):
        sent = post(alice, path, body)
        assert sent["status"] == 400 and "'actor'" in sent["answer"]["error"]
    with Store(served.settings.state_dir, readonly=True) as store:
        assert store.notes() == [] and store.actions() == []
        assert not store.audit_trail(actor="bob") and not store.audit_trail(actor="user:bob")
    refused = [e for e in audit(served) if e["action"] == "postmortem"]
    assert [(e["actor"], e["outcome"]) for e in refused] == [("user:alice", "failed 400")] * 2


def test_a_viewer_reads_the_post_mortem_without_controls_and_a_forged_write_is_403(
        site: tuple[Site, str], browser: Any) -> None:  # noqa: F811
    """carol (no grant: a viewer) sees alice's summary and who wrote it, no field or button
    to write, and a note that writing needs the postmortem permission; a POST sent from her
    page anyway is refused 403 naming the permission, and nothing is written."""
    served, iid = site
    alice = sign_in_as(browser, served, "alice")
    pm_a = open_postmortem(alice, iid)
    pm_a.locator('[data-field$="/summary"]').fill("lab-3 lost its uplink")
    pm_a.locator('[data-save="summary"]').click()
    pm_a.locator('[data-section="summary"] li[data-by="user:alice"]').wait_for()

    carol = sign_in_as(browser, served, "carol")
    pm = open_postmortem(carol, iid)
    pm.locator(".pm-readonly", has_text="needs the postmortem permission on lab").wait_for()
    assert "lab-3 lost its uplink" in pm.locator('[data-section="summary"]').inner_text()
    assert "user:alice" in pm.locator('[data-section="summary"] .pm-by').inner_text()
    assert pm.get_attribute("data-editable") == "no"
    assert pm.locator("textarea, input, select, button").count() == 0
    sent = post(carol, f"/api/incidents/{iid}/annotate", {"summary": "carol's version"})
    assert sent["status"] == 403 and "'postmortem'" in sent["answer"]["error"]
    with Store(served.settings.state_dir, readonly=True) as store:
        assert [n.actor for n in store.notes()] == ["user:alice"]
    session = carol.evaluate("fetch('/api/session').then((r) => r.json())")
    assert session["may"]["lab"] == ["read"]


def test_who_did_what_is_shown_beside_each_run_and_incident(
        site: tuple[Site, str], browser: Any) -> None:  # noqa: F811
    """Each run of the history shows the actor the record holds; alice suspends ``lab``
    through the API while its incident is open, and the incident shows the audit trail's
    entry (who, as which role, what, why) on bob's page, with nothing else recorded for it."""
    served, iid = site
    bob = sign_in_as(browser, served, "bob")
    with Store(served.settings.state_dir, readonly=True) as store:
        runs = {r.id: r.actor for r in store.history("lab")}
    for run_id, actor in runs.items():
        assert bob.locator(f'tr[data-run="{run_id}"] td[data-label="by"]').inner_text() == actor
    pm = open_postmortem(bob, iid)
    assert pm.locator('[data-testid="who-did"]').count() == 0  # "nothing recorded"
    alice = sign_in_as(browser, served, "alice")
    sent = post(alice, "/api/environments/lab/suspend", {"reason": "uplink down, hold changes"})
    assert sent["status"] == 200, sent
    entry = pm.locator('[data-testid="who-did"] li[data-actor="user:alice"]'
                       '[data-audit-action="suspend"]')
    entry.wait_for()
    assert "(operator) suspend: uplink down, hold changes" in entry.inner_text()
    (recorded,) = [e for e in audit(served) if e["action"] == "suspend"]
    assert (recorded["actor"], recorded["reason"]) == ("user:alice", "uplink down, hold changes")
    with Store(served.settings.state_dir) as store:  # as the daemon records a suspend
        event = store.record_event("lab", "suspend", actor="user:alice", reason="uplink down")
    row = bob.locator(f'tr[data-run="{event}"]')
    row.wait_for()  # an action, not a run that succeeded in no time
    assert row.locator('td[data-label="result"]').inner_text() == "action"
    assert row.locator('td[data-label="took"]').inner_text() == ""
    assert row.locator('td[data-label="by"]').inner_text() == "user:alice"
    ran = bob.locator(f'tr[data-run="{max(runs)}"] td[data-label="result"]').inner_text()
    assert ran == next(r.result for r in _history(served) if r.id == max(runs))


def _history(served: Site) -> list[Any]:
    with Store(served.settings.state_dir, readonly=True) as store:
        return store.history("lab")
