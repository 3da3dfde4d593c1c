"""The README's Quick start: its commands, run in order on a fresh machine, install everything
the test suite uses, so the suite runs there as it does in CI (nothing skipped for a missing
package), and CI runs the same script."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE_NEEDS = {"chromium", "prometheus", "postgresql", "debootstrap", "systemd-container",
               "dpkg-dev"}
"""Debian packages whose absence skips tests: the browser, promtool, the PostgreSQL half of
the store's tests, the lab."""


def quick_start_commands() -> list[str]:
    """The commands of the shell blocks of the README's "Quick start" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def installed_by(script: Path) -> set[str]:
    """The Debian packages a shell script installs: its ``PACKAGES=(...)`` list and the
    arguments of its ``apt-get install`` lines."""
    text = script.read_text().replace("\\\n", " ")
    words: list[str] = []
    for match in re.finditer(r"^\s*PACKAGES=\((.*?)\)", text, re.S | re.M):
        words += match.group(1).split()
    for line in text.splitlines():
        if "apt-get install" in line:
            words += shlex.split(line.split("apt-get install", 1)[1].split(">")[0])
    return {w for w in words if not w.startswith(("-", "$", '"'))}


def test_the_quick_start_installs_what_the_suite_needs() -> None:
    """demo.sh then the README's test command install every package the suite's skips name."""
    commands = quick_start_commands()
    scripts = [ROOT / c.split()[0] for c in commands if c.startswith("./")]
    assert [s.name for s in scripts] == ["demo.sh", "test.sh"], commands
    assert all(os.access(s, os.X_OK) for s in scripts)
    packages = set().union(*(installed_by(s) for s in scripts))
    assert packages >= SUITE_NEEDS, f"not installed: {sorted(SUITE_NEEDS - packages)}"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs ./test.sh and names no package itself: the list lives in one place."""
    ci = (ROOT / ".ci/run").read_text()
    assert "./test.sh" in ci
    assert "apt-get" not in ci
    assert installed_by(ROOT / "test.sh") >= SUITE_NEEDS


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="test.sh installs packages as root, into a .venv root may own")
def test_the_test_script_runs_pytest_with_its_arguments() -> None:
    """./test.sh FILE installs what is missing and runs pytest on FILE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([str(ROOT / "test.sh"), "tests/test_windows.py", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-2000:]
