"""Stage 1 (gitops.source) under concurrency: environments and previews that watch one
repository share its mirror in the state folder, and fetch into it at the same time; and the
mirror's size over many fetches."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
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


def _loose(mirror: Path) -> int:
    out = subprocess.check_output(["git", "-C", str(mirror), "count-objects", "-v"], text=True)
    return int(dict(line.split(": ") for line in out.splitlines())["count"])


def _disk_bytes(folder: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512
               for d, _, files in os.walk(folder) for f in files)


def test_many_fetches_leave_the_mirror_bounded(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror fetched after each of many commits keeps at most LOOSE_OBJECTS loose objects
    (plus one commit's) and does not grow by a disk block per object: 18 more commits add
    far less than their loose objects would take."""
    monkeypatch.setattr(source, "LOOSE_OBJECTS", 6)
    repo, _ = _repo(tmp_path)
    state = tmp_path / "state"
    mirror = source.mirror_path(str(repo), state)
    loose, sizes = [], []
    for n in range(36):
        _commit(repo, "motd", f"commit {n}\n")  # 3 objects: blob, tree, commit
        source.fetch(str(repo), "main", state)
        loose.append(_loose(mirror))
        sizes.append(_disk_bytes(mirror))
    assert max(loose) <= 6 + 3
    assert sizes[-1] - sizes[17] < 18 * 3 * 4096 // 4  # loose: 18 commits x 3 blocks


def test_a_commit_a_force_push_left_behind_survives_the_packing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing the mirror keeps a commit the branch no longer reaches (force-pushed away):
    a rollback to the revision a host last verified still finds it."""
    monkeypatch.setattr(source, "LOOSE_OBJECTS", 0)  # every fetch packs
    repo, _ = _repo(tmp_path)
    state = tmp_path / "state"
    gone = _commit(repo, "motd", "soon force-pushed away\n")
    source.fetch(str(repo), "main", state)
    subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "HEAD~1"], check=True)
    head = _commit(repo, "motd", "rewritten\n")
    assert source.fetch(str(repo), "main", state).sha == head
    assert _loose(source.mirror_path(str(repo), state)) == 0
    assert source.revision(str(repo), "main", gone, state).sha == gone
