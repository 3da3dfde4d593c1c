"""Benchmark: ``gitops.pipeline.apply.apply`` of the sample on 3 lab hosts vs the raw pyinfra CLI.

Run as root: ``python bench/apply_vs_pyinfra.py [--name bench1] [--rounds 5]``. Brings up lab
NAME with 3 hosts, builds a temporary state repository from the sample (base, app, web), applies
once to converge the hosts (timed: the first, converging apply), then alternates ROUNDS of
``gitops.pipeline.apply.apply(state)`` and ``pyinfra -y INVENTORY.py deploys/base/deploy.py
deploys/app/deploy.py deploys/web/deploy.py`` on the same deploy files and hosts (the pyinfra
inventory carries each host's SSH data and its validated service parameters). Both sides find
nothing to change. Prints a table, the ratio of medians (goal <= 1.10) and a summary line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import (
    header,
    median,
    parse_args,
    print_table,
    ratio_line,
    run_checked,
    sample_on_lab,
    timed,
    tool,
)

from gitops.model import DeclaredState
from gitops.pipeline.apply import apply

GOAL = 1.10
HOSTS = 3


def pyinfra_inventory(state: DeclaredState, path: Path) -> Path:
    """A pyinfra inventory file: group ``web`` with each host's SSH data and parameters."""
    entries = []
    for h in state.hosts:
        data: dict[str, object] = {
            "ssh_hostname": h.address,
            "ssh_user": "root",
            "ssh_key": h.ssh.key_file,
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
        }
        for params in h.services.values():
            data.update(params)
        entries.append(f"    ({h.name!r}, {data!r}),")
    path.write_text("web = [\n" + "\n".join(entries) + "\n]\n")
    return path


def gitops_apply(state: DeclaredState) -> None:
    _plan, report = apply(state)
    if report.failed_hosts:
        sys.exit(f"gitops apply failed on {report.failed_hosts}: {report}")


def main() -> None:
    opts = parse_args(__doc__, "bench1")
    with sample_on_lab(opts.name, HOSTS) as (_info, work, repo, state):
        inventory = pyinfra_inventory(state, work / "pyinfra_inventory.py")
        deploys = [f"deploys/{s}/deploy.py" for s in state.service_order]
        pyinfra_cmd = [tool("pyinfra") or "pyinfra", "-y", str(inventory), *deploys]

        header(
            f"apply: gitops.pipeline.apply.apply vs raw pyinfra CLI ({HOSTS} lab hosts, services "
            f"{', '.join(state.service_order)}, {opts.rounds} alternating rounds, hosts converged)",
            f"python bench/apply_vs_pyinfra.py --name {opts.name} --rounds {opts.rounds}",
        )
        first = timed(lambda: gitops_apply(state))
        figures: dict[str, list[float]] = {"gitops apply": [], "pyinfra CLI": []}
        for _ in range(opts.rounds):
            figures["gitops apply"].append(timed(lambda: gitops_apply(state)))
            figures["pyinfra CLI"].append(
                timed(lambda: run_checked(pyinfra_cmd, cwd=repo, timeout=600))
            )
        _plan, report = apply(state)
        changed = report.changed

    print(f"First (converging) gitops apply on fresh hosts: {first:.2f} s")
    print()
    print(f"pyinfra command (cwd = state repository): `pyinfra -y INVENTORY.py "
          f"{' '.join(deploys)}`")
    print()
    print_table(figures)
    print(f"Operations changed by a further gitops apply after the rounds: {changed}")
    print()
    ratio, met = ratio_line("gitops apply / pyinfra CLI", figures["gitops apply"],
                            figures["pyinfra CLI"], GOAL)
    print(
        f"**apply_vs_pyinfra**: gitops apply {median(figures['gitops apply']):.2f} s vs "
        f"pyinfra CLI {median(figures['pyinfra CLI']):.2f} s on {HOSTS} converged hosts "
        f"(median of {opts.rounds}), ratio {ratio:.2f}, goal <= {GOAL:g}: "
        f"{'met' if met else 'NOT met'}; first converging apply {first:.2f} s"
    )


if __name__ == "__main__":
    main()
