"""The quarantine: superseded revisions leave it once a newer revision is verified."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builders import commit_file, empty_repo

from gitops.pipeline import source
from gitops.pipeline.finalize import drop_superseded
from gitops.pipeline.reconcile import Target
from gitops.record.store import Database


def test_quarantined_ancestors_leave_once_a_newer_revision_is_verified(tmp_path: Path) -> None:
    """Three broken commits quarantined, then a fix verified on every host: the three leave
    the quarantine (``status`` no longer lists them); a quarantined commit the fix does not
    descend from (another branch's) stays."""
    repo, _ = empty_repo(tmp_path)
    broken = [commit_file(repo, f"bad{i}", "x") for i in range(3)]
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "other"], check=True)
    elsewhere = commit_file(repo, "elsewhere", "y")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)
    fixed = commit_file(repo, "fix", "z")
    target = Target(repo=str(repo), branch="main", environment="lab",
                    state_dir=tmp_path / "state")
    target.state_dir.mkdir()
    revision = source.fetch(str(repo), "main", target.state_dir)
    assert revision.sha == fixed
    with Database(target.state_dir).open() as store:
        for sha in [*broken, elsewhere]:
            store.quarantine("lab", sha, f"apply failed on lab-1 ({sha[:7]})")
        drop_superseded(store, target, revision)
        assert [q.sha for q in store.quarantined("lab")] == [elsewhere]
