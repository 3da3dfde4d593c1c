"""Benchmark: what 200 concurrent status-page requests cost the daemon's HTTP server, this
checkout vs a base commit.

The store is the one ``bench/api_metrics.py`` builds (``--runs`` runs on ``--hosts`` hosts,
written through ``Store``). Each side serves it from its own process: this venv's Python with
``PYTHONPATH`` at the side's checkout (the base commit, default ``aa0b275``, checked out into a
temporary ``git worktree``), ``gitops.web.server.create_app`` over a controller whose ``health``
is the daemon's in-memory answer, with ``gitops.web.page.routes`` added as ``gitops run`` does,
started by ``gitops.web.server.start_in_thread`` (each side's own uvicorn settings) on 127.0.0.1.
Loopback needs no token: the requests are unauthenticated.

Two bursts per side, each after one warm-up request: ``--burst`` requests of ``/api/page``
at once from one client address (127.0.0.1), and one request each from ``--burst`` client
addresses (127.0.0.2, 127.0.0.3, ...: distinct hosts to the server). Meanwhile a prober
process at 127.0.0.250 asks ``/healthz`` every 50 ms (from before the burst to its end).
Figures: the server's CPU seconds over the burst (``/proc/<pid>/stat``), the wall time to
the last answer, p50/p99 of the page answers with status 200, how many got 200 / 429 / 503
/ failed, /healthz p99 and worst, the server's RSS before and after the burst and its peak
(VmHWM). Last, each side's ``/api/page`` size with a suspension reason of 1 MiB written into
the record.

    python bench/web_load.py [--base REV] [--runs 1000] [--hosts 20] [--burst 200]
                             [--no-results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _common import save_section
from api_metrics import build

from gitops.record.store import Store

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

SERVER = '''
import sys
from pathlib import Path
from gitops.web import page
from gitops.web.server import bound_port, create_app, start_in_thread
from gitops.settings import Settings

class Controller:
    def environments(self): return []
    def trigger(self, environment, *, reason, actor, force=False): return True
    def operate(self, environment, action, **options): return {}
    def health(self): return {"status": "ok", "controller": "bench", "environments": {}}
    def status(self): return []

state = Path(sys.argv[1])
app = create_app(Controller(), Settings(environments=[], state_dir=state),
                 extra_routes=page.routes(state, None))
server, thread = start_in_thread(app, "127.0.0.1:0")
print(bound_port(server), flush=True)
sys.stdin.read()
'''

PROBER = '''
import json, sys, threading, time
import httpx
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
took = []
with httpx.Client(base_url=sys.argv[1], timeout=300,
                  transport=httpx.HTTPTransport(local_address="127.0.0.250")) as client:
    while not stop.is_set():
        t = time.perf_counter()
        client.get("/healthz").raise_for_status()
        took.append(time.perf_counter() - t)
        stop.wait(0.05)
print(json.dumps(took), flush=True)
'''


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


class Server:
    """One side's server process: its port, CPU seconds and memory."""

    def __init__(self, checkout: Path, state: Path, script: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
        env["PYTHONPATH"] = str(checkout)
        env["GITOPS_CONFIG"] = str(state / "absent.toml")
        self.proc = subprocess.Popen([sys.executable, str(script), str(state)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def memory(self, key: str) -> float:
        """``VmRSS`` or ``VmHWM`` in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@dataclass
class Burst:
    cpu_s: float
    wall_s: float
    page_s: list[float]
    codes: dict[str, int]
    health_s: list[float]
    rss_before: float
    rss_after: float
    rss_peak: float
    page_bytes: int


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered \
        else float("nan")


async def _burst(server: Server, count: int, spread: bool, prober_script: Path) -> Burst:
    sources = [f"127.0.0.{2 + i % 240}" if spread else "127.0.0.1" for i in range(count)]
    clients = {s: httpx.AsyncClient(base_url=server.url, timeout=300, transport=(
        httpx.AsyncHTTPTransport(local_address=s, limits=httpx.Limits(
            max_connections=count, max_keepalive_connections=0))))
        for s in set(sources)}
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as warmer:
        warm = await warmer.get("/api/page")
    rss_before = server.memory("VmRSS")
    prober = subprocess.Popen([sys.executable, str(prober_script), server.url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def one(source: str) -> tuple[str, float]:
        t = time.perf_counter()
        try:
            answer = await clients[source].get("/api/page")
        except httpx.HTTPError as exc:
            return type(exc).__name__, time.perf_counter() - t
        return str(answer.status_code), time.perf_counter() - t

    await asyncio.sleep(0.5)  # the prober started
    cpu0, t0 = server.cpu(), time.perf_counter()
    results = await asyncio.gather(*(one(s) for s in sources))
    wall, cpu = time.perf_counter() - t0, server.cpu() - cpu0
    out, _ = prober.communicate("", timeout=300)
    health: list[float] = json.loads(out)
    for c in clients.values():
        await c.aclose()
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    return Burst(cpu, wall, [s for code, s in results if code == "200"], codes, health,
                 rss_before, server.memory("VmRSS"), server.memory("VmHWM"), len(warm.content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="aa0b275", help="commit to compare with")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--no-results", action="store_true",
                        help="do not write the section of bench/RESULTS.md")
    args = parser.parse_args()
    base_sha = _git("rev-parse", "--short", f"{args.base}^{{commit}}")
    head_sha = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "gitops") else ""
    started = datetime.now(UTC)
    load_avg = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="web-load-"))
    base = tmp / "base"
    _git("worktree", "add", "--detach", "-q", str(base), base_sha)
    results: dict[tuple[str, str], Burst] = {}
    huge: dict[str, int] = {}
    try:
        script, prober = tmp / "server.py", tmp / "prober.py"
        script.write_text(SERVER)
        prober.write_text(PROBER)
        state = tmp / "state"
        build(state, args.runs, args.hosts)
        sides = {"base": base, "this": ROOT}
        for kind in ("one client", "distinct clients"):
            for name, checkout in sides.items():
                server = Server(checkout, state, script)
                try:
                    results[kind, name] = asyncio.run(
                        _burst(server, args.burst, kind == "distinct clients", prober))
                finally:
                    server.close()
                b = results[kind, name]
                print(f"{kind}, {name}: cpu {b.cpu_s:.2f} s, wall {b.wall_s:.2f} s, "
                      f"codes {b.codes}", flush=True)
        with Store(state) as store:  # as an older version, without bounds at the edge, kept it
            store.set_controls("prod", suspended=1, reason="r" * 1_048_576, actor="bench",
                               since=store.clock())
        for name, checkout in sides.items():
            server = Server(checkout, state, script)
            try:
                huge[name] = len(httpx.get(f"{server.url}/api/page", timeout=300).content)
            finally:
                server.close()
    finally:
        _git("worktree", "remove", "--force", str(base))
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(value: float) -> str:
        return f"{value * 1000:.0f}"

    rows = [
        ("server CPU over the burst (s)", lambda b: f"{b.cpu_s:.2f}", lambda b: b.cpu_s),
        ("wall time to the last answer (s)", lambda b: f"{b.wall_s:.2f}", lambda b: b.wall_s),
        ("page answers 200 / 429 / 503 / failed",
         lambda b: " / ".join(str(b.codes.get(c, 0)) for c in ("200", "429", "503"))
         + f" / {sum(n for c, n in b.codes.items() if c not in ('200', '429', '503'))}",
         None),
        ("page p50 (ms, answers 200)", lambda b: ms(statistics.median(b.page_s)),
         lambda b: statistics.median(b.page_s)),
        ("page p99 (ms, answers 200)", lambda b: ms(_pct(b.page_s, 0.99)),
         lambda b: _pct(b.page_s, 0.99)),
        ("/healthz p99 (ms)", lambda b: ms(_pct(b.health_s, 0.99)),
         lambda b: _pct(b.health_s, 0.99)),
        ("/healthz worst (ms)", lambda b: ms(max(b.health_s)), lambda b: max(b.health_s)),
        ("/healthz probes", lambda b: str(len(b.health_s)), None),
        ("RSS before (MiB)", lambda b: f"{b.rss_before:.0f}", lambda b: b.rss_before),
        ("RSS after (MiB)", lambda b: f"{b.rss_after:.0f}", lambda b: b.rss_after),
        ("RSS peak, VmHWM (MiB)", lambda b: f"{b.rss_peak:.0f}", lambda b: b.rss_peak),
        ("/api/page size (kB)", lambda b: f"{b.page_bytes / 1000:.1f}", None),
    ]
    lines = [
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Command: `python bench/web_load.py --runs "
        f"{args.runs} --hosts {args.hosts} --burst {args.burst}` (base {base_sha}, this "
        f"checkout {head_sha}{dirty})",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load_avg:.2f} "
        "at the start (shared with other work: read the ratios)",
        "",
    ]
    for kind in ("one client", "distinct clients"):
        who = ("from one address (127.0.0.1)" if kind == "one client"
               else f"one each from {args.burst} addresses")
        lines += [f"{args.burst} unauthenticated `/api/page` requests at once {who}, "
                  f"{args.runs} runs on {args.hosts} hosts, /healthz probed every 50 ms:", "",
                  f"| | base {base_sha} | this | this / base |", "|---|---|---|---|"]
        for label, show, value in rows:
            old, new = results[kind, "base"], results[kind, "this"]
            ratio = ""
            if value is not None and value(old) > 0:
                ratio = f"{value(new) / value(old):.2f}"
            lines.append(f"| {label} | {show(old)} | {show(new)} | {ratio} |")
        lines.append("")
    lines.append(f"`/api/page` with a suspension reason of 1 MiB in the record: base "
                 f"{huge['base'] / 1e6:.2f} MB, this {huge['this'] / 1e6:.3f} MB "
                 f"({huge['this'] / huge['base']:.3f})")
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        save_section("web_load", text)


if __name__ == "__main__":
    main()
