"""Benchmark: the status page's first load in headless chromium, 1,000 runs on 20 hosts.

The store is the one ``bench/api_metrics.py`` builds (``build``: written through
``Store.start_run`` / ``finish_run`` / ``set_status``); ``gitops.web.page.routes`` is served by a
real uvicorn on 127.0.0.1 (``gitops.web.server.start_in_thread``; loopback needs no token). Each
load launches Debian's chromium through Playwright as ``tests/test_page.py`` does (same
executable, same ``CHROMIUM_ARGS``, a fresh user data dir, so nothing is cached) and times
``page.goto(url)`` until the hosts grid shows all hosts (``tr[data-host]`` count == hosts): the
user-visible first load. The browser launch itself is not timed. ``/api/page`` alone is then
asked ``--requests`` times over HTTP after one warm-up. Goal: first load <= 1 s (median).

    python bench/page_load.py [--runs 1000] [--hosts 20] [--loads 7] [--requests 20]
                               [--no-results]
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from api_metrics import append_section, built_store, store_parser
from starlette.applications import Starlette

from gitops.web import page
from gitops.web.server import bound_port, start_in_thread, stop

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TESTS = Path(__file__).resolve().parent.parent / "tests"
GOAL_S = 1.0


def browser_launch() -> tuple[str, list[str]]:
    """The chromium executable and argument list of ``tests/test_page.py``, imported from it."""
    sys.path.insert(0, str(TESTS))
    try:
        from test_page import CHROMIUM, CHROMIUM_ARGS
    finally:
        sys.path.remove(str(TESTS))
    return CHROMIUM, list(CHROMIUM_ARGS)


def first_loads(url: str, hosts: int, loads: int) -> list[dict[str, float]]:
    """``loads`` first loads of ``url``, each in a newly launched browser with a fresh user
    data dir: wall seconds from ``page.goto`` to ``hosts`` grid rows, and the page's own
    navigation timings (ms since navigation start)."""
    from playwright.sync_api import sync_playwright

    chromium, args = browser_launch()
    results: list[dict[str, float]] = []
    with sync_playwright() as pw:
        for _ in range(loads):
            user_data = tempfile.mkdtemp(prefix="gitops-page-bench-chromium-")
            context = pw.chromium.launch_persistent_context(
                user_data, executable_path=chromium, headless=True, args=args,
                viewport={"width": 1280, "height": 900})
            try:
                p = context.new_page()
                p.set_default_timeout(30_000)
                errors: list[str] = []
                p.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                t = time.perf_counter()
                p.goto(url)
                p.wait_for_function(
                    "n => document.querySelectorAll('tr[data-host]').length === n", arg=hosts)
                wall = time.perf_counter() - t
                timing: Any = p.evaluate(
                    """() => {
                        const nav = performance.getEntriesByType('navigation')[0];
                        const api = performance.getEntriesByType('resource')
                            .find(r => r.name.includes('/api/page'));
                        return {rendered: performance.now(),
                                dcl: nav ? nav.domContentLoadedEventEnd : -1,
                                api_start: api ? api.startTime : -1,
                                api_end: api ? api.responseEnd : -1};
                    }""")
                if errors:
                    raise RuntimeError(f"page errors during load: {errors}")
                results.append({"wall_s": wall, **{k: float(v) for k, v in timing.items()}})
            finally:
                context.close()
                shutil.rmtree(user_data, ignore_errors=True)
    return results


def api_times(base: str, requests: int) -> tuple[list[float], int]:
    """Milliseconds of ``requests`` GETs of /api/page after one warm-up, each on a new
    connection; and the body's size in bytes."""
    times: list[float] = []
    headers = {"Connection": "close"}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        size = len(client.get("/api/page").raise_for_status().content)
        for _ in range(requests):
            t = time.perf_counter()
            client.get("/api/page").raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return times, size


def spread(values: list[float], fmt: str = ".0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = store_parser(__doc__)
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()

    with built_store(args) as (state_dir, built_s, size_mb):
        server, thread = start_in_thread(Starlette(routes=page.routes(state_dir, None)),
                                         "127.0.0.1:0")
        try:
            base = f"http://127.0.0.1:{bound_port(server)}"
            load_start = os.getloadavg()[0]
            loads = first_loads(f"{base}/", args.hosts, args.loads)
            api, api_bytes = api_times(base, args.requests)
        finally:
            stop(server, thread)

    wall_ms = [r["wall_s"] * 1000 for r in loads]
    rendered = [r["rendered"] for r in loads]
    dcl = [r["dcl"] for r in loads]
    api_in_page = [r["api_end"] - r["api_start"] for r in loads if r["api_start"] >= 0]
    median_s = statistics.median(wall_ms) / 1000
    verdict = "met" if median_s <= GOAL_S else "NOT met"
    cmd = (f"python bench/page_load.py --runs {args.runs} --hosts {args.hosts}"
           f" --loads {args.loads} --requests {args.requests}")
    lines = [
        f"### status page first load: {args.runs} recorded runs on {args.hosts} hosts,"
        f" headless chromium (Playwright), median of {args.loads} loads",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `{cmd}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_start:.2f}"
        f" at the start. Store written in {built_s:.1f} s through"
        f" Store.start_run/finish_run/set_status (bench/api_metrics.py `build`): {size_mb:.1f} MB;"
        f" /api/page body {api_bytes / 1000:.1f} kB. Each load: a newly launched /usr/bin/chromium"
        " with a fresh user data dir (no cache); the launch is not timed.",
        "",
        "| measure | median (min-max) ms | goal (ms) | |",
        "|---|---|---|---|",
        f"| first load: `page.goto` -> {args.hosts} `tr[data-host]` rows (wall) | "
        f"{spread(wall_ms)} | {GOAL_S * 1000:.0f} | {verdict} |",
        "| in page: navigation start -> rows seen (read just after the wait) | "
        f"{spread(rendered)} | | |",
        f"| in page: navigation start -> DOMContentLoaded end | {spread(dcl)} | | |",
    ]
    if api_in_page:
        lines.append(f"| in page: `/api/page` fetch (request start -> response end) | "
                     f"{spread(api_in_page)} | | |")
    lines += [
        f"| `/api/page` alone (httpx, new connection, {args.requests} requests) | "
        f"{spread(api, '.1f')} | | |",
        "",
        f"Loads (ms): {', '.join(f'{v:.0f}' for v in wall_ms)}",
        "",
        f"**page_load**: status page first load {median_s * 1000:.0f} ms (median of"
        f" {args.loads}, {args.runs} runs / {args.hosts} hosts, headless chromium), goal <= 1 s:"
        f" {verdict}; /api/page alone {statistics.median(api):.1f} ms"
        f" ({api_bytes / 1000:.1f} kB)",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_results:
        RESULTS.write_text(append_section(RESULTS.read_text() if RESULTS.exists() else "",
                                          "## page_load", report))


if __name__ == "__main__":
    main()
