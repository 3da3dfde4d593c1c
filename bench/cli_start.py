"""Benchmark: what a ``gitops`` command costs before it does anything, this checkout vs a base.

Four commands, each a fresh interpreter (this venv's Python) from an empty folder, with no
GITOPS_* variable: ``python -c pass`` (the interpreter floor), ``python -c "import gitops.cli"``,
``python -m gitops --help`` and ``python -m gitops status --state-dir <empty folder>``. The
base commit (default: ``6530a49``, the last before the commands' imports were made lazy) is
checked out into a temporary ``git worktree`` and imported through PYTHONPATH, as is this
checkout; before timing, each side shows that ``import gitops`` finds its own files. Rounds
alternate the sides; the figure is the minimum over the rounds of the child's CPU time (user +
system, ``resource.getrusage``), the least disturbed by a loaded machine. Both sides' ``--help``
and ``status`` outputs are compared.

    python bench/cli_start.py [--base REV] [--runs 10] [--no-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from _common import save_section

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    env["PYTHONPATH"] = str(checkout)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _cpu(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """The CPU seconds (user + system) of one run of ``argv``, and its output; it must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None,
                        help="commit to compare with (default: 6530a49, before the lazy imports)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each command per side")
    parser.add_argument("--no-results", action="store_true",
                        help="do not write the section of bench/RESULTS.md")
    args = parser.parse_args()
    base_rev = args.base or "6530a49"
    base_sha = _git("rev-parse", "--short", f"{base_rev}^{{commit}}")
    head_sha = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "gitops") else ""
    started = datetime.now(UTC)
    load_avg = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="cli-start-"))
    base = tmp / "base"
    _git("worktree", "add", "--detach", "-q", str(base), base_sha)
    try:
        cwd = tmp / "cwd"
        cwd.mkdir()
        sides = {"base": base, "this": ROOT}
        for name, checkout in sides.items():
            _, found = _cpu([sys.executable, "-c", "import gitops; print(gitops.__file__)"],
                            _env(checkout), cwd)
            if Path(found.strip()) != checkout / "gitops" / "__init__.py":
                sys.exit(f"{name}: import gitops found {found.strip()}, not {checkout}")
            print(f"{name}: {checkout} imports {found.strip()}", flush=True)
        commands = {
            "`python -c pass` (floor)": ["-c", "pass"],
            "`import gitops.cli`": ["-c", "import gitops.cli"],
            "`gitops --help`": ["-m", "gitops", "--help"],
            "`gitops status --state-dir <empty>`": ["-m", "gitops", "status", "--state-dir",
                                                   "{state}"],
        }
        best: dict[tuple[str, str], float] = {}
        outputs: dict[tuple[str, str], str] = {}
        for _ in range(args.runs):
            for label, argv in commands.items():
                for name, checkout in sides.items():
                    state = tmp / f"state-{name}"
                    shutil.rmtree(state, ignore_errors=True)
                    state.mkdir()
                    cmd = [sys.executable, *(a.replace("{state}", str(state)) for a in argv)]
                    seconds, out = _cpu(cmd, _env(checkout), cwd)
                    best[label, name] = min(best.get((label, name), seconds), seconds)
                    outputs[label, name] = out
    finally:
        _git("worktree", "remove", "--force", str(base))
        shutil.rmtree(tmp, ignore_errors=True)
    floor = {name: best["`python -c pass` (floor)", name] for name in sides}
    lines = [
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Command: `python bench/cli_start.py --runs "
        f"{args.runs}` (base {base_sha}, this checkout {head_sha}{dirty})",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_avg:.2f} "
        "at the start",
        "",
        f"CPU seconds (user + system), minimum of {args.runs} runs per side, rounds alternating:",
        "",
        f"| command | base {base_sha} (s) | this (s) | this / base | above the floor: "
        "this / base |",
        "|---|---|---|---|---|",
    ]
    for label in commands:
        old, new = best[label, "base"], best[label, "this"]
        above_old, above_new = old - floor["base"], new - floor["this"]
        above = (f"{above_new:.3f} / {above_old:.3f} = {above_new / above_old:.2f}"
                 if label != "`python -c pass` (floor)" and above_old > 0 else "")
        lines.append(f"| {label} | {old:.3f} | {new:.3f} | {new / old:.2f} | {above} |")
    same = [label for label in commands
            if outputs[label, "base"] == outputs[label, "this"]]
    lines += ["", "Identical output on both sides: " + (", ".join(same) or "none")]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        save_section("cli_start", text)


if __name__ == "__main__":
    main()
