"""The status page opens with the environments' health; the teams panel shows only when
teams are declared, below it."""

from __future__ import annotations

from typing import Any

from test_page import ENV, Served, browser_factory, served  # noqa: F401  (fixtures)

from gitops.record.store import Store


def test_health_first_and_no_empty_teams_panel(
        served: Served, browser_factory: Any) -> None:  # noqa: F811  (the imported fixtures)
    """No team declared: the page shows the environment's health and no "Teams side by side"
    panel; once a team owns the environment the panel shows, below the health."""
    p = browser_factory(served.url + "/")
    p.wait_for_selector(f'section.environment[data-environment="{ENV}"]')
    assert p.locator('[data-testid="comparison"]').count() == 0
    assert "Teams side by side" not in p.locator("#app").inner_text()
    with Store(served.state_dir) as store:
        store.set_owners(ENV, "inventory", "web")
    p.reload()
    p.wait_for_selector('[data-testid="comparison"] [data-team="web"]')
    order = p.evaluate("""() => [...document.querySelectorAll('#app > section')]
                            .map((s) => s.dataset.testid || s.dataset.environment)""")
    assert order.index(ENV) < order.index("comparison")
    assert p.js_errors == []
