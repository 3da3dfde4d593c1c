"""Benchmark: /metrics and the status API over a store of 1,000 recorded runs on 20 hosts.

The store is written through ``Store.start_run`` / ``finish_run`` / ``set_status`` with reports
built from ``gitops.records`` (each rollout: 20 hosts, 8 operations and 6 checks a host; one run
in four a drift check; one rollout in ten failing on a host), then served by a real uvicorn on
127.0.0.1 (``gitops.web.server.start_in_thread`` over ``metrics.routes``). Each endpoint is asked
20 times after one warm-up request; the medians are compared with the goal (50 ms for /metrics
and the status endpoints; 200 ms for the 90-day delivery metrics).

    python bench/api_metrics.py [--runs 1000] [--hosts 20] [--requests 20] [--no-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    OpResult,
    Revision,
    RunKind,
    VerifyReport,
)
from gitops.web.metrics import routes
from gitops.web.server import bound_port, start_in_thread, stop

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SERVICES = {"base": ("packages", "sshd"), "app": ("unit", "port"), "web": ("http", "config")}
OPS = ("apt packages", "sshd config", "user", "app unit", "app env", "nginx", "site", "reload")
GOAL_MS = {"/metrics": 50.0, "/api/hosts": 50.0, "/api/environments": 50.0,
           "/api/delivery": 200.0}


def build(state_dir: Path, runs: int, hosts: int, seed: int = 5) -> None:
    """Record ``runs`` runs of environment ``prod`` on ``hosts`` hosts, as the daemon would."""
    rnd = random.Random(seed)
    names = [f"host{i:02d}" for i in range(1, hosts + 1)]
    start = datetime.now(UTC) - timedelta(days=80)
    sha = f"{rnd.getrandbits(160):040x}"
    with Store(state_dir) as store:
        for n in range(runs):
            drift = n % 4 == 3
            if not drift:
                sha = f"{rnd.getrandbits(160):040x}"
            revision = Revision(sha=sha, branch="main", author="Dev <dev@example.org>",
                                committed_at=start + timedelta(hours=2 * n),
                                message=f"change {n}")
            kind: RunKind = "verify" if drift else "reconcile"
            run_id = store.start_run("prod", kind, revision, actor="gitops-daemon",
                                     reason="drift check" if drift else "poll")
            bad = rnd.choice(names) if rnd.random() < 0.1 else None
            apply = None if drift else ApplyReport(hosts=tuple(
                HostApply(host=h, status="ok", duration_s=rnd.uniform(2, 6), ops=tuple(
                    OpResult(name=op, service=None, status=rnd.choice(("changed",
                                                                       "unchanged")))
                    for op in OPS)) for h in names))
            verify = VerifyReport(results=tuple(
                CheckResult(host=h, service=service, check=check,
                            status="fail" if (h == bad and check == "http") else "pass",
                            message="HTTP 502" if (h == bad and check == "http") else "",
                            duration_s=rnd.uniform(0.05, 0.5))
                for h in names for service, checks in SERVICES.items() for check in checks))
            stages = {"source+load": rnd.uniform(0.3, 1.5), "verify": rnd.uniform(3, 12)}
            if not drift:
                stages["plan+apply"] = rnd.uniform(8, 60)
            store.finish_run(run_id, "failed" if bad else "succeeded", apply=apply,
                             verify=verify, stage_s=stages)
            ref = f"main@sha1:{sha}"
            for h in names:
                ok = h != bad
                store.set_status("prod", h, [Condition(
                    "Ready", "True" if ok else "False",
                    "ReconciliationSucceeded" if ok else "VerificationFailed",
                    f"applied and verified {ref}" if ok else "failed checks: web/http")],
                    applied=ref if ok and not drift else None, verified=ref if ok else None)
            store.set_status("prod", ENVIRONMENT, [Condition(
                "Ready", "False" if bad else "True",
                "ReconciliationFailed" if bad else "ReconciliationSucceeded", ref)],
                applied=ref if not bad and not drift else None)
            if bad and not drift:
                store.quarantine("prod", sha, f"verification failed on {bad}")


async def trivial(request: Request) -> Response:
    """A route that reads nothing: the HTTP transport's own floor."""
    return JSONResponse([])


def measure(base: str, path: str, requests: int, *, keep_alive: bool) -> list[float]:
    """Milliseconds of ``requests`` GETs of ``path`` after one warm-up: on one keep-alive
    connection, or each on a new connection (``Connection: close``)."""
    times: list[float] = []
    headers = {} if keep_alive else {"Connection": "close"}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        client.get(path).raise_for_status()
        for _ in range(requests):
            t = time.perf_counter()
            client.get(path).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return times


def delivery_uncached(state_dir: Path, rounds: int = 5) -> float | None:
    """Median milliseconds of ``gitops.report.delivery.delivery_metrics`` over 90 days (the API and
    /metrics reuse its result for a minute); None if that module is not there."""
    try:
        from gitops.report.delivery import delivery_metrics
    except ImportError:
        return None
    times = []
    with Store(state_dir) as store:
        for _ in range(rounds):
            t = time.perf_counter()
            delivery_metrics(store, days=90)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def store_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the benchmarks over a built store (this one and page_load.py)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    return parser


@contextmanager
def built_store(args: argparse.Namespace) -> Iterator[tuple[Path, float, float]]:
    """A temporary state folder with ``build``'s history: (folder, seconds, size in MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp)
        t = time.perf_counter()
        build(state_dir, args.runs, args.hosts)
        built_s = time.perf_counter() - t
        yield state_dir, built_s, (state_dir / "gitops.db").stat().st_size / 1e6


def main() -> None:
    args = store_parser(__doc__).parse_args()

    with built_store(args) as (state_dir, built_s, size_mb):
        paths = ["/metrics", "/api/hosts", "/api/environments", "/api/runs?limit=20",
                 f"/api/runs/{max(1, args.runs // 2)}", "/api/delivery"]
        app = Starlette(routes=[*routes(state_dir, None),
                                Route("/api/trivial", trivial, methods=["GET"])])
        server, thread = start_in_thread(app, "127.0.0.1:0")
        try:
            base = f"http://127.0.0.1:{bound_port(server)}"
            fresh = {p: measure(base, p, args.requests, keep_alive=False) for p in paths}
            kept = {p: measure(base, p, args.requests, keep_alive=True)
                    for p in [*paths, "/api/trivial"]}
            metrics_bytes = len(httpx.get(f"{base}/metrics", timeout=30).content)
        finally:
            stop(server, thread)
        cold = delivery_uncached(state_dir)

    load = os.getloadavg()[0]
    lines = [
        f"### /metrics and status API: {args.runs} recorded runs on {args.hosts} hosts, "
        f"median of {args.requests} requests (uvicorn on 127.0.0.1)",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `python bench/api_metrics.py"
        f" --runs {args.runs} --hosts {args.hosts} --requests {args.requests}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load:.2f}."
        f" Store written in {built_s:.1f} s through Store.start_run/finish_run/set_status:"
        f" {size_mb:.1f} MB; /metrics body {metrics_bytes / 1000:.1f} kB.",
        "",
        "| endpoint | new connection: median (min-max) ms | keep-alive: median (min-max) ms"
        " | goal (ms) | new connection |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for path in kept:
        goal = GOAL_MS.get(path.split("?")[0])
        cells = []
        for times in (fresh.get(path), kept[path]):
            cells.append("" if times is None else
                         f"{statistics.median(times):.1f} ({min(times):.1f}-{max(times):.1f})")
        verdict = ""
        if goal is not None:
            median = statistics.median(fresh[path])
            verdict = "met" if median <= goal else "**not met**"
            verdicts.append(f"{path} {median:.1f} ms ({verdict.strip('*')})")
        lines.append(f"| `{path}` | {cells[0]} | {cells[1]} | "
                     f"{'' if goal is None else f'{goal:.0f}'} | {verdict} |")
    cold_note = "" if cold is None else (
        f"; delivery_metrics (90 days, uncached, in-process) {cold:.1f} ms"
        f" ({'met' if cold <= GOAL_MS['/api/delivery'] else 'not met'})")
    lines += ["", f"**api_metrics** (new connection per request): {'; '.join(verdicts)}"
              f"{cold_note}", ""]
    report = "\n".join(lines)
    print(report)
    if not args.no_results:
        RESULTS.write_text(append_section(RESULTS.read_text() if RESULTS.exists() else "",
                                          "## api_metrics", report))


def append_section(text: str, heading: str, report: str) -> str:
    """``text`` with ``report`` at the end of its ``heading`` section (created at the end)."""
    if heading + "\n" not in text:
        return text.rstrip("\n") + f"\n\n{heading}\n\n{report}"
    start = text.index(heading + "\n") + len(heading)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end
    return text[:end].rstrip("\n") + "\n\n" + report.rstrip("\n") + "\n" + text[end:]


if __name__ == "__main__":
    main()
