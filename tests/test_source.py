"""Stage 1 (gitops.source) under concurrency: environments and previews that watch one
repository share its mirror in the state folder, and fetch into it at the same time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from test_loop import _commit, _repo

from gitops import source


def test_simultaneous_fetches_of_one_repository_all_succeed(tmp_path: Path) -> None:
    """Eight fetches of one repository into one state folder at once (two environments on
    one repository, a preview): each gets the branch's head, none fails on another's lock."""
    repo, _ = _repo(tmp_path)
    state = tmp_path / "state"
    for round_ in range(4):
        head = _commit(repo, f"file{round_}", "x")
        with ThreadPoolExecutor(max_workers=8) as pool:
            revisions = list(pool.map(lambda _: source.fetch(str(repo), "main", state),
                                      range(8)))
        assert {r.sha for r in revisions} == {head}
    assert [p.name for p in (state / "sources").glob("*.git")] == [
        source.mirror_path(str(repo), state).name]
