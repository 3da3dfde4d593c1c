"""Soak: the daemon (``gitops run``) for an hour or more, its resources sampled every minute.

Run as root: ``python bench/soak.py [--minutes 65] [--commit-every 30] [--name ftsoak]
[--out /tmp/gitops-soak.md]``. Brings up a lab of 3 hosts (``--name``, default from
``$GITOPS_LAB_NAME``), builds a state repository from the committed sample aimed at it and
starts ``gitops run`` watching it (watch = true, interval 60 s, drift check every 60 s,
``[retention] snapshots = 5``, ``history_days = 0.02`` so the hourly history prune has
something to remove within the hour). A commit changing the motd lands every
``--commit-every`` seconds. Every ``--sample`` seconds (60) it records the daemon's VmRSS,
open file descriptors, threads, live descendant processes (and zombies among them), the
state folder's size, its snapshot count, the database's size and the runs recorded, and
appends the row to the table on stdout and to ``--out`` at once (a cut soak keeps its rows).

At the end: the growth per hour of each measure (least-squares slope over the samples after
the first ``--warmup`` minutes), against the goals of issue 15 (RSS under 5 MB per hour,
descriptors and processes flat, the state folder bounded by ``[retention]``), and whether the
daemon was alive throughout. The lab goes down after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import _common
from _common import Daemon, Out, descendants, free_port, fresh_work, lab_down, lab_up, make_repo


def git(repo: Path, *args: str) -> str:
    return _common.git(repo, *args, who="soak")


def commit_motd(repo: Path, tag: str) -> str:
    motd = repo / "deploys/base/templates/motd.j2"
    marker = "  soak: "
    lines = [ln for ln in motd.read_text().splitlines() if not ln.startswith(marker)]
    motd.write_text("\n".join([*lines, marker + tag]) + "\n")
    git(repo, "commit", "-q", "-am", f"soak {tag}")
    return git(repo, "rev-parse", "HEAD")


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def sample(pid: int, state_dir: Path, start: float) -> dict[str, float]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    kids = descendants(pid)
    runs = 0
    db_path = state_dir / "gitops.db"
    if db_path.exists():
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            runs = int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
            db.close()
    snaps = state_dir / "snapshots"
    return {
        "minute": (time.monotonic() - start) / 60,
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "children": len(kids),
        "zombies": sum(1 for p in kids if p.state == "Z"),
        "state_mb": folder_bytes(state_dir) / 2**20,
        "snapshots": len(list(snaps.iterdir())) if snaps.is_dir() else 0,
        "db_mb": sum(folder_bytes(p) if p.is_dir() else p.stat().st_size
                     for p in state_dir.glob("gitops.db*")) / 2**20,
        "runs": runs,
    }


COLUMNS = [("minute", "min", "{:.0f}"), ("rss_mb", "VmRSS (MB)", "{:.1f}"),
           ("fds", "open fds", "{:.0f}"), ("threads", "threads", "{:.0f}"),
           ("children", "child processes", "{:.0f}"), ("zombies", "zombies", "{:.0f}"),
           ("state_mb", "state folder (MB)", "{:.2f}"), ("snapshots", "snapshots", "{:.0f}"),
           ("db_mb", "database (MB)", "{:.2f}"), ("runs", "runs in the record", "{:.0f}"),
           ("commits", "commits made", "{:.0f}")]


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (minutes), per hour."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return 0.0 if den == 0 else 60 * num / den


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_name = (os.environ.get("GITOPS_LAB_NAME", "soak")[:2] + "soak")[:8]
    parser.add_argument("--name", default=default_name, help="the lab (<= 8 characters)")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=65)
    parser.add_argument("--commit-every", type=float, default=30)
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=5,
                        help="minutes left out of the growth figures (first rollout, caches)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gitops-soak.md"))
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")
    out = Out(opts.out)
    work = fresh_work(opts.name)
    out.start("soak: the daemon for an hour, sampled every minute",
              "python bench/soak.py " + " ".join(sys.argv[1:]))

    info = lab_up(opts.name, opts.hosts)
    daemon: Daemon | None = None
    stop = threading.Event()
    commits = [0]
    try:
        repo = make_repo(info, work / "repo")
        state_dir = work / "state"
        port = free_port()
        config = work / "gitops.toml"
        config.write_text(
            f'state_dir = "{state_dir}"\n'
            f'listen = "127.0.0.1:{port}"\n'
            "[retention]\n"
            "snapshots = 5\n"
            "history_days = 0.02\n"
            "[[environments]]\n"
            'name = "lab"\n'
            f'repo = "{repo}"\n'
            "interval = 60\n"
            "drift_interval = 60\n"
            "watch = true\n"
        )
        log = work / "daemon.log"
        daemon = Daemon(config, port, log, cwd=work)
        try:
            daemon.start(timeout=120, step=0.5)
        except RuntimeError as exc:
            sys.exit(str(exc))
        proc = daemon.proc
        assert proc is not None
        out(f"Lab `{opts.name}` ({opts.hosts} hosts), daemon pid {proc.pid}, a commit every "
            f"{opts.commit_every:g} s, interval 60 s, drift_interval 60 s, retention "
            "snapshots = 5, history_days = 0.02 (29 min; the history is pruned hourly). "
            f"Log: {log}.")
        out()

        def committer() -> None:
            while not stop.wait(opts.commit_every):
                try:
                    commit_motd(repo, f"{commits[0]} {datetime.now(UTC):%H:%M:%S}")
                    commits[0] += 1
                except subprocess.CalledProcessError as exc:
                    print(f"commit failed: {exc}", file=sys.stderr, flush=True)

        threading.Thread(target=committer, daemon=True).start()
        out("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
        out("|" + "---|" * len(COLUMNS))
        start = time.monotonic()
        rows: list[dict[str, float]] = []
        alive = True
        while True:
            if proc.poll() is not None:
                alive = False
                out(f"\nthe daemon exited {proc.returncode} at minute "
                    f"{(time.monotonic() - start) / 60:.1f}; see {log}")
                break
            row = sample(proc.pid, state_dir, start)
            row["commits"] = commits[0]
            rows.append(row)
            out("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
            if row["minute"] >= opts.minutes:
                break
            time.sleep(max(0.0, start + len(rows) * opts.sample - time.monotonic()))
        stop.set()
        report(out, rows, opts, alive)
    finally:
        stop.set()
        if daemon is not None:
            daemon.stop()
        with contextlib.suppress(Exception):
            lab_down(opts.name)


def report(out: Out, rows: list[dict[str, float]], opts: argparse.Namespace,
           alive: bool) -> None:
    steady = [r for r in rows if r["minute"] >= opts.warmup] or rows
    xs = [r["minute"] for r in steady]
    out()
    out(f"Growth per hour (least-squares slope over the {len(steady)} samples from minute "
        f"{opts.warmup:g} to {xs[-1]:.0f}), and the range seen over those samples:")
    out()
    out("| measure | growth per hour | min | max | goal |")
    out("|---|---|---|---|---|")
    goals = {"rss_mb": "< 5 MB per hour", "fds": "flat", "threads": "flat",
             "children": "flat", "zombies": "0",
             "state_mb": "bounded by [retention]", "snapshots": "<= 5 + in use",
             "db_mb": "bounded by history_days", "runs": ""}
    slopes = {}
    for key, title, fmt in COLUMNS:
        if key in ("minute", "commits"):
            continue
        ys = [r[key] for r in steady]
        slopes[key] = slope_per_hour(xs, ys)
        out(f"| {title} | {slopes[key]:+.2f} | {fmt.format(min(ys))} | {fmt.format(max(ys))} "
            f"| {goals.get(key, '')} |")
    out()
    last = steady[-1]
    out(f"**soak**: {last['minute']:.0f} min, {last['commits']:.0f} commits, "
        f"{last['runs']:.0f} runs in the record; RSS {slopes['rss_mb']:+.2f} MB/h "
        f"({'met' if slopes['rss_mb'] < 5 else 'NOT met'}); open fds "
        f"{min(r['fds'] for r in steady):.0f}-{max(r['fds'] for r in steady):.0f}; threads "
        f"{min(r['threads'] for r in steady):.0f}-{max(r['threads'] for r in steady):.0f}; "
        f"child processes {min(r['children'] for r in steady):.0f}-"
        f"{max(r['children'] for r in steady):.0f}, zombies max "
        f"{max(r['zombies'] for r in steady):.0f}; snapshots max "
        f"{max(r['snapshots'] for r in steady):.0f}; state folder "
        f"{min(r['state_mb'] for r in steady):.2f}-{max(r['state_mb'] for r in steady):.2f} MB; "
        f"daemon {'alive throughout' if alive else 'EXITED'}")


if __name__ == "__main__":
    main()
