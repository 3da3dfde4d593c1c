"""Benchmark: how long a promotion waits after staging verifies (issue 12, "Speed").

Run as root: ``python bench/promotion.py [--commits 5] [--interval 30] [--name probnch]``.
Brings up a lab of 2 hosts (staging: the first, production: the second), a state repository
with one small ``probe`` service in two inventories, and a real ``gitops run`` watching it
(production ``promote_from = "staging"``, both polling every INTERVAL seconds). For each of
COMMITS commits it waits until production verified it and reads from the store:

- the wait: production's run of the commit started minus the moment staging's run recorded
  it verified on every host (``verified_revisions``). Goal: at most one poll interval;
- the stages: commit -> verified on staging, verified on staging -> verified on production.

Prints the figures (seconds) and takes the lab down.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import yaml
from _common import (
    free_port,
    header,
    lab_down,
    lab_up,
    median,
    print_table,
    require_root,
    write_probe,
)

from gitops.record.store import NoStore, Store, StoreOutdated


def git(repo: Path, *args: str) -> str:
    return _common.git(repo, *args)


def commit(repo: Path, lab_name: str, hosts: dict[str, str], value: str) -> str:
    for env, host in hosts.items():
        inventory = {"settings": {"source": "lab", "lab": lab_name},
                     "groups": {"probe": {"services": {"probe": {"value": value}}}},
                     "hosts": {host: {"groups": ["probe"]}}}
        (repo / f"inventories/{env}.yml").write_text(yaml.safe_dump(inventory))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"probe: {value}")
    return git(repo, "rev-parse", "HEAD")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--name", default="probnch", help="the lab's name (at most 8 chars)")
    args = parser.parse_args()
    require_root()
    header("promotion: the wait after staging verifies",
           f"python bench/promotion.py --commits {args.commits} --interval {args.interval:g}")
    info = lab_up(args.name, 2)
    proc: subprocess.Popen[bytes] | None = None
    try:
        root = Path(tempfile.mkdtemp(prefix="gitops-bench-promotion-"))
        repo, state = root / "repo", root / "state"
        write_probe(repo, exact=False)  # its values are "ok 1", "ok 2"...
        (repo / "inventories").mkdir()
        git(repo, "init", "-q", "-b", "main")
        hosts = {"staging": info.hosts[0].name, "production": info.hosts[1].name}
        config = root / "gitops.toml"
        envs = "".join(
            f'[[environments]]\nname = "{env}"\nrepo = "{repo}"\ninterval = {args.interval}\n'
            f"jitter = 0\ndrift_interval = 86400\n"
            + ('promote_from = "staging"\n' if env == "production" else "")
            for env in hosts)
        config.write_text(f'state_dir = "{state}"\nlisten = "127.0.0.1:{free_port()}"\n{envs}')
        shas = [commit(repo, info.name, hosts, "ok 0")]
        proc = subprocess.Popen([sys.executable, "-m", "gitops", "run"],
                                stdout=subprocess.DEVNULL,
                                stderr=(root / "daemon.log").open("ab"),
                                env={**os.environ, "GITOPS_CONFIG": str(config)})
        figures: dict[str, list[float]] = {"promotion wait (production run start - staging "
                                           "verified)": [],
                                           "commit -> verified on staging": [],
                                           "verified on staging -> verified on production": []}
        for n in range(args.commits + 1):
            sha = shas[-1]
            deadline = time.monotonic() + 600
            while True:
                try:
                    with Store(state, readonly=True) as store:
                        done = {v.environment: v for v in store.verified_revisions()
                                if v.sha == sha}
                        runs = [r for r in store.history("production", 50)
                                if r.sha == sha and not r.event]
                except (NoStore, StoreOutdated):  # the daemon has not made it yet
                    done, runs = {}, []
                if "production" in done and "staging" in done and runs:
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"commit {sha[:10]} did not reach production (see "
                             f"{root / 'daemon.log'})")
                time.sleep(0.2)
            if n:  # the first commit also waits for the first converge: left out
                started = min(r.started_at for r in runs)
                staging, production = done["staging"], done["production"]
                figures["promotion wait (production run start - staging verified)"].append(
                    (started - staging.verified_at).total_seconds())
                figures["commit -> verified on staging"].append(
                    (staging.verified_at - staging.committed_at).total_seconds())
                figures["verified on staging -> verified on production"].append(
                    (production.verified_at - staging.verified_at).total_seconds())
            if n < args.commits:
                time.sleep(1.1)  # commit times have a resolution of a second
                shas.append(commit(repo, info.name, hosts, f"ok {n + 1}"))
        print_table(figures)
        wait = median(figures["promotion wait (production run start - staging verified)"])
        print(f"Promotion wait, median {wait:.2f} s against a poll interval of "
              f"{args.interval:g} s: goal (at most one poll interval) "
              f"{'met' if wait <= args.interval else 'NOT met'}.")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)
        lab_down(args.name)


if __name__ == "__main__":
    main()
