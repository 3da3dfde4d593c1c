"""A page people act from: each person sees the actions their roles allow, and no others.

In a real browser (Debian's chromium through Playwright, from beyond loopback) signed in
through the real OpenID provider (``tests/oidcsite.py``), over gitops' real ``Daemon`` (built,
not started: its API and record only, no host) whose environments are owned by the teams
``payments`` (pay-staging, then pay-prod, which promotes from it) and ``search``
(search-prod), each with two revisions applied and verified in a real Git repository. bob
(search-dev, no grant) is a viewer; alice (payments-ops) operates payments and may roll it
back; carol may roll back and nothing else.
The audit trail is read with ``gitops audit``, as an admin would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import record_verified_run
from oidcsite import ACCOUNTS, Site, audit, card, get, oidc_site, post, sign_in_as
from test_csrf_browser import browser  # noqa: F401  (the fixture)
from test_rollback_plan import two_revisions

from gitops.daemon.loop import Daemon
from gitops.settings import EnvironmentConfig, GrantConfig, Settings

ENVIRONMENTS = {"pay-staging": ["stage-1"], "pay-prod": ["pay-1", "pay-2"],
                "search-prod": ["search-1"]}
TEAMS = {"pay-staging": "payments", "pay-prod": "payments", "search-prod": "search"}
PEOPLE = {**ACCOUNTS, "carol": {"password": "carol-pw", "email": "carol@example.org",
                                "groups": ["sre"]}}
GRANTS = [GrantConfig(subject="group:payments-ops", role="operator", team="payments"),
          GrantConfig(subject="group:payments-ops", role="rollback", team="payments"),
          GrantConfig(subject="user:carol", role="rollback", team="*")]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, Daemon,
                                                                            dict[str, str]]]:
    """The app over a real daemon behind the provider: (site, daemon, {env: first sha})."""
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    repo, first, second = two_revisions(tmp_path, ENVIRONMENTS)
    state = tmp_path / "state"
    for env in ENVIRONMENTS:
        record_verified_run(state, first, env)
        record_verified_run(state, second, env)
    configs = [EnvironmentConfig(name=env, repo=str(repo), team=TEAMS[env], watch=False,
                                 promote_from="pay-staging" if env == "pay-prod" else None)
               for env in ENVIRONMENTS]
    settings: dict[str, Any] = {"environments": configs, "teams": ["payments", "search"],
                                "grants": GRANTS}
    daemon = Daemon(Settings(state_dir=state, **settings))
    with oidc_site(tmp_path, monkeypatch, daemon, accounts=PEOPLE, **settings) as served:
        yield served, daemon, dict.fromkeys(ENVIRONMENTS, first)


def buttons(p: Any, env: str) -> list[str]:
    """The actions offered on ``env``'s card, once the page knows what the caller may do."""
    p.wait_for_selector("html[data-actions=ready]", state="attached")
    return sorted(card(p, env).locator("[data-testid=actions] .action-bar button")
                  .evaluate_all("bs => bs.map(b => b.dataset.action)"))


def test_a_viewer_sees_everything_and_no_action(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """bob reads both environments and is offered nothing; a request forged from his own
    session is refused with 403 naming the permission, and nothing changed."""
    served, daemon, _ = site
    p = sign_in_as(browser, served, "bob")
    for env in ENVIRONMENTS:
        card(p, env).locator("tr[data-host=h1]").wait_for()
        assert buttons(p, env) == []
    session = get(p, "/api/session")["body"]
    assert session["name"] == "bob" and session["may"] == {env: ["read"] for env in TEAMS}
    status, error = post(p, "/api/environments/pay-prod/suspend", {"reason": "forged"})
    assert status == 403 and error.startswith("permission 'suspend' needed on pay-prod")
    status, error = post(p, "/api/environments/pay-prod/rollback", {"reason": "forged"})
    assert status == 403 and "'rollback'" in error
    assert get(p, "/api/environments/pay-prod/rollback/plan")["status"] == 403
    with daemon._store() as store:
        assert not store.controls("pay-prod").suspended
        assert store.controls("pay-prod").held_sha is None


def test_the_payments_operator_suspends_and_rolls_back_payments_not_search(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """alice suspends pay-prod with a reason (shown as text, never as HTML), sees what a
    rollback would change and rolls back with a reason; search-prod offers her nothing and a
    direct request there is 403; the daemon's status says who suspended; ``gitops audit``
    lists each action with user:alice, her role and her reason."""
    served, daemon, first = site
    p = sign_in_as(browser, served, "alice")
    pay = card(p, "pay-prod")
    assert buttons(p, "pay-prod") == ["promote", "reconcile", "retry", "rollback", "suspend"]
    assert buttons(p, "search-prod") == []

    reason = "<b>payments freeze</b> for INC-7"
    pay.locator("button[data-action=suspend]").click()
    pay.locator("form[data-action=suspend] input[name=reason]").fill(reason)
    pay.locator("form[data-action=suspend] button.confirm").click()
    result = pay.locator("[data-testid=action-result]")
    result.filter(has_text="Suspend: done (suspended, by user:alice)").wait_for()
    pay.locator(".note.warn", has_text=reason).wait_for()  # the page's note, as text
    assert pay.locator(".note.warn b").count() == 0
    pay.locator("button[data-action=resume]").wait_for()
    assert buttons(p, "pay-prod") == ["promote", "reconcile", "resume", "retry", "rollback"]
    status = get(p, "/api/status")["body"]
    (row,) = [r for r in status if r["environment"] == "pay-prod" and r.get("controls")]
    assert row["controls"]["suspended"] and row["controls"]["actor"] == "user:alice"
    assert row["controls"]["reason"] == reason

    pay.locator("button[data-action=rollback]").click()
    plan = pay.locator("[data-testid=rollback-plan]")
    plan.locator(".plan-to", has_text=first["pay-prod"][:10]).wait_for()
    for host in ENVIRONMENTS["pay-prod"]:
        change = plan.locator(f"li[data-host={host}] li[data-param=message]")
        assert change.inner_text() == 'message: "v2" → "v1"'
    pay.locator("form[data-action=rollback] input[name=reason]").fill("v2 breaks checkout")
    pay.locator("form[data-action=rollback] button.confirm").click()
    result.filter(has_text=f"held at {first['pay-prod'][:10]}, by user:alice").wait_for()
    with daemon._store() as store:
        assert store.controls("pay-prod").held_sha == first["pay-prod"]

    status_code, error = post(p, "/api/environments/search-prod/suspend", {"reason": "x"})
    assert status_code == 403
    assert error == ("permission 'suspend' needed on search-prod (team search): user:alice "
                     "does not have it")
    assert get(p, "/api/environments/search-prod/rollback/plan")["status"] == 403
    done = [(r["actor"], r["role"], r["action"], r["environment"], r["reason"])
            for r in audit(served.settings.state_dir) if r["outcome"] == "ok"]
    assert done == [("user:alice", "operator", "suspend", "pay-prod", reason),
                    ("user:alice", "rollback", "rollback", "pay-prod", "v2 breaks checkout")]


def test_a_reason_being_typed_keeps_its_focus_across_redraws(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """alice is typing a suspend reason when the page redraws (another environment changed):
    the field keeps its text, its focus and the caret, so her next keys land in it."""
    served, _, _ = site
    p = sign_in_as(browser, served, "alice")
    pay = card(p, "pay-prod")
    buttons(p, "pay-prod")
    pay.locator("button[data-action=suspend]").click()
    field = pay.locator("form[data-action=suspend] input[name=reason]")
    field.click()
    p.keyboard.type("payments fr")
    status, _ = post(p, "/api/environments/pay-staging/suspend", {"reason": "redraw"})
    assert status == 200
    card(p, "pay-staging").locator(".note.warn", has_text="redraw").wait_for()  # redrawn
    assert p.evaluate("document.activeElement && document.activeElement.name") == "reason"
    p.keyboard.type("eeze")
    assert field.input_value() == "payments freeze"


def test_the_rollback_role_rolls_back_and_does_nothing_else(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """carol is offered only "Roll back" (on every environment: her grant is for all),
    rolls search-prod back from the page, and her suspend is refused with 403."""
    served, daemon, first = site
    p = sign_in_as(browser, served, "carol")
    for env in ENVIRONMENTS:
        assert buttons(p, env) == ["rollback"]
    search = card(p, "search-prod")
    search.locator("button[data-action=rollback]").click()
    search.locator("[data-testid=rollback-plan] li[data-host=search-1]").wait_for()
    search.locator("form[data-action=rollback] input[name=reason]").fill("search v2 is slow")
    search.locator("form[data-action=rollback] button.confirm").click()
    search.locator("[data-testid=action-result]", has_text="by user:carol").wait_for()
    with daemon._store() as store:
        assert store.controls("search-prod").held_sha == first["search-prod"]
    status, error = post(p, "/api/environments/search-prod/suspend", {"reason": "x"})
    assert status == 403 and "'suspend'" in error
    trail = audit(served.settings.state_dir)
    assert [(r["actor"], r["role"], r["action"], r["environment"], r["reason"], r["outcome"])
            for r in trail] == [
        ("user:carol", "rollback", "rollback", "search-prod", "search v2 is slow", "ok"),
        ("user:carol", "", "suspend", "search-prod", "", "refused 403")]


def test_a_refusal_is_shown_on_the_page(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """An action the record refuses (retry with no failed host) says why on the page."""
    served, _, _ = site
    p = sign_in_as(browser, served, "alice")
    pay = card(p, "pay-prod")
    pay.locator("button[data-action=retry]").click()
    pay.locator("[data-testid=action-result].bad",
                has_text="Retry failed hosts: refused (").wait_for()
    assert "no failed hosts to retry" in pay.locator("[data-testid=action-result]").inner_text()


def test_promote_and_unquarantine_from_the_page(
        site: tuple[Site, Daemon, dict[str, str]], browser: Any) -> None:  # noqa: F811
    """alice promotes into pay-prod the revision verified in pay-staging (offered in the
    form) and releases a revision quarantined there; both with her reason, in the record."""
    served, daemon, _ = site
    p = sign_in_as(browser, served, "alice")
    pay = card(p, "pay-prod")
    staged = next(s for s in daemon.pipeline() if s["environment"] == "pay-staging")["verified"]
    pay.locator("button[data-action=promote]").click()
    form = pay.locator("form[data-action=promote]")
    assert form.locator("input[name=revision]").input_value() == staged
    form.locator("input[name=reason]").fill("checkout fix, verified in staging")
    form.locator("button.confirm").click()
    result = pay.locator("[data-testid=action-result]")
    result.filter(has_text=f"Promote: done ({staged[:10]}, by user:alice)").wait_for()

    bad = "ab" * 20
    with daemon._store() as store:
        store.quarantine("pay-prod", bad, "host pay-2 was down")
    pay.locator("button[data-action=unquarantine]").click()
    form = pay.locator("form[data-action=unquarantine]")
    assert form.locator("select[name=revision] option").inner_text() == (
        "ababababab: host pay-2 was down")
    form.locator("input[name=reason]").fill("not the commit's fault")
    form.locator("button.confirm").click()
    result.filter(has_text=f"Unquarantine: done ({bad[:10]}, by user:alice)").wait_for()
    with daemon._store() as store:
        assert store.quarantined("pay-prod") == []
    done = [(r["actor"], r["action"], r["environment"], r["reason"])
            for r in audit(served.settings.state_dir) if r["outcome"] == "ok"]
    assert done == [
        ("user:alice", "promote", "pay-prod", "checkout fix, verified in staging"),
        ("user:alice", "unquarantine", "pay-prod", "not the commit's fault")]
