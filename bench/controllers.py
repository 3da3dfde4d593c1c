"""Benchmark: several controllers on one PostgreSQL through random kills (issue 14, section 3).

Run as root: ``python bench/controllers.py [--duration 600] [--kill-every 30]
[--controllers 3] [--environments 6] [--hosts 3] [--ttl 15] [--commit-every 20]
[--name ctbench] [--no-results]``.

Starts a throwaway PostgreSQL cluster (``tests/pgserver.py``) and lab ``--name`` (``--hosts``
hosts), and a state repository of ``--environments`` environments of one host each (host
``i % hosts``) with one small service, ``marker``: it writes the environment's value to
``/var/lib/gitops-bench/<env>`` and, to catch two applies of one environment at once on the
host, holds ``flock -n /run/gitops-bench-<env>.lock`` for 3 s, appending a line to
``/var/lib/gitops-bench/<env>.double`` when the lock is already held. Its check reads the
value back. Then ``--controllers`` real ``gitops run`` processes with the same settings (each
its own state folder, as on separate machines; ``lease_ttl = --ttl``, watch on, interval
10 s) share the environments. For ``--duration`` seconds: every ``--kill-every`` seconds one
running controller chosen at random is killed with SIGKILL and started again 5 s later;
every ``--commit-every`` seconds a commit changes one environment's value (round robin).

Figures:
- takeover time: from the SIGKILL to the ``acquired_at`` of another controller's lease, for
  each environment the killed one held (the leases table, polled every 0.2 s; both times by
  this machine's clock); median and max;
- double applies (goal 0): pairs of runs of one environment overlapping in time in the
  record, plus the lines in the hosts' ``.double`` markers;
- lost runs (goal 0): runs cut by a kill (recorded interrupted) with no later successful
  run of their environment, plus environments whose last commit is not applied and
  verified (the environment's status row) within a grace of 5 minutes after the campaign.

Prints the figures and replaces the section "controllers" of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, free_port, git, lab_down, lab_up, save_section

sys.path.insert(0, str(ROOT / "tests"))
from pgserver import PgServer

from gitops.record.store import Database
from gitops.records import Lease
from gitops.settings import SecretRef

DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files, server

env = host.data.get("env")
files.directory(name="Marker folder", path="/var/lib/gitops-bench")
files.put(name="Marker value", src=__import__("io").StringIO(host.data.get("value") + "\\n"),
          dest=f"/var/lib/gitops-bench/{env}", mode="0644")
server.shell(name="Apply marker", commands=[
    f"flock -n /run/gitops-bench-{env}.lock sleep 3"
    f" || echo \\"$(date +%s) double\\" >> /var/lib/gitops-bench/{env}.double"])
"""
CHECKS = """\
def test_marker_has_the_value(host, params):
    \"\"\"The marker file holds the environment's value.\"\"\"
    marker = host.file(f"/var/lib/gitops-bench/{params['env']}")
    assert marker.content_string.strip() == params["value"]
"""
MODEL = """\
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str
    value: str = "0"
"""


def _git(repo: Path, *args: str) -> str:
    return git(repo, *args)


def make_repo(dest: Path, lab_name: str, hosts: list[str], environments: int) -> Path:
    (dest / "deploys/marker").mkdir(parents=True)
    (dest / "deploys/marker/deploy.py").write_text(DEPLOY)
    (dest / "deploys/marker/checks.py").write_text(CHECKS)
    (dest / "deploys/marker/model.py").write_text(MODEL)
    (dest / "inventories").mkdir()
    for i in range(environments):
        write_env(dest, f"env{i}", lab_name, hosts[i % len(hosts)], "0")
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "bench state")
    return dest


def write_env(repo: Path, env: str, lab_name: str, host: str, value: str) -> None:
    inv = {"settings": {"source": "lab", "lab": lab_name},
           "groups": {"bench": {"services": {"marker": {"env": env, "value": value}}}},
           "hosts": {host: {"groups": ["bench"]}}}
    (repo / "inventories" / f"{env}.yml").write_text(yaml.safe_dump(inv, sort_keys=False))


class Controller:
    def __init__(self, name: str, work: Path, repo: Path, url: str, secret: Path, ttl: float,
                 environments: int) -> None:
        self.name = name
        self.port = free_port()
        self.config = work / f"{name}.toml"
        lines = [f'state_dir = "{work / ("state-" + name)}"',
                 f'listen = "127.0.0.1:{self.port}"', f'database = "{url}"',
                 f'database_password = {{file = "{secret}"}}', f'controller_name = "{name}"',
                 f"lease_ttl = {ttl}"]
        for i in range(environments):
            lines += ["[[environments]]", f'name = "env{i}"', f'repo = "{repo}"',
                      "interval = 10", "drift_interval = 3600"]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
            env={**os.environ, "GITOPS_CONFIG": str(self.config)})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=5) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None


def live_holders(database: Database) -> dict[str, str]:
    with database.open(readonly=True) as store:
        return {lease.environment: lease.holder for lease in store.leases() if lease.live}


def live_leases(database: Database) -> dict[str, Lease]:
    with database.open(readonly=True) as store:
        return {lease.environment: lease for lease in store.leases() if lease.live}


def overlaps(runs: list[Any]) -> list[tuple[int, int]]:
    """Pairs of runs of one environment whose [start, finish] intervals overlap."""
    found = []
    ordered = sorted(runs, key=lambda r: r.started_at)
    for i, a in enumerate(ordered):
        end = a.finished_at or datetime.max.replace(tzinfo=UTC)
        for b in ordered[i + 1:]:
            if b.started_at >= end:
                break
            found.append((a.id, b.id))
    return found


def campaign(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    pg = PgServer.start()
    info = None
    controllers: list[Controller] = []
    try:
        info = lab_up(opts.name, opts.hosts)
        hosts = [h.name for h in info.hosts]
        repo = make_repo(work / "repo", info.name, hosts, opts.environments)
        secret = work / "db-password"
        secret.write_text(pg.password + "\n")
        url = pg.database()
        database = Database(work / "unused", url, SecretRef(file=secret))
        database.open().close()
        controllers = [Controller(f"c{i + 1}", work, repo, url, secret, opts.ttl,
                                  opts.environments) for i in range(opts.controllers)]
        for c in controllers:
            c.start()
        time.sleep(5)
        for c in controllers:
            if not c.alive():
                raise SystemExit(f"{c.name} stopped at start:\n{c.log.read_text()[-2000:]}")
        envs = [f"env{i}" for i in range(opts.environments)]
        values = dict.fromkeys(envs, 0)
        print(f"waiting for the {len(envs)} environments' first rollouts", file=sys.stderr)
        converge(database, repo, envs, 900)
        takeovers: list[float] = []
        kills: list[dict[str, Any]] = []
        commits = 0
        start = time.monotonic()
        next_kill = start + opts.kill_every
        next_commit = start + opts.commit_every
        restart_at: dict[str, float] = {}
        watching: list[tuple[str, str, datetime]] = []  # (env, killed, at)
        while time.monotonic() - start < opts.duration:
            now = time.monotonic()
            if now >= next_kill:
                running = [c for c in controllers if c.alive()]
                victim = rng.choice(running)
                held = [e for e, h in live_holders(database).items() if h == victim.name]
                victim.kill()
                at = datetime.now(UTC)
                since = time.monotonic() - start
                kills.append({"controller": victim.name, "held": held,
                              "at_s": round(since, 1)})
                watching += [(e, victim.name, at) for e in held]
                restart_at[victim.name] = time.monotonic() + 5
                next_kill += opts.kill_every
                print(f"{since:6.1f} s: killed {victim.name} holding {held}", file=sys.stderr)
            for c in controllers:
                if c.name in restart_at and time.monotonic() >= restart_at[c.name]:
                    c.start()
                    del restart_at[c.name]
            if now >= next_commit:
                env = envs[commits % len(envs)]
                values[env] += 1
                write_env(repo, env, info.name, hosts[envs.index(env) % len(hosts)],
                          str(values[env]))
                _git(repo, "commit", "-q", "-am", f"{env}: value {values[env]}")
                commits += 1
                next_commit += opts.commit_every
            if watching:
                leases = live_leases(database)
                still = []
                for env, killed, at in watching:
                    lease = leases.get(env)
                    if lease is not None and lease.holder != killed:
                        # the new holder's own stamp of the takeover (same machine's clock)
                        takeovers.append((lease.acquired_at - at).total_seconds())
                    else:
                        still.append((env, killed, at))
                watching = still
            time.sleep(0.2)
        for c in controllers:
            if not c.alive():
                c.start()
        print("campaign over; waiting for every environment to converge", file=sys.stderr)
        converged_in = converge(database, repo, envs, 300, strict=False)
        leases = live_leases(database)
        for env, killed, at in watching:  # kills at the very end
            lease = leases.get(env)
            if lease is not None and lease.holder != killed:
                takeovers.append((lease.acquired_at - at).total_seconds())
        with database.open(readonly=True) as store:
            runs = {env: [r for r in store.history(env, limit=100000) if not r.event]
                    for env in envs}
            status = {env: store.environment_status(env) for env in envs}
        head = _git(repo, "rev-parse", "HEAD")
        double_record = {env: overlaps(rs) for env, rs in runs.items()}
        interrupted = [(env, r.id) for env, rs in runs.items() for r in rs
                       if r.result == "interrupted"]
        lost_interrupted = [(env, rid) for env, rid in interrupted
                            if not any(r.id > rid and r.result == "succeeded"
                                       for r in runs[env])]
        unconverged = [env for env in envs if not (
            status[env] is not None and status[env].last_verified is not None
            and status[env].last_verified.sha == head)]
        markers = {}
        for i, env in enumerate(envs):
            host = hosts[i % len(hosts)]
            out = subprocess.run(
                ["ssh", "-F", str(info.ssh_config), host,
                 f"cat /var/lib/gitops-bench/{env}.double 2>/dev/null | wc -l;"
                 f" cat /var/lib/gitops-bench/{env}"],
                capture_output=True, text=True, timeout=60).stdout.split()
            markers[env] = {"double": int(out[0]) if out else -1,
                            "value": out[1] if len(out) > 1 else None,
                            "want": str(values[env])}
        return {
            "takeovers": takeovers, "kills": kills, "commits": commits,
            "runs": sum(len(rs) for rs in runs.values()),
            "interrupted": interrupted, "lost_interrupted": lost_interrupted,
            "unconverged": unconverged, "converged_in": converged_in,
            "double_record": {e: v for e, v in double_record.items() if v},
            "markers": markers,
        }
    finally:
        for c in controllers:
            c.stop()
        if info is not None and not opts.keep_lab:
            lab_down(info.name)
        pg.stop()


def converge(database: Database, repo: Path, envs: list[str], timeout: float,
             strict: bool = True) -> float | None:
    """Seconds until every environment's verified revision is the branch head."""
    start = time.monotonic()
    head = _git(repo, "rev-parse", "HEAD")
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception), database.open(readonly=True) as store:
            rows = [store.environment_status(env) for env in envs]
            if all(r is not None and r.last_verified is not None
                   and r.last_verified.sha == head for r in rows):
                return time.monotonic() - start
        time.sleep(1)
    if strict:
        raise SystemExit(f"the environments did not converge within {timeout:.0f} s")
    return None


def report(opts: argparse.Namespace, figures: dict[str, Any], load: float) -> str:
    t = figures["takeovers"]
    doubles = sum(len(v) for v in figures["double_record"].values())
    marker_doubles = sum(max(0, m["double"]) for m in figures["markers"].values())
    lost = len(figures["lost_interrupted"]) + len(figures["unconverged"])
    out = io.StringIO()
    p = lambda line="": print(line, file=out)  # noqa: E731
    p("# controllers: 3 `gitops run` on one PostgreSQL through random SIGKILLs")
    p()
    p(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `python bench/controllers.py "
      f"{' '.join(sys.argv[1:])}`".rstrip())
    p()
    p(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load:.2f} at "
      "the start (shared with other engineers' labs and tests)")
    p()
    p(f"{opts.controllers} controllers, {opts.environments} environments of 1 host each on "
      f"{opts.hosts} lab hosts, lease_ttl {opts.ttl:g} s, {opts.duration:g} s campaign: a "
      f"SIGKILL every {opts.kill_every:g} s ({len(figures['kills'])} kills, restarted 5 s "
      f"after), a commit every {opts.commit_every:g} s ({figures['commits']} commits), "
      f"{figures['runs']} runs recorded.")
    p()
    p("| figure | value | goal |")
    p("|---|---|---|")
    if t:
        p(f"| takeover time, median | {statistics.median(t):.1f} s | within lease_ttl "
          f"({opts.ttl:g} s) |")
        p(f"| takeover time, max | {max(t):.1f} s | |")
    p(f"| takeovers measured | {len(t)} (environments held by a killed controller) | |")
    p(f"| double applies in the record (overlapping runs of one environment) | {doubles} | 0 |")
    p(f"| double applies seen on the hosts (marker lock already held) | {marker_doubles} | 0 |")
    p(f"| runs cut by a kill (recorded interrupted) | {len(figures['interrupted'])} | |")
    p(f"| of those, never followed by a successful run | "
      f"{len(figures['lost_interrupted'])} | 0 |")
    ci = figures["converged_in"]
    p(f"| environments not at the last commit, verified, 5 min after | "
      f"{len(figures['unconverged'])} | 0 |")
    p(f"| lost runs (the two above) | {lost} | 0 |")
    p()
    p(f"Converged after the campaign in {ci:.1f} s." if ci is not None else
      "Not converged within 5 minutes after the campaign.")
    p()
    p("Kills: " + "; ".join(f"{k['at_s']:g} s {k['controller']} ({len(k['held'])} held)"
                            for k in figures["kills"]))
    p()
    verdict = "met" if doubles == marker_doubles == lost == 0 else "NOT met"
    med = f"{statistics.median(t):.1f}" if t else "-"
    mx = f"{max(t):.1f}" if t else "-"
    p(f"**controllers**: takeover median {med} s, max {mx} s (lease_ttl {opts.ttl:g} s); "
      f"double applies {doubles} (record) + {marker_doubles} (hosts); lost runs {lost}: "
      f"goals {verdict}")
    return out.getvalue()


def save(text: str) -> None:
    save_section("controllers", re.sub(r"^# ", "### ", text, flags=re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=30)
    parser.add_argument("--controllers", type=int, default=3)
    parser.add_argument("--environments", type=int, default=6)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=15)
    parser.add_argument("--commit-every", type=float, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--name", default=os.environ.get("GITOPS_LAB_NAME", "ct")[:2] + "bench")
    parser.add_argument("--keep-lab", action="store_true")
    parser.add_argument("--no-results", action="store_true",
                        help="print only; do not write bench/RESULTS.md")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")
    load = os.getloadavg()[0]
    work = Path("/tmp") / f"gitops-bench-{opts.name}"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    figures = campaign(opts, work)
    text = report(opts, figures, load)
    print(text)
    (work / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    if not opts.no_results:
        save(text)


if __name__ == "__main__":
    main()
