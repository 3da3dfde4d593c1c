"""Benchmark: the cost of a guard on an apply with nothing to change (``gitops.pipeline.guard``).

Run as root: ``python bench/guard.py [--name bench7] [--rounds 5]``. Brings up lab NAME with 3
hosts, builds a temporary state repository from the sample (whose ``base`` is guarded),
converges the hosts once, then alternates ROUNDS of ``gitops.pipeline.apply.apply`` of the same
declared state guarded (as loaded) and unguarded (``guarded`` emptied), on the same hosts.
Nothing changes, so the guarded side arms nothing (checked: no token in any host's record,
no ``gitops-guard`` timer on any host); its only extra is one command per host that looks
for a revert an earlier run left armed. Prints a table, the ratio of medians (goal <= 1.05)
and a summary line.
"""

from __future__ import annotations

import subprocess
import sys

from _common import header, median, parse_args, print_table, ratio_line, sample_on_lab, timed

from gitops.model import DeclaredState
from gitops.pipeline.apply import apply

GOAL = 1.05
HOSTS = 3


def no_change_apply(state: DeclaredState) -> None:
    _plan, report = apply(state)
    if report.failed_hosts or report.changed:
        sys.exit(f"the apply failed or changed something: {report}")
    armed = [h.host for h in report.hosts if h.guard is not None and h.guard.token]
    if armed:
        sys.exit(f"a guard was armed on {armed} although nothing changed")


def main() -> None:
    opts = parse_args(__doc__, "bench7")
    with sample_on_lab(opts.name, HOSTS) as (info, _work, _repo, guarded):
        if not guarded.guarded:
            sys.exit("the sample guards no service (deploys/base/service.yml: guard: true)")
        unguarded = guarded.model_copy(update={"guarded": ()})
        header(
            f"guard: a guarded no-change apply vs the same apply unguarded ({HOSTS} lab "
            f"hosts, services {', '.join(guarded.service_order)}, guarded: "
            f"{', '.join(guarded.guarded)}; {opts.rounds} alternating rounds, hosts converged)",
            f"python bench/guard.py --name {opts.name} --rounds {opts.rounds}",
        )
        _plan, report = apply(guarded)  # converge (this one may arm and confirm)
        if report.failed_hosts:
            sys.exit(f"the converging apply failed: {report}")
        figures: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        for _ in range(opts.rounds):
            figures["unguarded"].append(timed(lambda: no_change_apply(unguarded)))
            figures["guarded"].append(timed(lambda: no_change_apply(guarded)))
        timers = {
            h.name: subprocess.run(
                ["ssh", "-F", str(info.ssh_config), h.name,
                 "systemctl list-timers --all --no-legend | grep -c gitops-guard || true"],
                capture_output=True, text=True, timeout=60).stdout.strip()
            for h in info.hosts}

    print_table(figures)
    print(f"gitops-guard timers on the hosts after the rounds: {timers}")
    print()
    ratio, met = ratio_line("guarded / unguarded", figures["guarded"], figures["unguarded"],
                            GOAL)
    print(
        f"**guard**: guarded no-change apply {median(figures['guarded']):.2f} s vs unguarded "
        f"{median(figures['unguarded']):.2f} s on {HOSTS} converged hosts (median of "
        f"{opts.rounds}), ratio {ratio:.3f}, goal <= {GOAL:g}: {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
