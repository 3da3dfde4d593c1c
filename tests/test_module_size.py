"""The package's modules stay small (the project's rule: under ~600 lines, one job each): a
module that grows past the limit fails here, named with its length, and is split by job."""

from __future__ import annotations

from pathlib import Path

from builders import PROJECT

MAX_LINES = 600


def too_long(package: Path, limit: int = MAX_LINES) -> list[str]:
    """``path: N lines`` for each module under ``package`` longer than ``limit`` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(package.parent)}: {lines} lines")
    return found


def test_no_module_of_the_package_is_over_the_limit() -> None:
    """Every module under ``gitops/`` has at most 600 lines."""
    offenders = too_long(PROJECT / "gitops")
    assert not offenders, (f"modules over {MAX_LINES} lines (split them by job): "
                           + "; ".join(offenders))


def test_a_module_over_the_limit_is_named(tmp_path: Path) -> None:
    """The check bites: a module one line over the limit is listed with its length, one at
    the limit is not."""
    package = tmp_path / "gitops"
    (package / "workers").mkdir(parents=True)
    (package / "workers" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (package / "fits.py").write_text("x = 1\n" * MAX_LINES)
    assert too_long(package) == [f"gitops/workers/big.py: {MAX_LINES + 1} lines"]
