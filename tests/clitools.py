"""Test helpers for the command-line tests: a real Git state repository (the sample, no lab
needed) and the real CLI run as a subprocess (``python -m gitops``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from builders import PROJECT, copy_sample, git_repo
from mutations import explicit_hosts


def sample_repo(root: Path, *, invalid: bool = False) -> Path:
    """The sample state repository in a fresh Git repository; ``invalid``: one problem
    (``fail_percent`` over 100), so any run of it ends quickly without touching a host."""
    repo = root / "repo"
    copy_sample(repo)
    text = explicit_hosts((PROJECT / "inventories/lab.yml").read_text())
    if invalid:
        text = text.replace("fail_percent: 34", "fail_percent: 340")
    return git_repo(repo, {"inventories/lab.yml": text}, "sample")


def gitops(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           unset: tuple[str, ...] = (), timeout: float = 120,
           ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gitops ARGS`` with the environment's GITOPS_* variables removed
    (then ``env`` added, ``unset`` removed)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("GITOPS_") and k not in unset and k != "NO_COLOR"}
    return subprocess.run([sys.executable, "-m", "gitops", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**base, **(env or {})})
