"""Benchmark: what each host costs, at 10, 50 and 100 lab hosts (issue 14, "Cheaper per host").

Run as root: ``python bench/scale.py [--name phscale] [--sizes 10,50,100] [--rounds 3]
[--fanout 20]``. For each size: brings up lab NAME with that many hosts, builds a state
repository from the sample (base, app, web), converges it with one ``gitops reconcile
--once``, then alternates ROUNDS of

- a no-change ``gitops reconcile --once`` (plan, apply and verify of every service),
- a changed-only reconcile of one service (``app``'s message changed and committed, then
  ``gitops reconcile --once --changed-only``: only ``app`` is applied),
- ``gitops verify``,
- the SSH floor: one new SSH connection per host running ``true``, all in parallel.

For each it measures wall time, the controller's CPU (the ``gitops`` process and every
worker and ssh client it started: ``RUSAGE_CHILDREN``), the hosts' CPU (each host's
processes are put in a cpuacct cgroup of their own, ``/sys/fs/cgroup/cpuacct/<machine>``),
the processes each host started (its PID counter, ``/proc/sys/kernel/ns_last_pid``, read
before and after, less what reading it costs) and the peak RSS of the controller's process
tree (sampled every 50 ms). Prints a table per size, the per-host figures against the goals
and a paper extrapolation to 1,000 and 10,000 hosts from the marginal per-host cost
(the difference between the largest and the smallest size, so a worker's start is not
counted per host).

With ``--before DIR`` (a checkout of earlier code, e.g. ``git archive COMMIT | tar -x -C DIR``)
the smallest size also measures the no-change reconcile and the verify with that code
(run in DIR with ``PYTHONPATH=DIR``, the workers too: ``python -m`` puts the current
folder first), alternating with the others in the same rounds on the
same hosts: the before and after of a change, side by side.

With ``--fanout N`` (0: skip), it then compares a no-change reconcile of N hosts with one
apply worker process and with two (``settings.workers``), alternating, ROUNDS each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from _common import ENVIRONMENT, header, lab_down, lab_up, make_repo, require_root

from gitops.lab.common import machine_name

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
SYSTEMD_CG = Path("/sys/fs/cgroup/systemd")
GOALS = {"processes per host": 15, "controller CPU per host (s)": 0.05,
         "all CPU per host (s)": 0.15, "reconcile / floor": 1.5, "verify / floor": 1.5}
"""Issue 26's goals for a no-change reconcile (issue 14's were 150, 0.15, 0.4, 3 and 1.5)."""


@dataclass
class Sample:
    wall: float
    controller_cpu: float
    host_cpu: float
    processes: float
    """Median over the hosts of the processes each started."""
    peak_rss_mb: float


@dataclass
class Figures:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, label: str, sample: Sample) -> None:
        self.samples.setdefault(label, []).append(sample)

    def median(self, label: str, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples[label])


class Hosts:
    """The lab's hosts as the benchmark reads them: CPU (cgroups) and PID counters."""

    def __init__(self, lab: str, names: Sequence[str], ssh_config: Path) -> None:
        self.names = list(names)
        self.ssh_config = ssh_config
        self.groups = [CPUACCT / machine_name(lab, i + 1) for i in range(len(names))]
        for i, group in enumerate(self.groups):
            group.mkdir(exist_ok=True)
            for procs in (SYSTEMD_CG / machine_name(lab, i + 1)).rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(OSError):
                        (group / "cgroup.procs").write_text(f"{pid}\n")
        self.probe_cost = 0
        before = self.pids()
        self.probe_cost = statistics.median(a - b for a, b in zip(self.pids(), before,
                                                                   strict=True))

    def cpu(self) -> float:
        return sum(int((g / "cpuacct.usage").read_text()) for g in self.groups) / 1e9

    def pids(self) -> list[int]:
        procs = [subprocess.Popen(["ssh", "-F", str(self.ssh_config), name,
                                   "cat /proc/sys/kernel/ns_last_pid"],
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                 for name in self.names]
        return [int(p.communicate(timeout=120)[0]) for p in procs]

    def cleanup(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                group.rmdir()


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def measure(hosts: Hosts, cmd: Sequence[str] | Callable[[], None], *,
            count_processes: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Sample:
    """Run ``cmd`` (a command line, or a function for the SSH floor) and measure it."""
    before_pids = hosts.pids() if count_processes else []
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    host_cpu = hosts.cpu()
    peak = 0
    start = time.monotonic()
    if callable(cmd):
        cmd()
    else:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, **(env or {})}, cwd=cwd)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate(timeout=3600)
        done.set()
        sampler.join()
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    wall = time.monotonic() - start
    host_cpu = hosts.cpu() - host_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    processes = 0.0
    if count_processes:
        after_pids = hosts.pids()
        processes = statistics.median(a - b - hosts.probe_cost
                                      for a, b in zip(after_pids, before_pids, strict=True))
    return Sample(wall, cpu, host_cpu, processes, peak / 2**20)


def ssh_floor(hosts: Hosts) -> None:
    """One new SSH connection per host running ``true``, all in parallel."""
    procs = [subprocess.Popen(["ssh", "-F", str(hosts.ssh_config), "-o", "ControlMaster=no",
                               "-o", "ControlPath=none", "-o", "BatchMode=yes", name, "true"],
                              stdin=subprocess.DEVNULL)
             for name in hosts.names]
    codes = [p.wait(timeout=120) for p in procs]
    if any(codes):
        sys.exit(f"ssh floor failed: exit codes {codes}")


def gitops(repo: Path, state_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gitops", *args, "--repo", str(repo), "--state-dir",
            str(state_dir), "--environment", ENVIRONMENT]


def commit(repo: Path, message: str) -> None:
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "commit", "-qam", message], check=True)


def set_inventory(repo: Path, edit: Callable[[dict], None], message: str) -> None:  # type: ignore[type-arg]
    inv_file = repo / "inventories" / f"{ENVIRONMENT}.yml"
    inv = yaml.safe_load(inv_file.read_text())
    edit(inv)
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    commit(repo, message)


@contextlib.contextmanager
def lab_of(name: str, size: int, work: Path) -> Iterator[tuple[Hosts, Path]]:
    info = lab_up(name, size)
    hosts = None
    try:
        repo = make_repo(info, work / "repo")
        hosts = Hosts(name, [h.name for h in info.hosts], info.ssh_config)
        yield hosts, repo
    finally:
        lab_down(name)
        if hosts is not None:
            hosts.cleanup()


PYINFRA_SSH_ENV = "GITOPS_BENCH_PYINFRA_SSH"  # gitops.workers.connector (imports pyinfra)
BASELINE = "no-change reconcile, pyinfra's ssh connector"
"""At the smallest size: the same reconcile with pyinfra's own connector and facts
(``gitops.workers.connector.PYINFRA_SSH_ENV``), the cost before the one-shell connector."""


AFTER_CHANGE = "no-change reconcile after a change (full apply, facts recorded)"
"""The first no-change reconcile after the changed-only one: the hosts whose ``app`` changed
are applied in full and their facts recorded (``gitops.pipeline.factskip``)."""


def settle(repo: Path, state_dir: Path) -> None:
    """Unmeasured no-change reconciles until every host is skipped by fingerprint (at most
    3: a file read by the recording apply may move its access time once, a fact)."""
    for _ in range(3):
        out = subprocess.run(gitops(repo, state_dir, "reconcile", "--once", "--json"),
                             capture_output=True, text=True, check=False).stdout
        hosts = json.loads(out)["apply"]["hosts"] if out.strip() else []
        if hosts and all(h.get("fingerprint") == "no change, by fingerprint" for h in hosts):
            return


BEFORE_RECONCILE = "no-change reconcile, code before (--before)"
BEFORE_VERIFY = "verify, code before (--before)"


def run_size(name: str, size: int, rounds: int, baseline: bool = False,
             before: Path | None = None) -> Figures:
    work = Path("/tmp") / f"gitops-bench-{name}-{size}"
    state_dir = work / "state"
    figures = Figures()
    with lab_of(name, size, work) as (hosts, repo):
        converge = measure(hosts, gitops(repo, state_dir, "reconcile", "--once"),
                           count_processes=False)
        print(f"{size} hosts: converging reconcile {converge.wall:.1f} s", file=sys.stderr)
        settle(repo, state_dir)
        for r in range(rounds):
            figures.add("no-change reconcile",
                        measure(hosts, gitops(repo, state_dir, "reconcile", "--once")))
            if baseline:
                figures.add(BASELINE, measure(hosts, gitops(repo, state_dir, "reconcile",
                                                             "--once"),
                                              env={PYINFRA_SSH_ENV: "1"}))
            if baseline and before is not None:
                figures.add(BEFORE_RECONCILE, measure(hosts, gitops(repo, state_dir,
                                                                    "reconcile", "--once"),
                                                      env={"PYTHONPATH": str(before)},
                                                      cwd=before))
            set_inventory(repo, lambda inv, r=r: inv["groups"]["web"]["services"]["app"]
                          .update(message=f"Hello, round {r}"), f"app message {r}")
            figures.add("changed-only reconcile (app)",
                        measure(hosts, gitops(repo, state_dir, "reconcile", "--once",
                                              "--changed-only")))
            figures.add(AFTER_CHANGE, measure(hosts, gitops(repo, state_dir, "reconcile",
                                                            "--once")))
            settle(repo, state_dir)
            figures.add("verify", measure(hosts, gitops(repo, state_dir, "verify")))
            if baseline and before is not None:
                figures.add(BEFORE_VERIFY, measure(hosts, gitops(repo, state_dir, "verify"),
                                                   env={"PYTHONPATH": str(before)},
                                                   cwd=before))
            figures.add("SSH floor", measure(hosts, lambda: ssh_floor(hosts)))
            print(f"{size} hosts: round {r + 1}/{rounds} done", file=sys.stderr)
    return figures


def run_fanout(name: str, size: int, rounds: int) -> dict[int, list[Sample]]:
    work = Path("/tmp") / f"gitops-bench-{name}-fanout"
    out: dict[int, list[Sample]] = {1: [], 2: []}
    with lab_of(name, size, work) as (hosts, repo):
        repos = {}
        for workers in (1, 2):
            copy = work / f"repo-{workers}"
            subprocess.run(["rm", "-rf", str(copy)], check=True)
            subprocess.run(["git", "clone", "-q", str(repo), str(copy)], check=True)
            set_inventory(copy, lambda inv, w=workers: inv["settings"].update(workers=w),
                          f"{workers} worker(s)")
            repos[workers] = copy
        measure(hosts, gitops(repos[1], work / "state-1", "reconcile", "--once"),
                count_processes=False)  # converge
        measure(hosts, gitops(repos[2], work / "state-2", "reconcile", "--once"),
                count_processes=False)
        for _ in range(rounds):
            for workers in (1, 2):
                out[workers].append(measure(hosts, gitops(repos[workers],
                                                          work / f"state-{workers}",
                                                          "reconcile", "--once"),
                                            count_processes=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="phscale")
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=20)
    parser.add_argument("--before", type=Path, help="a checkout of earlier code to compare")
    opts = parser.parse_args()
    require_root()
    sizes = [int(s) for s in opts.sizes.split(",") if s.strip()]
    header("scale: per-host cost of reconcile and verify (sample: base, app, web)",
           f"python bench/scale.py --name {opts.name} --sizes {opts.sizes} "
           f"--rounds {opts.rounds} --fanout {opts.fanout}"
           + (f" --before {opts.before}" if opts.before else ""))
    labels = ["no-change reconcile", "changed-only reconcile (app)", AFTER_CHANGE, "verify",
              "SSH floor"]
    print(f"Medians of {opts.rounds} alternating rounds. Controller CPU: the gitops process "
          "tree; host CPU: all the hosts' processes (cgroups); processes: started per host "
          "(median over the hosts); RSS: peak of the controller's process tree.")
    print()
    print("| hosts | measure | wall (s) | x floor | controller CPU (s) | per host | all CPU "
          "(s) | per host | processes per host | peak RSS (MB) | per host |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    results: dict[int, Figures] = {}
    for size in sizes:
        fig = results[size] = run_size(opts.name, size, opts.rounds,
                                       baseline=size == min(sizes),
                                       before=opts.before.resolve() if opts.before else None)
        floor = fig.median("SSH floor", "wall")
        for label in [*labels, BASELINE, BEFORE_RECONCILE, BEFORE_VERIFY]:
            if label not in fig.samples:
                continue
            wall = fig.median(label, "wall")
            cpu = fig.median(label, "controller_cpu")
            every = cpu + fig.median(label, "host_cpu")
            rss = fig.median(label, "peak_rss_mb")
            print(f"| {size} | {label} | {wall:.2f} | {wall / floor:.2f} | {cpu:.2f} | "
                  f"{cpu / size:.3f} | {every:.2f} | {every / size:.3f} | "
                  f"{fig.median(label, 'processes'):.0f} | {rss:.0f} | {rss / size:.1f} |",
                  flush=True)
    print()
    fanout = run_fanout(opts.name, opts.fanout, opts.rounds) if opts.fanout else None

    small = min(results) if results else 0
    if results and BASELINE in results[small].samples:
        fig = results[small]
        ratios = ", ".join(
            f"{what} {fig.median('no-change reconcile', attr) / fig.median(BASELINE, attr):.2f}"
            for what, attr in (("wall", "wall"), ("controller CPU", "controller_cpu"),
                               ("host CPU", "host_cpu"), ("processes", "processes")))
        print(f"Side by side at {small} hosts, no-change reconcile with the one-shell connector "
              f"/ with pyinfra's ssh connector: {ratios}.")
        print()
    if results and BEFORE_RECONCILE in results[small].samples:
        fig = results[small]
        for now, then in (("no-change reconcile", BEFORE_RECONCILE), ("verify", BEFORE_VERIFY)):
            ratios = ", ".join(
                f"{what} {fig.median(now, attr) / max(fig.median(then, attr), 1e-9):.2f}"
                for what, attr in (("wall", "wall"), ("controller CPU", "controller_cpu"),
                                   ("host CPU", "host_cpu"), ("processes", "processes")))
            print(f"Side by side at {small} hosts, {now}, this code / the code before: "
                  f"{ratios}.")
        print()

    if results:
        print("Goals (no-change reconcile; judged at each size):")
        print()
        print("| hosts | processes per host (≤ 15) | controller CPU per host (≤ 0.05 s) | all CPU "
              "per host (≤ 0.15 s) | reconcile / floor (≤ 1.5) | verify / floor (≤ 1.5) |")
        print("|---|---|---|---|---|---|")
        for size, fig in results.items():
            label = "no-change reconcile"
            floor = fig.median("SSH floor", "wall")
            cpu = fig.median(label, "controller_cpu") / size
            every = cpu + fig.median(label, "host_cpu") / size
            values = [fig.median(label, "processes"), cpu, every,
                      fig.median(label, "wall") / floor, fig.median("verify", "wall") / floor]
            cells = [f"{v:.3g} {'met' if v <= goal else 'NOT met'}"
                     for v, goal in zip(values, GOALS.values(), strict=True)]
            print(f"| {size} | " + " | ".join(cells) + " |")
        print()

    if len(results) >= 2:
        small, big = min(results), max(results)
        print(f"Paper extrapolation from the marginal cost per host between {small} and {big} "
              "hosts (one controller, this machine's cores; workers and the SSH floor "
              "scale as measured, which a real network would not):")
        print()
        print("| measure | marginal wall per host (s) | controller CPU per host (s) | all CPU "
              "per host (s) | 1,000 hosts: wall / controller CPU (s) | 10,000 hosts: wall / "
              "controller CPU (s) |")
        print("|---|---|---|---|---|---|")
        for label in labels[:3]:
            def slope(attr: str, label: str = label) -> float:
                return ((results[big].median(label, attr) - results[small].median(label, attr))
                        / (big - small))
            wall, cpu = slope("wall"), slope("controller_cpu")
            every = cpu + slope("host_cpu")
            base_wall = results[big].median(label, "wall") - wall * big
            base_cpu = results[big].median(label, "controller_cpu") - cpu * big
            print(f"| {label} | {wall:.3f} | {cpu:.3f} | {every:.3f} | "
                  f"{base_wall + 1000 * wall:.0f} / {base_cpu + 1000 * cpu:.0f} | "
                  f"{base_wall + 10000 * wall:.0f} / {base_cpu + 10000 * cpu:.0f} |")
        print()

    if fanout:
        one = statistics.median(s.wall for s in fanout[1])
        two = statistics.median(s.wall for s in fanout[2])
        cpu1 = statistics.median(s.controller_cpu for s in fanout[1])
        cpu2 = statistics.median(s.controller_cpu for s in fanout[2])
        print(f"Fan-out: no-change reconcile of {opts.fanout} hosts, 1 apply worker "
              f"{one:.2f} s (controller CPU {cpu1:.2f} s), 2 workers {two:.2f} s (controller "
              f"CPU {cpu2:.2f} s): ratio 2/1 {two / one:.2f} (goal < 1): "
              f"{'met' if two < one else 'NOT met'}")
        print()


if __name__ == "__main__":
    main()
