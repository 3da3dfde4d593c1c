"""Fuzz the loader: seeded random mutations of the sample state, counted by outcome.

Each mutant is a copy of ``inventories/lab.yml`` and ``deploys/`` with one to three random
changes (tests/mutations.py: types, keys, hostile strings, YAML tags and aliases, bytes that
are not UTF-8, edits of deploy.py, checks.py and model.py). Every mutant is loaded in this
process (``gitops.pipeline.load.load``); a sample of them is also validated by the CLI in a
subprocess (``python -m gitops validate --worktree``), whose output must hold no traceback.
Goals: 0 rejections without file:line, 0 crashes, 0 tracebacks, and validation of the
unmutated sample under 1 s.

    python bench/fuzz.py --count 10000 --seed 0 --cli 200
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mutations import make_sample, mutate, verdict  # noqa: E402

from gitops.pipeline.load import load  # noqa: E402

EXIT_FOR = {"valid": 0, "rejected": 2}


def _cli(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", "validate", "--worktree", "--repo", str(root),
         "--environment", "lab", "--state-dir", str(root.parent / "state")],
        capture_output=True, text=True, timeout=120)


def sample_timing(work: Path) -> tuple[float, float]:
    """Seconds for one validate of the unmutated sample: in this process (median of 5,
    after a first load) and the CLI in a subprocess (median of 3)."""
    root = make_sample(work / "pristine")
    load(root, "lab")
    inproc = []
    for _ in range(5):
        t = time.perf_counter()
        load(root, "lab")
        inproc.append(time.perf_counter() - t)
    cli = []
    for _ in range(3):
        t = time.perf_counter()
        proc = _cli(root)
        cli.append(time.perf_counter() - t)
        assert proc.returncode == 0, proc.stderr
    return statistics.median(inproc), statistics.median(cli)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutants to load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cli", type=int, default=200, help="mutants also run through the CLI")
    args = parser.parse_args()

    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    cli_runs = cli_tracebacks = cli_exit_mismatch = 0
    every = max(1, args.count // args.cli) if args.cli else 0
    started = datetime.now(UTC)
    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gitops-fuzz-") as tmp:
        work = Path(tmp)
        inproc_s, cli_s = sample_timing(work)
        for i in range(args.count):
            rng = random.Random(args.seed * 1_000_003 + i)
            folder = work / f"m{i}"
            root = make_sample(folder / "state")
            done = mutate(root, rng)
            result, _state = verdict(root)
            counts[result.kind] += 1
            if result.kind not in EXIT_FOR and len(examples[result.kind]) < 5:
                examples[result.kind].append(f"#{i} {done}: {result.detail[:300]}")
            if every and i % every == 0 and cli_runs < args.cli:
                proc = _cli(root)
                cli_runs += 1
                output = proc.stdout + proc.stderr
                if "Traceback" in output:
                    cli_tracebacks += 1
                    if len(examples["cli traceback"]) < 5:
                        examples["cli traceback"].append(f"#{i} {done}: {output[-500:]}")
                if proc.returncode != EXIT_FOR.get(result.kind, -1):
                    cli_exit_mismatch += 1
                    if len(examples["cli exit"]) < 5:
                        examples["cli exit"].append(f"#{i} {done}: exit {proc.returncode}, "
                                                    f"in process {result.kind}")
            shutil.rmtree(folder)
            if (i + 1) % 1000 == 0:
                print(f"{i + 1} mutants, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    elapsed = time.perf_counter() - t0

    print(f"Date: {started:%Y-%m-%d %H:%M} UTC. Command: `python bench/fuzz.py --count "
          f"{args.count} --seed {args.seed} --cli {args.cli}`")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{load_at_start:.2f} at the start, Python {platform.python_version()}")
    print()
    print("| measure | count | goal |")
    print("|---|---|---|")
    print(f"| mutations | {args.count} | |")
    print(f"| valid (safe state) | {counts['valid']} | |")
    print(f"| rejected, every problem with file:line | {counts['rejected']} | |")
    print(f"| rejected without file:line | {counts['rejected-no-line']} | 0 |")
    print(f"| accepted with an unsafe host value | {counts['unsafe']} | 0 |")
    print(f"| crashes (any other exception) | {counts['crash']} | 0 |")
    print(f"| CLI runs (`gitops validate --worktree`) | {cli_runs} | |")
    print(f"| tracebacks in CLI output | {cli_tracebacks} | 0 |")
    print(f"| CLI exit code not 0 (valid) / 2 (rejected) | {cli_exit_mismatch} | 0 |")
    print()
    print(f"Time: {elapsed:.0f} s in all ({1000 * elapsed / max(args.count, 1):.1f} ms per "
          "mutant, copy and CLI runs included).")
    print(f"One validate of the unmutated sample: {1000 * inproc_s:.0f} ms in process "
          f"(gitops.pipeline.load.load, median of 5), {1000 * cli_s:.0f} ms as `gitops validate "
          "--worktree` in a new process (median of 3); goal < 1 s.")
    for kind, lines in examples.items():
        print(f"\n{kind}:")
        for line in lines:
            print(f"  {line}")


if __name__ == "__main__":
    main()
