"""The status page says why an open failure is not in the change failure rate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from test_page import browser_factory, record_run, revision  # noqa: F401  (a fixture)

from gitops.record.store import Store
from gitops.web import page
from gitops.web.server import bound_port, start_in_thread, stop


@pytest.fixture
def rerun_failed(tmp_path: Path) -> Iterator[str]:
    """Two verified rollouts, then a failed re-run of the second (already verified) commit."""
    state_dir = tmp_path / "state"
    with Store(state_dir) as store:
        record_run(store, revision(10))
        record_run(store, revision(11))
        record_run(store, revision(11), failing={
            ("lab-2", "web", "port 80 listening"): "nothing listens on 0.0.0.0:80"})
    server, thread = start_in_thread(Starlette(routes=page.routes(state_dir, None)),
                                     "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}/"
    finally:
        stop(server, thread)


def test_uncounted_open_failure_is_explained(
        rerun_failed: str, browser_factory: Any) -> None:  # noqa: F811  (the imported fixture)
    """0 of 2 rollouts beside an open failed-rollout incident: the page says the failed
    re-run of a verified commit is not a rollout, and what the rate counts."""
    p = browser_factory(rerun_failed)
    delivery = p.locator('[data-testid="delivery"]').inner_text()
    assert "change failure rate (0 of 2 rollouts)" in delivery
    assert "failing since" in delivery
    assert "Open (1)" in p.locator('[data-testid="incidents"]').inner_text()
    note = p.locator('[data-testid="cfr-note"]').inner_text()
    assert "re-run of a commit already verified" in note and "not in the rate" in note
    assert p.js_errors == []
