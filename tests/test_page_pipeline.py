"""The status page's promotion pipeline and lead time per stage, in the real headless browser
of ``test_page.py`` over a store recorded as ``reconcile`` and the daemon record it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from test_page import ENV, browser_factory, record_run, revision  # noqa: F401 (a fixture)

from gitops.daemon.promotion import WAITING, Link
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import Revision
from gitops.web import page
from gitops.web.server import bound_port, start_in_thread, stop

CHAIN = (Link(ENV, ENV), Link("production", "production", ENV, ENV))


@pytest.fixture
def pipeline_url(tmp_path: Path) -> Iterator[str]:
    """The page over a store where ``lab`` verified a revision that ``production`` (promoting
    from it) verified too, and a newer one waits for ``lab``."""
    state = tmp_path / "state"
    verified = revision(10)
    clock = [datetime.now(UTC) - timedelta(minutes=4)]
    with Store(state, clock=lambda: clock[0]) as store:
        run_id = record_run(store, verified)
        store.record_verified(ENV, verified, run_id)
        clock[0] += timedelta(minutes=3)
        store.record_verified("production", verified, run_id + 1, upstream=ENV)
        store.set_status("production", ENVIRONMENT, [
            Condition("Ready", "True", "ReconciliationSucceeded", f"applied {verified.ref}"),
            Condition("Reconciling", "False", WAITING, "waiting for lab to verify bbbbbbbbbb"),
        ], applied=verified.ref, verified=verified.ref)
    server, thread = start_in_thread(Starlette(routes=page.routes(state, None, chain=CHAIN)),
                                     "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        stop(server, thread)


def test_page_shows_the_pipeline_and_the_stages(pipeline_url: str,
                                                browser_factory: Any) -> None:  # noqa: F811
    """The page's Pipeline table says which revision is where and what waits for which
    environment; production's delivery shows the lead time per stage."""
    p = browser_factory(pipeline_url + "/")
    text = p.locator('[data-testid="pipeline"]').inner_text()
    sha = revision(10).sha[:10]
    assert "production" in text and "waiting for lab to verify bbbbbbbbbb" in text
    assert text.count(sha) >= 3  # lab verified it; production applied and verified it
    stages = p.locator('[data-testid="stages"]').inner_text()
    assert "commit -> verified on lab" in stages
    assert "verified on lab -> verified on production" in stages
    assert "3.0 min" in stages  # lab verified at T, production at T + 3 min
    assert p.js_errors == []


def test_page_data_without_promotion_has_no_pipeline(tmp_path: Path) -> None:
    """Without an environment promoting from another, the page's data lists no pipeline."""
    with Store(tmp_path / "state") as store:
        record_run(store, Revision(sha="a" * 40, branch="main", author="a",
                                   committed_at=datetime.now(UTC), message="m"))
        data = page.page_data(store, chain=(Link(ENV, ENV),))
    assert data["pipeline"] == []
