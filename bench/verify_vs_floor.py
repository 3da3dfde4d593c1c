"""Benchmark: ``gitops.pipeline.verify.verify`` of the sample on 20 lab hosts vs an SSH floor.

Run as root: ``python bench/verify_vs_floor.py [--name bench2] [--rounds 5]``. Brings up lab
NAME with 20 hosts, builds a temporary state repository from the sample (base, app, web),
applies it once so every host is converged (5 hosts at a time, timed, reported), then
alternates ROUNDS of ``gitops.pipeline.verify.verify(state)`` and the floor: one fresh SSH
connection
per host running ``true``, all 20 in parallel, without connection reuse (``-o ControlMaster=no -o
ControlPath=none``). Prints a table, the ratio of medians (goal <= 3) and a summary line.
The goal is judged on the one-shot verify (``gitops verify``: a new SSH connection per host);
a third row measures the daemon's verify, whose SSH connections stay open between runs
(``gitops.pipeline.verify.SshConnections``), for comparison.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _common import (
    header,
    median,
    parse_args,
    print_table,
    ratio_line,
    sample_on_lab,
    timed,
)

from gitops.model import DeclaredState
from gitops.pipeline.apply import apply
from gitops.pipeline.verify import SshConnections, verify

GOAL = 3.0
HOSTS = 20
CONVERGE_CHUNK = 5


def ssh_floor(ssh_config: Path, names: list[str]) -> None:
    """One new SSH connection per host running ``true``, all in parallel."""
    procs = [
        subprocess.Popen(
            ["ssh", "-F", str(ssh_config), "-o", "ControlMaster=no", "-o", "ControlPath=none",
             "-o", "BatchMode=yes", name, "true"],
            stdin=subprocess.DEVNULL,
        )
        for name in names
    ]
    codes = [p.wait(timeout=60) for p in procs]
    if any(codes):
        sys.exit(f"ssh floor failed: exit codes {codes}")


def gitops_verify(state: DeclaredState, kept: SshConnections | None = None) -> None:
    report = verify(state, connections=kept.path if kept else None)
    if not report.ok:
        sys.exit(f"gitops verify failed: {report.failed} {report.host_errors}")


def main() -> None:
    opts = parse_args(__doc__, "bench2")
    with sample_on_lab(opts.name, HOSTS) as (info, _work, _repo, state):
        names = [h.name for h in info.hosts]
        header(
            f"verify: gitops.pipeline.verify.verify vs SSH floor ({HOSTS} lab hosts, services "
            f"{', '.join(state.service_order)}, {opts.rounds} alternating rounds, hosts converged)",
            f"python bench/verify_vs_floor.py --name {opts.name} --rounds {opts.rounds}",
        )

        def converge() -> None:
            # CONVERGE_CHUNK hosts at a time: gitops.pipeline.worker.run_worker can deadlock when
            # the
            # worker's result exceeds a pipe buffer (64 KiB; ~8 KiB of diffs per fresh host),
            # as the main thread and the stderr relay thread both read the stderr pipe.
            for i in range(0, len(state.hosts), CONVERGE_CHUNK):
                part = {h.name for h in state.hosts[i : i + CONVERGE_CHUNK]}
                _plan, report = apply(state.limit(part))
                if report.failed_hosts:
                    sys.exit(f"converging apply failed on {report.failed_hosts}")

        converge_s = timed(converge)
        checks = len(verify(state).results)
        figures: dict[str, list[float]] = {"gitops verify": [], "SSH floor": [],
                                           "gitops verify, kept connections (daemon)": []}
        with SshConnections() as kept:
            gitops_verify(state, kept)  # opens the connections the rounds then reuse
            for _ in range(opts.rounds):
                figures["gitops verify"].append(timed(lambda: gitops_verify(state)))
                figures["SSH floor"].append(timed(lambda: ssh_floor(info.ssh_config, names)))
                figures["gitops verify, kept connections (daemon)"].append(
                    timed(lambda: gitops_verify(state, kept)))

    print(f"Converging apply on {HOSTS} fresh hosts (not part of the comparison): "
          f"{converge_s:.2f} s. Checks per verify: {checks}.")
    print()
    print(f"SSH floor: `ssh -F ssh_config -o ControlMaster=no -o ControlPath=none lab-i true` "
          f"for the {HOSTS} hosts in parallel")
    print()
    print_table(figures)
    ratio, met = ratio_line("gitops verify / SSH floor", figures["gitops verify"],
                            figures["SSH floor"], GOAL)
    kept_ratio = median(figures["gitops verify, kept connections (daemon)"]) / median(
        figures["SSH floor"])
    print(f"Ratio with kept connections (the daemon's verify) / SSH floor: {kept_ratio:.2f}")
    print()
    print(
        f"**verify_vs_floor**: gitops verify {median(figures['gitops verify']):.2f} s "
        f"({checks} checks) vs SSH floor {median(figures['SSH floor']):.2f} s on {HOSTS} "
        f"converged hosts (median of {opts.rounds}), ratio {ratio:.2f}, goal <= {GOAL:g}: "
        f"{'met' if met else 'NOT met'}; with kept connections {kept_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
