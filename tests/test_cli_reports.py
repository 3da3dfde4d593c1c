"""``gitops metrics`` and ``gitops incidents`` print what the recorded history says."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from test_delivery import good_bad_fix, sha_of

from gitops.cli import main
from gitops.record.store import Store


def _history(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    with Store(state) as store:
        good_bad_fix(store)
    return state


def test_metrics_prints_the_four_keys(tmp_path: Path) -> None:
    """Good, bad (rolled back), fix: the CLI shows 2 rollouts verified, 33% and 70 s."""
    state = _history(tmp_path)
    result = CliRunner().invoke(main, ["metrics", "--state-dir", str(state), "--days", "36600"])
    assert result.exit_code == 0, result.output
    assert "2 verified rollouts" in result.output
    assert "33% (1 of 3 rollouts)" in result.output
    assert "time to restore       median 70s" in result.output
    data = json.loads(CliRunner().invoke(
        main, ["metrics", "--json", "--state-dir", str(state), "--days", "36600"]).output)
    assert data["lab"]["deployments"] == 2


def test_incidents_lists_and_writes_reports(tmp_path: Path) -> None:
    """The rolled-back commit is one closed incident; --write leaves its Markdown report."""
    state = _history(tmp_path)
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["incidents", "--state-dir", str(state), "--write",
                                       str(reports)])
    assert result.exit_code == 0, result.output
    assert "closed" in result.output and sha_of("bad")[:10] in result.output
    [report] = reports.glob("*.md")
    assert sha_of("bad")[:10] in report.read_text()
