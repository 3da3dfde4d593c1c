"""Who did what about an incident (``gitops.report.whodid.about``, tests as data) and what the
page is told a caller may do (``GET /api/session``'s ``may``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitops.record.people import AuditRow
from gitops.report.whodid import LEAD, about

OPENED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
CLOSED = OPENED + timedelta(hours=1)
NOW = OPENED + timedelta(days=2)


def entry(minutes: float, action: str = "suspend", *, environment: str = "lab",
          target: str = "", outcome: str = "ok") -> AuditRow:
    return AuditRow(1, OPENED + timedelta(minutes=minutes), "user:alice", "operator", action,
                    environment, target, "192.0.2.9", "why", outcome)


CASES = [
    # (why, the entry, the incident closed?, concerns it?)
    ("a suspend while it is open", entry(5), True, True),
    ("a suspend after it closed", entry(61), True, False),
    ("a suspend after it opened, still open now", entry(60 * 24), False, True),
    ("a rollback asked just before its run opened it", entry(-9, "rollback"), True, True),
    ("a suspend long before it opened", entry(-LEAD.total_seconds() / 60 - 1), True, False),
    ("an action on another environment", entry(5, environment="prod"), True, False),
    ("a token made while it is open (not about an environment's state)",
     entry(5, "tokens"), True, False),
    ("a post-mortem edit, long after, naming it", entry(60 * 30, "postmortem",
                                                         target="INC-lab-6"), True, True),
    ("a post-mortem edit naming it in the older form", entry(90, "postmortem",
                                                              target="lab-6"), True, True),
    ("a post-mortem edit of another incident", entry(5, "postmortem", target="INC-lab-7"),
     True, False),
    ("a refused suspend while it is open", entry(5, outcome="refused 403"), True, False),
    ("a refused post-mortem edit", entry(5, "postmortem", target="INC-lab-6",
                                         outcome="refused 401"), True, False),
    ("a post-mortem edit that failed (kept: someone tried)",
     entry(5, "postmortem", target="INC-lab-6", outcome="failed 400"), True, True),
]


@pytest.mark.parametrize(("why", "row", "closed", "concerns"), CASES,
                         ids=[c[0] for c in CASES])
def test_which_entries_concern_an_incident(why: str, row: AuditRow, closed: bool,
                                           concerns: bool) -> None:
    """Each entry is kept or left out as the module's rules say."""
    incident = {"id": "INC-lab-6", "environment": "lab", "opened_at": OPENED.isoformat(),
                "closed_at": CLOSED.isoformat() if closed else None}
    found = about(incident, [row], NOW)
    assert bool(found) == concerns, why
    if concerns:
        assert found == [{"at": row.at.isoformat(), "actor": "user:alice", "role": "operator",
                          "action": row.action, "target": row.target, "reason": "why",
                          "outcome": row.outcome}]


def test_entries_come_oldest_first() -> None:
    """The page reads them as a timeline."""
    incident = {"id": "INC-lab-6", "environment": "lab", "opened_at": OPENED.isoformat(),
                "closed_at": None}
    rows = [entry(30, "resume"), entry(2, "suspend")]
    assert [e["action"] for e in about(incident, rows, NOW)] == ["suspend", "resume"]


def test_the_page_answer_moves_with_an_action_not_with_a_refusal(store_backend: Any) -> None:
    """On both databases: a refusal appended to the audit trail keeps the page's kept answer
    (``page_mark``); a suspend someone did makes it again, and the page's incident lists it
    under who did what."""
    from test_page import seed_store

    from gitops.web.page import page_data

    with store_backend.open() as store:
        seed_store(store)
        before = store.page_mark()
        store.audit(actor="?", role="", action="suspend", environment="lab",
                    outcome="refused 401")
        assert store.page_mark() == before
        store.audit(actor="user:alice", role="operator", action="suspend", environment="lab",
                    reason="uplink down", outcome="ok")
        assert store.page_mark() != before
        (incident,) = page_data(store)["environments"][0]["incidents"]["open"]
    assert [(e["actor"], e["action"], e["reason"]) for e in incident["audit"]] == [
        ("user:alice", "suspend", "uplink down")]


def test_the_session_answer_says_what_a_token_may_do_per_environment(tmp_path: Path) -> None:
    """``GET /api/session``'s ``may``: an operator of payments may write post-mortems
    in payments' environment and nothing in search's; what the page hides, the route still
    refuses."""
    import asyncio

    import httpx
    from builders import daemon_app
    from test_server import RecordingController

    from gitops.daemon.tokens import digest
    from gitops.record.store import Store
    from gitops.settings import EnvironmentConfig, Settings

    envs = [EnvironmentConfig(name="pay-prod", repo="/srv/state", team="payments"),
            EnvironmentConfig(name="search-prod", repo="/srv/state", team="search")]
    settings = Settings(state_dir=tmp_path / "state", teams=["payments", "search"],
                        environments=envs)
    with Store(settings.state_dir) as store:
        store.add_token("ci", digest("ci-secret-1"), role="operator", team="payments",
                        created_by="test", expires_at=None)
    app = daemon_app(RecordingController(envs), settings, settings.state_dir)

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9469",
                                     headers={"Authorization": "Bearer ci-secret-1"}) as http:
            return (await http.get("/api/session"),
                    await http.post("/api/incidents/INC-search-prod-1/annotate",
                                    json={"summary": "x"}))

    session, refused = asyncio.run(calls())
    permissions = session.json()["may"]
    assert "postmortem" in permissions["pay-prod"] and "rollback" not in permissions["pay-prod"]
    assert permissions["search-prod"] == []
    assert refused.status_code == 403 and "'postmortem'" in refused.json()["error"]
