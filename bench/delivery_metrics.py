"""Benchmark: ``delivery_metrics(days=90)`` and ``incidents()`` on 1,000 recorded runs, 20 hosts.

Builds the history in a temporary store with the tests' generator
(``tests/test_delivery.build_large_history``: rollouts, failures rolled back, drift checks and
corrections, each with per-host operation and check rows), then times each call ``--rounds``
times and prints the medians. Goal (issue 5): delivery metrics for a 90-day window <= 200 ms.
No lab is needed. Usage: ``python bench/delivery_metrics.py [--runs 1000] [--hosts 20]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_delivery import ENV, T0, build_large_history  # noqa: E402

from gitops.record.store import Store  # noqa: E402
from gitops.report.delivery import delivery_metrics  # noqa: E402
from gitops.report.incidents import incidents  # noqa: E402

GOAL_MS = 200.0


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm the page cache and the imports
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "state")
        t = time.perf_counter()
        build_large_history(store, runs=args.runs, hosts=args.hosts)
        built = time.perf_counter() - t
        runs = store.db.execute("SELECT count(*) FROM runs").fetchone()[0]
        checks = store.db.execute("SELECT count(*) FROM check_results").fetchone()[0]
        metrics = _time(lambda: delivery_metrics(store, days=90, now=T0), args.rounds)
        found = _time(lambda: incidents(store), args.rounds)
        m = delivery_metrics(store, days=90, now=T0)[ENV]
        n_incidents = len(incidents(store))
        store.close()
    med_m, med_i = statistics.median(metrics), statistics.median(found)
    print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: "
          f"`python bench/delivery_metrics.py --runs {args.runs} --hosts {args.hosts} "
          f"--rounds {args.rounds}`")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"History: {runs} runs on {args.hosts} hosts, {checks} check rows (built in "
          f"{built:.1f} s); {m.deployments} deployments, {m.failed_rollouts} failed rollouts, "
          f"{n_incidents} incidents")
    print()
    print("| call | median (ms) | min (ms) | max (ms) |")
    print("|---|---|---|---|")
    for name, times in (("delivery_metrics(days=90)", metrics), ("incidents()", found)):
        print(f"| {name} | {statistics.median(times):.1f} | {min(times):.1f} | "
              f"{max(times):.1f} |")
    print()
    verdict = "met" if med_m <= GOAL_MS else "NOT MET"
    print(f"**delivery_metrics**: {med_m:.1f} ms for a 90-day window over {runs} runs "
          f"(median of {args.rounds}), goal <= {GOAL_MS:.0f} ms: {verdict}; "
          f"incidents() {med_i:.1f} ms")


if __name__ == "__main__":
    main()
