"""Benchmark: N runs of the apply and verify workers, warm (forked from a server) vs fresh.

Each side runs in a process of its own (``--side``), which runs N jobs one after another
through ``gitops.pipeline.worker.run_worker``, as a reconcile's stages do: warm, each job a child
of the module's server (``gitops.pipeline.warm``), whose start is waited for before the jobs and
reported apart (once per controller process); fresh, each job a ``python -m`` of its own
(``GITOPS_WARM_WORKERS=0``). The job: a plan (apply worker, dry run) or a verify of the sample
with one host on a closed loopback port, so each run is mostly the worker's fixed cost (start,
imports, the deploy files or checks), which is what warm workers remove. No lab needed.

CPU is the controller's: the side process's own and its workers' (``getrusage`` of the
reaped children; warm, the server's, with the children it reaped, once it ended, less its
start, read from ``/proc/<server>/stat`` when it was ready). Rounds alternate the sides; the
figures are medians over the rounds of the per-run means.

    python bench/warm_workers.py [--runs 10] [--rounds 3] [--no-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, save_section

WORKERS = {"apply": "gitops.workers.apply_worker", "verify": "gitops.workers.verify_worker"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _repo(root: Path) -> Path:
    """The sample's deploys and inventory, its one host on a closed loopback port."""
    shutil.copytree(ROOT / "deploys", root / "deploys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    inventory = yaml.safe_load((ROOT / "inventories/lab.yml").read_text())
    inventory["settings"] = {"ssh": {"user": "root", "port": _closed_port(),
                                     "connect_timeout": 2}}
    inventory["hosts"] = {"web-1": {"address": "127.0.0.1", "groups": ["web"]}}
    (root / "inventories").mkdir()
    (root / "inventories/lab.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    return root


def _server_cpu(pid: int) -> float:
    """A process's CPU seconds, with its reaped children's (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def side(kind: str, worker: str, runs: int, repo: Path) -> dict[str, Any]:
    """Run ``runs`` jobs of ``worker`` (warm or fresh) in this process; what they cost."""
    from gitops.pipeline import apply, warm
    from gitops.pipeline.load import load
    from gitops.pipeline.worker import run_worker

    state = load(repo, "lab")
    job = (apply.job(state, dry=True, diff=True) if worker == "apply"
           else json.dumps({"state": state.model_dump(mode="json"), "control_dir": None}))
    module = WORKERS[worker]
    start_wall = start_cpu = 0.0
    before = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    if kind == "warm":
        began = time.perf_counter()
        server = warm.ready(module)
        if server is None:
            sys.exit("the warm server did not start")
        start_wall, start_cpu = time.perf_counter() - began, _server_cpu(server)
    walls = []
    for _ in range(runs):
        began = time.perf_counter()
        run_worker(module, job, timeout=300)
        walls.append(time.perf_counter() - began)
    warm.shutdown()  # the server reaps its children, then ends and is reaped: all counted
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - before - start_cpu
    return {"wall": statistics.mean(walls), "cpu": cpu / runs, "start_wall": start_wall,
            "start_cpu": start_cpu}


def _run_side(kind: str, worker: str, runs: int, repo: Path) -> dict[str, Any]:
    env = {**os.environ, "GITOPS_WARM_WORKERS": "1" if kind == "warm" else "0"}
    proc = subprocess.run([sys.executable, __file__, "--side", kind, "--worker", worker,
                           "--runs", str(runs), "--repo", str(repo)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{kind} {worker} exited {proc.returncode}: {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="jobs per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-results", action="store_true",
                        help="do not write the section of bench/RESULTS.md")
    parser.add_argument("--side", choices=["warm", "fresh"], help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.worker, args.runs, args.repo)))
        return
    started, load_avg = datetime.now(UTC), os.getloadavg()[0]
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="gitops-bench-warm-") as tmp:
        repo = _repo(Path(tmp) / "repo")
        for _ in range(args.rounds):
            for worker in WORKERS:
                for kind in ("fresh", "warm"):
                    got.setdefault((worker, kind), []).append(
                        _run_side(kind, worker, args.runs, repo))

    def med(worker: str, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in got[(worker, kind)])

    rows = ["| worker | fresh: wall per run | warm | ratio | fresh: controller CPU per run "
            "| warm | ratio | warm server's start, once (wall, CPU) |",
            "|---|---|---|---|---|---|---|---|"]
    for worker in WORKERS:
        fw, ww = med(worker, "fresh", "wall"), med(worker, "warm", "wall")
        fc, wc = med(worker, "fresh", "cpu"), med(worker, "warm", "cpu")
        rows.append(f"| {worker} | {fw:.3f} s | {ww:.3f} s | {ww / fw:.2f} | {fc:.3f} s "
                    f"| {wc:.3f} s | {wc / fc:.2f} | {med(worker, 'warm', 'start_wall'):.2f} s, "
                    f"{med(worker, 'warm', 'start_cpu'):.2f} s |")
    summary = (f"**warm_workers**: {args.runs} runs per side and round, medians of "
               f"{args.rounds} rounds; per run, warm vs fresh: apply "
               f"{med('apply', 'warm', 'cpu'):.3f} vs {med('apply', 'fresh', 'cpu'):.3f} CPU-s, "
               f"verify {med('verify', 'warm', 'cpu'):.3f} vs "
               f"{med('verify', 'fresh', 'cpu'):.3f} CPU-s")
    text = "\n".join([
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Command: `python bench/warm_workers.py --runs "
        f"{args.runs} --rounds {args.rounds}`", "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_avg:.2f} "
        "at the start", "",
        "Each run: a plan (apply worker) or a verify (verify worker) of the sample with one "
        "host on a closed loopback port, through `run_worker`, one after another.", "",
        *rows, "", summary])
    print(text)
    if not args.no_results:
        save_section("warm_workers", text)


if __name__ == "__main__":
    main()
