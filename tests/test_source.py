"""Stage 1 (gitops.pipeline.source) under concurrency: environments and previews that watch one
repository share its mirror in the state folder, and fetch into it at the same time; and the
mirror's size over many fetches."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from builders import commit_file, empty_repo

from gitops.pipeline import source


def test_simultaneous_fetches_of_one_repository_all_succeed(tmp_path: Path) -> None:
    """Eight fetches of one repository into one state folder at once (two environments on
    one repository, a preview): each gets the branch's head, none fails on another's lock."""
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    for round_ in range(4):
        head = commit_file(repo, f"file{round_}", "x")
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
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    mirror = source.mirror_path(str(repo), state)
    loose, sizes = [], []
    for n in range(36):
        commit_file(repo, "motd", f"commit {n}\n")  # 3 objects: blob, tree, commit
        source.fetch(str(repo), "main", state)
        loose.append(_loose(mirror))
        sizes.append(_disk_bytes(mirror))
    assert max(loose) <= 6 + 3
    assert sizes[-1] - sizes[17] < 18 * 3 * 4096 // 4  # loose: 18 commits x 3 blocks


def test_fetches_that_arrive_as_packs_leave_the_mirror_few_packs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetches that each arrive as a pack of their own (100 objects or more: here every one,
    ``transfer.unpackLimit = 1``) leave no loose object to count; past PACKS packs the mirror
    is packed into one, and every commit is still there."""
    monkeypatch.setattr(source, "PACKS", 3)
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    source.fetch(str(repo), "main", state)
    mirror = source.mirror_path(str(repo), state)
    subprocess.run(["git", "-C", str(mirror), "config", "transfer.unpackLimit", "1"], check=True)
    packs, shas = [], []
    for n in range(8):
        shas.append(commit_file(repo, "motd", f"commit {n}\n"))
        source.fetch(str(repo), "main", state)
        packs.append(len(list((mirror / "objects/pack").glob("*.pack"))))
    assert max(packs) <= 3 + 1 and packs[-1] <= 3
    assert all(source.revision(str(repo), "main", sha, state).sha == sha for sha in shas)


def test_a_commit_a_force_push_left_behind_survives_the_packing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing the mirror keeps a commit the branch no longer reaches (force-pushed away):
    a rollback to the revision a host last verified still finds it."""
    monkeypatch.setattr(source, "LOOSE_OBJECTS", 0)  # every fetch packs
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    gone = commit_file(repo, "motd", "soon force-pushed away\n")
    source.fetch(str(repo), "main", state)
    subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "HEAD~1"], check=True)
    head = commit_file(repo, "motd", "rewritten\n")
    assert source.fetch(str(repo), "main", state).sha == head
    assert _loose(source.mirror_path(str(repo), state)) == 0
    assert source.revision(str(repo), "main", gone, state).sha == gone


def _pull_request(repo: Path, ref: str) -> str:
    """A commit of its own published under ``ref``, as a host does for a pull request."""
    sha = subprocess.check_output(["git", "-C", str(repo), "commit-tree", "-p", "main", "-m",
                                   ref, "main^{tree}"], text=True).strip()
    subprocess.run(["git", "-C", str(repo), "update-ref", ref, sha], check=True)
    return sha


def _refs(mirror: Path) -> set[str]:
    """The mirror's branches and pull requests' refs."""
    return set(subprocess.check_output(["git", "-C", str(mirror), "for-each-ref",
                                        "--format=%(refname)", "refs/heads/", "refs/pull/",
                                        "refs/merge-requests/"], text=True).split())


def test_pruning_refs_waits_for_a_fetch_holding_the_mirror(tmp_path: Path) -> None:
    """A prune of the pull requests' refs while a fetch holds the mirror's lock deletes
    nothing until the fetch lets go, then deletes; one kept waiting past its timeout skips
    (nothing deleted, no error) and leaves it to the next prune."""
    import fcntl
    import time

    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    url = str(repo)
    _pull_request(repo, "refs/pull/1/head")
    source.fetch(url, "main", state)
    source.fetch_ref(url, "refs/pull/1/head", "feature", state)
    mirror = source.mirror_path(url, state)
    fd = os.open(mirror.with_suffix(".lock"), os.O_RDWR)  # another process fetching
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert source.prune_refs(url, state, set(), timeout=0.2) == []
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(source.prune_refs, url, state, set(), timeout=30)
            time.sleep(0.5)
            assert not waiting.done()
            assert "refs/pull/1/head" in _refs(mirror)
            os.close(fd)
            fd = -1
            assert waiting.result(timeout=30) == ["refs/pull/1/head"]
    finally:
        if fd >= 0:
            os.close(fd)
    assert _refs(mirror) == {"refs/heads/main"}


def test_pruning_refs_never_deletes_a_branch_or_a_kept_ref(tmp_path: Path) -> None:
    """A prune deletes no branch, even under a prefix it is given, and no ref it was told to
    keep; a pull request pruned is fetched again when previewed again."""
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    url = str(repo)
    shas = {ref: _pull_request(repo, ref) for ref in (
        "refs/pull/1/head", "refs/pull/2/head", "refs/merge-requests/3/head")}
    source.fetch(url, "main", state)
    for ref in shas:
        source.fetch_ref(url, ref, "feature", state)
    mirror = source.mirror_path(url, state)
    removed = source.prune_refs(url, state, {"refs/pull/2/head"},
                                prefixes=(*source.PULL_REFS, "refs/heads/"))
    assert sorted(removed) == ["refs/merge-requests/3/head", "refs/pull/1/head"]
    assert _refs(mirror) == {"refs/heads/main", "refs/pull/2/head"}
    again = source.fetch_ref(url, "refs/pull/1/head", "feature", state)
    assert again.sha == shas["refs/pull/1/head"]
