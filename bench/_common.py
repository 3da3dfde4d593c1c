"""Shared helpers of the benchmark scripts in ``bench/`` (not a benchmark itself).

Each benchmark brings up its own lab (``bench1``, ``bench2``, ...), builds a temporary Git
state repository from the project's sample (``deploys/`` and ``inventories/lab.yml``) pointed
at that lab's hosts and key, times alternating rounds and prints ratios of medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import yaml

import gitops.lab as lab
from gitops.load import load
from gitops.model import DeclaredState

ROOT = Path(__file__).resolve().parent.parent
"""The project checkout: its ``deploys/`` and ``inventories/lab.yml`` are the sample."""

ENVIRONMENT = "lab"


def tool(name: str) -> str | None:
    """The command ``name`` installed beside this Python (a venv's ``bin``) first, then on
    PATH: ``.venv/bin/python bench/...`` finds the venv's pyinfra without an activated venv."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")


def lab_up(name: str, hosts: int) -> lab.LabInfo:
    """Bring lab ``name`` up with ``hosts`` hosts, taking down a leftover of an earlier run."""
    if lab.current(name) is not None:
        lab.down(name)
    return lab.up(hosts=hosts, name=name)


def lab_down(name: str) -> None:
    lab.down(name)


def make_repo(info: lab.LabInfo, dest: Path, services: Iterable[str] | None = None) -> Path:
    """A Git state repository at ``dest``: the committed sample's ``deploys/`` and
    ``inventories/lab.yml`` with ``hosts:`` replaced by the lab's hosts (all in group ``web``)
    and ``settings.lab`` naming the lab.

    ``services`` keeps only those services in the inventory (groups and host overrides).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # the committed sample (HEAD), not the working tree other engineers may be editing
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "deploys", f"inventories/{ENVIRONMENT}.yml"],
        capture_output=True, check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    inv_file = dest / "inventories" / f"{ENVIRONMENT}.yml"
    inv = yaml.safe_load(inv_file.read_text())
    inv["settings"]["lab"] = info.name  # addresses and key from the lab (source: lab)
    inv["hosts"] = {h.name: {"groups": ["web"]} for h in info.hosts}
    if services is not None:
        keep = set(services)
        for group in inv.get("groups", {}).values():
            group["services"] = {k: v for k, v in group.get("services", {}).items() if k in keep}
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    git = ["git", "-C", str(dest), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench state"], check=True)
    return dest


def parse_args(doc: str | None, default_name: str) -> argparse.Namespace:
    """``--name`` (the lab) and ``--rounds``, the options every lab benchmark takes."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--name", default=default_name)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


@contextmanager
def sample_on_lab(name: str, hosts: int) -> Iterator[tuple[lab.LabInfo, Path, Path,
                                                         DeclaredState]]:
    """Lab ``name`` up with ``hosts`` hosts and the sample repository aimed at it: yields
    the lab, a work folder, the repository and its loaded state; the lab goes down after."""
    require_root()
    work = Path("/tmp") / f"gitops-bench-{name}"
    info = lab_up(name, hosts)
    try:
        repo = make_repo(info, work / "repo")
        yield info, work, repo, load_state(repo)
    finally:
        lab_down(name)


def load_state(repo: Path) -> DeclaredState:
    return load(repo, ENVIRONMENT)


def timed(func: Callable[[], object]) -> float:
    """Wall seconds of ``func()``."""
    start = time.monotonic()
    func()
    return time.monotonic() - start


def run_checked(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, capturing output; exit with its output if it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def header(title: str, command: str) -> None:
    load1 = os.getloadavg()[0]
    print(f"# {title}")
    print()
    print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `{command}`")
    print()
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load1:.2f} "
          "at the start")
    print()


def print_table(figures: dict[str, list[float]]) -> None:
    """One row per measure: median, min, max and every round, in seconds."""
    print("| measure | median (s) | min (s) | max (s) | rounds (s) |")
    print("|---|---|---|---|---|")
    for label, values in figures.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {label} | {median(values):.2f} | {min(values):.2f} | {max(values):.2f} "
              f"| {rounds} |")
    print()


def ratio_line(name: str, num: list[float], den: list[float], goal: float) -> tuple[float, bool]:
    """Print the ratio of medians ``num/den`` against ``goal`` (met when ratio <= goal)."""
    ratio = median(num) / median(den)
    met = ratio <= goal
    print(f"Ratio {name}: {ratio:.2f} (goal <= {goal:g}): {'met' if met else 'NOT MET'}")
    print()
    return ratio, met
