"""The package's import contract (``[tool.importlinter]`` in pyproject.toml) holds, and it
bites: ``lint-imports`` fails, naming the broken contract and the import, when a copy of the
package gets a forbidden import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's configuration, run in ``cwd`` (``pythonpath``, when
    given, first on the path, so its ``gitops`` is the one analysed)."""
    env = {**os.environ, "NO_COLOR": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo",
                           str(PROJECT / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_import_contract() -> None:
    proc = _lint_imports(PROJECT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_forbidden_import_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(PROJECT / "gitops", copy / "gitops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "gitops/daemon/loop.py").open("a") as f:
        f.write("\nimport pyinfra  # noqa\n")
    with (copy / "gitops/pipeline/apply.py").open("a") as f:
        f.write("\nfrom gitops.web import server  # noqa\n")

    proc = _lint_imports(tmp_path, pythonpath=copy)
    out = " ".join((proc.stdout + proc.stderr).split())  # the report wraps long lines
    assert proc.returncode == 1, out
    assert "pyinfra and testinfra only in gitops.workers BROKEN" in out, out
    assert "gitops.daemon.loop -> pyinfra" in out, out
    assert "gitops.pipeline is not allowed to import gitops.web" in out, out
    assert "gitops.pipeline.apply -> gitops.web.server" in out, out
