"""Where a no-change apply and verify spend a host's processes: every remote command, grouped.

Run as root: ``python bench/commands.py [--name phcmd] [--hosts 3] [--profile FILE]``. Brings
up lab NAME, converges the sample there (``gitops.pipeline.apply.apply``), then runs one no-change
apply and one verify in this process (``gitops.workers.apply_worker.run``,
``gitops.workers.verify_worker.run``: the same code the workers run) with each remote command
bracketed by two readings of the host's PID counter (``read`` of
``/proc/sys/kernel/ns_last_pid``, a shell builtin: it starts nothing). Prints, per fact (or
"operation" for an operation's command, "check" for a verify's), how many commands ran, how
many of them ran in the shell itself, and the processes they started on the first host;
then the processes each whole stage started (its PID counter over SSH, before and after,
so the SSH session's own processes are in it).

With ``--profile FILE`` the apply runs under cProfile and the 30 functions with the most own
time are written to FILE (the controller's CPU per host, read from the inside).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import header, load_state, require_root, sample_on_lab

from gitops.pipeline.apply import apply

PROBE = "read _ _ _ _ __gitops_pid </proc/loadavg; echo $__gitops_pid"


def _last_pid(ssh_config: Path, host: str) -> int:
    out = subprocess.run(["ssh", "-F", str(ssh_config), host, "cat /proc/sys/kernel/ns_last_pid"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return int(out)


class Counts:
    """label -> [commands, in the shell itself, processes started], for one host."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(self, label: str, direct: bool, started: int) -> None:
        row = self.rows[label]
        row[0] += 1
        row[1] += int(direct)
        row[2] += started

    def print(self, title: str) -> None:
        print(f"{title}:")
        print()
        print("| fact / command | commands | in the shell itself | processes started |")
        print("|---|---|---|---|")
        for label, (n, direct, started) in sorted(self.rows.items(), key=lambda kv: -kv[1][2]):
            print(f"| {label} | {n} | {direct} | {started} |")
        total = [sum(r[i] for r in self.rows.values()) for i in range(3)]
        print(f"| all | {total[0]} | {total[1]} | {total[2]} |")
        print()


def counted_apply(state: Any, first: str, profile: Path | None) -> Counts:
    from gitops.workers import apply_worker, connector

    counts = Counts()
    original = connector.ShellConnector._run

    def probe(self: Any) -> int:
        _code, output = original(self, PROBE, None)
        return int([line.line for line in output if line.buffer_name == "stdout"][-1])

    def run(self: Any, script: str, timeout: float | None) -> Any:
        if self.host.name != first:
            return original(self, script, timeout)
        before = probe(self)
        result = original(self, script, timeout)
        started = probe(self) - before
        fact = self.reading_fact
        counts.add(fact.__name__ if fact is not None else "operation",
                   script.startswith("{ hash -r;"), started)
        return result

    connector.ShellConnector._run = run  # type: ignore[method-assign]
    try:
        job = apply_worker.Job(state=state, dry=False)
        if profile is None:
            result = apply_worker.run(job)
        else:
            prof = cProfile.Profile()
            result = prof.runcall(apply_worker.run, job)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
            profile.write_text(text.getvalue())
    finally:
        connector.ShellConnector._run = original  # type: ignore[method-assign]
    assert result.apply is not None
    changed = result.apply.changed
    if changed or result.apply.failed_hosts:
        sys.exit(f"the apply was not a no-change one: {changed} change(s), failed "
                 f"{result.apply.failed_hosts}")
    return counts


def counted_verify(state: Any, first: str) -> Counts:
    from gitops.workers import verify_worker
    from gitops.workers.verify_shell import ShellBackend, in_shell
    from gitops.workers.verify_ssh import ssh_alias

    counts = Counts()
    original = ShellBackend._run

    def probe(self: Any) -> int:
        return int(original(self, PROBE).stdout.split()[-1])

    def run(self: Any, cmd: str) -> Any:
        if self.host.name != ssh_alias(first, 0):
            return original(self, cmd)
        before = probe(self)
        result = original(self, cmd)
        started = probe(self) - before - 1  # the second probe's own subshell
        counts.add("check: " + cmd.split()[0][:40], in_shell(cmd), started)
        return result

    ShellBackend._run = run  # type: ignore[method-assign]
    try:
        report = verify_worker.run(state, lambda _line: None, None)
    finally:
        ShellBackend._run = original  # type: ignore[method-assign]
    if not report.ok:
        sys.exit(f"the verify failed: {report.failed_hosts}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="phcmd")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--profile", type=Path)
    opts = parser.parse_args()
    require_root()
    header("commands: a no-change apply and verify of the sample, command by command",
           f"python bench/commands.py --name {opts.name} --hosts {opts.hosts}")
    with sample_on_lab(opts.name, opts.hosts) as (info, _work, repo, state):
        _plan, report = apply(state)
        if report.failed_hosts:
            sys.exit(f"converging failed: {report.failed_hosts}")
        state = load_state(repo)
        first = state.hosts[0].name
        before = _last_pid(info.ssh_config, first)
        applied = counted_apply(state, first, opts.profile)
        middle = _last_pid(info.ssh_config, first)
        verified = counted_verify(state, first)
        after = _last_pid(info.ssh_config, first)
        applied.print(f"No-change apply, host {first}")
        verified.print(f"Verify, host {first}")
        probes = 2 * sum(r[0] for r in verified.rows.values())  # a subshell each
        print(f"Processes started on {first} by the whole stage (its PID counter over SSH, "
              f"less the reading's own session and the probes): apply {middle - before - 1}, "
              f"verify {after - middle - 1 - probes}")
        print()
    if opts.profile:
        print(f"Profile of the apply (own time): {opts.profile}")


if __name__ == "__main__":
    main()
