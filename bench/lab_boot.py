"""Benchmark of `gitops lab`: boot to SSH for 3 and 20 hosts, and `lab down` of 20 hosts.

Run as root: ``python bench/lab_boot.py [--name bench] [--runs 3]``. The base image is built
first if missing (not timed). Each figure is wall time of the ``gitops lab`` CLI, measured
from the moment the command starts; ``up`` returns only once every host answered ``ssh true``,
which this script then confirms with a fresh SSH connection per host. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import gitops.lab as lab_api
from gitops.lab.common import check_prerequisites, resolve_name
from gitops.lab.image import ensure_image

GOALS = {"up 3": 5.0, "up 20": 30.0, "down 20": 5.0}


def cli(*args: str) -> float:
    """Wall seconds of ``gitops lab ARGS``; exits if the command fails."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gitops", "lab", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"gitops lab {' '.join(args)} failed: {proc.stderr.strip()}")
    return took


def confirm_ssh(name: str) -> None:
    """Every host answers a fresh (non-multiplexed) SSH connection."""
    info = lab_api.current(name)
    assert info is not None
    for host in info.hosts:
        subprocess.run(
            ["ssh", "-F", str(info.ssh_config), "-o", "ControlMaster=no", host.name, "true"],
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    name = resolve_name(opts.name)
    check_prerequisites()
    ensure_image(progress=True)
    lab_api.down(name)

    figures: dict[str, list[float]] = {"up 3": [], "up 20": [], "down 20": []}
    for _ in range(opts.runs):
        figures["up 3"].append(cli("up", "--name", name, "--hosts", "3"))
        confirm_ssh(name)
        cli("down", "--name", name)
        figures["up 20"].append(cli("up", "--name", name, "--hosts", "20"))
        confirm_ssh(name)
        figures["down 20"].append(cli("down", "--name", name))

    load = os.getloadavg()[0]
    print(f"# gitops lab boot benchmark ({opts.runs} runs, base image cached)")
    print()
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load:.2f} at the end"
    )
    print()
    print("| measure | median (s) | min (s) | max (s) | goal (s) | met |")
    print("|---|---|---|---|---|---|")
    labels = {
        "up 3": "`lab up --hosts 3` until all answer SSH",
        "up 20": "`lab up --hosts 20` until all answer SSH",
        "down 20": "`lab down` of 20 hosts",
    }
    for key, values in figures.items():
        med = statistics.median(values)
        met = "yes" if med < GOALS[key] else "NO"
        print(
            f"| {labels[key]} | {med:.2f} | {min(values):.2f} | {max(values):.2f} "
            f"| < {GOALS[key]:.0f} | {met} |"
        )


if __name__ == "__main__":
    main()
