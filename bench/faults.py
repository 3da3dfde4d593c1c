"""Fault campaign: the daemon under faults, and what each fault lost (issue 15).

Run as root: ``python bench/faults.py [--kills 100] [--net 20] [--power 10] [--disk 5]
[--remote 10] [--second 5] [--name ftcamp] [--seed 1] [--shards 1] [--stop-at UNIX_TIME]
[--out /tmp/gitops-faults.md]`` (``--quick`` sets every count to 2). ``--shards N`` runs N
independent campaigns of this script at once (labs ``ft1``..``ftN`` from ``$GITOPS_LAB_NAME``),
each count divided among them, each with its own seed, and merges their figures into one
report with the same tables plus one row per shard; SIGTERM (or ``--stop-at``) stops each
after the fault in progress, and the report says how many of each kind ran.

Each campaign brings up a lab of 3 hosts and a state repository from
the committed sample (service ``base``) plus a ``probe`` service whose check a commit can
break, in one batch. ``gitops run`` watches the repository (watch = true,
interval 2 s) with its state folder on a small tmpfs, a generic webhook notifier and GitHub
commit statuses aimed at a receiver in this script (``POST /hook``, ``POST
/gh/repos/o/r/statuses/<sha>``, answered as GitHub does: 201).

While a fault is being prepared a commit lands every ``--commit-every`` seconds: mostly good
(a motd line), some whose probe check fails, some invalid (an unknown parameter). At a random
moment (for the apply faults: while an apply worker runs) one fault is injected:

- ``kill``: kill -9 of the daemon (every other time: of its apply or verify worker alone),
  then the daemon started again;
- ``net``: a host's veth down for 3-12 s mid-apply, then up;
- ``power``: a host's systemd-nspawn killed mid-apply, then booted again (a fresh host: the
  lab's overlay is volatile);
- ``disk``: the state folder's tmpfs filled during a run until its workers are done and
  2-6 s more, then freed;
- ``remote``: the watched repository moved away for 5-10 s, or its branch force-pushed;
- ``second``: a second ``gitops run`` on the same state folder for 5-15 s, then stopped.

Then a good commit, and the checks, each failure of which is a loss: no run left unfinished
once the daemon is back; the runs a kill cut recorded ``interrupted``; the environment lock
free; that commit applied and verified on every host (a power-cut host gets an operator
reconcile, as a replaced host needs); every commit that reached the daemon has a final
commit status at the receiver (none left ``pending``) and every failed run a failure status;
every failed rollout an incident (``gitops incidents``); ``PRAGMA integrity_check`` ok; the
daemon never exited unless killed. Every line goes to stdout and ``--out`` as it is written.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import _common
import yaml
from _common import (
    Daemon,
    Out,
    Receiver,
    descendants,
    free_port,
    fresh_work,
    lab_down,
    lab_up,
    make_repo,
    verified_everywhere,
    write_probe,
)

import gitops.lab as lab
from gitops.lab import common as lab_common
from gitops.lab import hosts as lab_hosts

TOKEN = "faults-campaign-operator-token"
HALT = threading.Event()
"""Set by SIGTERM: no fault after the one in progress; the report follows."""

# -- the repository and its commits ---------------------------------------------------------

def git(repo: Path, *args: str, check: bool = True) -> str:
    return _common.git(repo, *args, check=check, who="faults")


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.n = 0
        self.kinds: dict[str, str] = {}

    def commit(self, kind: str) -> str:
        """A commit of ``kind``: good (probe ok, a new motd line), bad (probe check fails),
        invalid (an unknown probe parameter)."""
        with self.lock:
            self.n += 1
            inv_file = self.path / "inventories/lab.yml"
            inv = yaml.safe_load(inv_file.read_text())
            probe: dict[str, Any] = {"value": "ok"}
            if kind == "bad":
                probe = {"value": f"broken {self.n}"}
            elif kind == "invalid":
                probe = {"value": "ok", "no_such_parameter": self.n}
            inv["groups"]["all"]["services"]["probe"] = probe
            inv["groups"]["all"]["services"]["base"]["motd"] = f"faults campaign, commit {self.n}"
            inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
            git(self.path, "commit", "-q", "-am", f"{kind} {self.n}")
            sha = git(self.path, "rev-parse", "HEAD")
            self.kinds[sha] = kind
            return sha


def make_campaign_repo(info: lab.LabInfo, dest: Path) -> Repo:
    make_repo(info, dest, services=["base"])
    write_probe(dest)
    inv_file = dest / "inventories/lab.yml"
    inv = yaml.safe_load(inv_file.read_text())
    inv["groups"].setdefault("all", {}).setdefault("services", {})["probe"] = {"value": "ok"}
    inv["settings"]["rollout"] = {"batch": "100%"}  # one batch: a fault's check is quicker
    # the sample's guarded base: at a load of 40+ a first apply outlasts the default 60 s
    # confirm window and the hosts revert it by themselves (README, "Guarded applies")
    inv["settings"]["guard"] = {"confirm_timeout": 600, "margin": 60}
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "probe service, one batch")
    return Repo(dest)


# -- the daemon -----------------------------------------------------------------------------

def workers(daemon: Daemon, kinds: tuple[str, ...] = ("apply", "verify")) -> list[int]:
    """The daemon's workers running a job: a cold worker, or a warm server's forked child (it
    shares its server's command line); never the warm servers, which wait for jobs."""
    if daemon.proc is None:
        return []
    return [p.pid for p in descendants(daemon.proc.pid)
            if any(f"gitops.workers.{k}" in p.cmd for k in kinds)
            and not ("gitops.workers.forkserver" in p.cmd and p.ppid == daemon.proc.pid)]


# -- the record -----------------------------------------------------------------------------

class Db:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "gitops.db"

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        for _ in range(120):
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
                db.row_factory = sqlite3.Row
                try:
                    return list(db.execute(sql, args))
                finally:
                    db.close()
            except sqlite3.OperationalError:
                time.sleep(0.5)
        raise RuntimeError(f"cannot read {self.path}")

    def max_id(self) -> int:
        return int(self.query("SELECT coalesce(max(id), 0) FROM runs")[0][0])

    def unfinished(self) -> list[int]:
        return [r[0] for r in self.query("SELECT id FROM runs WHERE finished_at IS NULL")]

    def converged(self, sha: str, hosts: list[str]) -> bool:
        return verified_everywhere(
            self.query("SELECT * FROM status WHERE environment='lab'"), sha, hosts)


def lock_free(state_dir: Path) -> bool:
    path = state_dir / "locks" / "lab.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# -- the campaign ---------------------------------------------------------------------------

class Campaign:
    def __init__(self, opts: argparse.Namespace, info: lab.LabInfo, work: Path,
                 out: Any) -> None:
        self.opts, self.info, self.work, self.out = opts, info, work, out
        self.rng = random.Random(opts.seed)
        self.hosts = [h.name for h in info.hosts]
        self.receiver = Receiver(TOKEN)
        self.state_dir = work / "state"
        self.state_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={opts.tmpfs_mb}m", "tmpfs",
                        str(self.state_dir)], check=True)
        self.repo = make_campaign_repo(info, work / "repo")
        self.port = free_port()
        self.config = self.write_config(work / "gitops.toml", self.port)
        self.env = {"FAULTS_TOKEN": TOKEN,
                    "FAULTS_HOOK": f"http://127.0.0.1:{self.receiver.port}/hook"}
        self.daemon = Daemon(self.config, self.port, work / "daemon.log", self.env)
        self.db = Db(self.state_dir)
        self.injected: Counter[str] = Counter()
        self.survived: Counter[str] = Counter()
        self.losses: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.streaming = threading.Event()
        self.stop = threading.Event()
        self.reached: set[str] = set()
        self.second_logs: list[Path] = []
        self.status_keys: dict[str, bool] = {}
        self.cut_runs = 0
        self.planned: Counter[str] = Counter()
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.load_start = os.getloadavg()[0]
        self.halt = HALT

    def write_config(self, path: Path, port: int) -> Path:
        path.write_text(
            f'state_dir = "{self.state_dir}"\n'
            f'listen = "127.0.0.1:{port}"\n'
            'api_token = {env = "FAULTS_TOKEN"}\n'
            "[retention]\n"
            "snapshots = 5\n"
            "[[environments]]\n"
            'name = "lab"\n'
            f'repo = "{self.repo.path}"\n'
            "interval = 2\n"
            "drift_interval = 3600\n"
            "retry_base = 1\n"
            "retry_max = 8\n"
            "[[environments.notifiers]]\n"
            'type = "webhook"\n'
            'url = {env = "FAULTS_HOOK"}\n'
            "[[environments.commit_status]]\n"
            'provider = "github"\n'
            f'api_url = "http://127.0.0.1:{self.receiver.port}/gh"\n'
            'repository = "o/r"\n'
            'token = {env = "FAULTS_TOKEN"}\n'
        )
        return path

    # commits while a fault is prepared
    def committer(self) -> None:
        while not self.stop.is_set():
            if not self.streaming.wait(0.5):
                continue
            roll = self.rng.random()
            kind = "good" if roll < 0.7 else "bad" if roll < 0.85 else "invalid"
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.repo.commit(kind)
            self.stop.wait(self.opts.commit_every * self.rng.uniform(0.5, 1.5))

    def loss(self, kind: str, detail: str) -> None:
        self.losses[kind] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(detail)
        self.out(f"    LOSS {kind}: {detail}")

    def wait_for(self, cond: Any, timeout: float, step: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(step)
        return False

    def wait_worker(self, kinds: tuple[str, ...] = ("apply",), timeout: float = 40) -> bool:
        return self.wait_for(lambda: bool(workers(self.daemon, kinds)), timeout, 0.1)

    # -- faults ---------------------------------------------------------------------------

    def fault_kill(self, i: int) -> dict[str, Any]:
        if i % 2 == 0:
            self.wait_for(lambda: False, self.rng.uniform(0.2, 6))
            cut = self.db.unfinished()
            self.daemon.kill9()
            self.daemon.start()
            return {"what": "kill -9 daemon", "cut": cut}
        self.wait_worker(("apply", "verify"))
        time.sleep(self.rng.uniform(0, 1.5))
        found = workers(self.daemon, ("apply", "verify"))
        if found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(found[0], signal.SIGKILL)
        return {"what": "kill -9 worker" if found else "kill -9 worker (none running)",
                "cut": []}

    def fault_net(self, i: int) -> dict[str, Any]:
        index = self.rng.randrange(1, len(self.hosts) + 1)
        self.wait_worker()
        veth = lab_common.veth_name(self.info.name, index)
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        try:
            time.sleep(self.rng.uniform(3, 12))
        finally:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        return {"what": f"lab-{index} network cut", "cut": []}

    def fault_power(self, i: int) -> dict[str, Any]:
        index = self.rng.randrange(1, len(self.hosts) + 1)
        self.wait_worker()
        pids = [p for p, ix in lab_hosts.find_nspawn(self.info.name).items() if ix == index]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        lab_hosts.wait_gone(pids, 30)
        time.sleep(self.rng.uniform(1, 5))
        self.boot(index)
        return {"what": f"lab-{index} power cut", "cut": [], "replaced": True}

    def boot(self, index: int) -> None:
        state = lab_common.state_dir(self.info.name)
        data = json.loads((state / "lab.json").read_text())
        args = lab_hosts.nspawn_args(self.info.name, index, Path(data["image"]) / "rootfs",
                                     state / "authorized_keys", state / "sources.list")
        name = lab_common.host_name(index)
        cgroups = lab_hosts.make_cgroups(lab_common.machine_name(self.info.name, index))
        lab_hosts.start_host(args, state / "logs" / f"{name}.log",
                             state / "pids" / f"{name}.pid", cgroups)
        ok = self.wait_for(lambda: subprocess.run(
            ["ssh", "-F", str(self.info.ssh_config), "-o", "ConnectTimeout=3", name, "true"],
            capture_output=True, timeout=30, check=False).returncode == 0, 180, 1)
        if not ok:
            raise RuntimeError(f"{name} did not boot again")

    def fault_disk(self, i: int) -> dict[str, Any]:
        self.wait_worker(("apply", "verify"))
        filler = self.state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (2**20, 4096, 1):  # until not a byte more fits
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
            # full until the run in progress has tried to record its end, then a while more
            self.wait_for(lambda: not workers(self.daemon), 90, 0.2)
            time.sleep(self.rng.uniform(2, 6))
        finally:
            os.close(fd)
            filler.unlink()
        return {"what": "state folder disk full", "cut": []}

    def fault_remote(self, i: int) -> dict[str, Any]:
        time.sleep(self.rng.uniform(0.5, 4))
        if i % 2 == 0:
            away = self.repo.path.with_name("repo.away")
            with self.repo.lock:
                os.rename(self.repo.path, away)
                try:
                    time.sleep(self.rng.uniform(5, 10))
                finally:
                    os.rename(away, self.repo.path)
            return {"what": "remote unreachable", "cut": []}
        with self.repo.lock:
            git(self.repo.path, "reset", "-q", "--hard", "HEAD~2")
        self.repo.commit("good")
        return {"what": "force-push", "cut": []}

    def fault_second(self, i: int) -> dict[str, Any]:
        port = free_port()
        config = self.write_config(self.work / f"gitops-second-{i}.toml", port)
        log = self.work / f"second-{i}.log"
        self.second_logs.append(log)
        proc = Daemon(config, port, log, self.env).spawn()
        time.sleep(self.rng.uniform(5, 15))
        early = proc.poll()
        if early is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.loss("second controller did not stop", str(log))
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            self.loss("traceback", f"second controller: {log}")
        how = f"exited {early} by itself" if early is not None else "stopped"
        return {"what": f"second controller ({how})", "cut": []}

    # -- checks ---------------------------------------------------------------------------

    def check(self, kind: str, fault: dict[str, Any], before_max: int) -> bool:
        lost = sum(self.losses.values())
        if not self.daemon.alive():
            self.loss("daemon exited", f"after {fault['what']}: "
                      f"{self.daemon.unexpected_exits[-1:]}; restarted")
            self.daemon.start()
        sha = self.repo.commit("good")
        hosts = self.hosts
        converged = self.wait_for(lambda: self.db.converged(sha, hosts), self.opts.converge_s, 0.5)
        if not converged and fault.get("replaced"):
            self.daemon.api("/api/environments/lab/reconcile", {"reason": "host replaced"}, TOKEN)
            converged = self.wait_for(lambda: self.db.converged(sha, hosts),
                                      self.opts.converge_s, 0.5)
        if not converged:
            last = self.db.query("SELECT id, kind, result, error FROM runs ORDER BY id DESC "
                                 "LIMIT 1")
            self.loss("next reconcile did not verify every host",
                      f"after {fault['what']}: {sha[:10]}; last run "
                      f"{dict(last[0]) if last else None}")
        # quiet: nothing running, so the lock must be free
        self.wait_for(lambda: not self.db.unfinished() and not workers(self.daemon), 60, 0.5)
        left = [r for r in self.db.unfinished() if r <= before_max]
        if left:
            self.loss("run left running", f"after {fault['what']}: runs {left}")
        self.cut_runs += len(fault["cut"])
        for run_id in fault["cut"]:
            row = self.db.query("SELECT result FROM runs WHERE id=?", (run_id,))
            if row and row[0]["result"] != "interrupted":
                self.loss("cut run not recorded interrupted",
                          f"after {fault['what']}: run {run_id} is {row[0]['result']}")
        if not self.wait_for(lambda: lock_free(self.state_dir) or bool(self.db.unfinished()),
                             30, 0.5):
            self.loss("lock held", f"after {fault['what']}")
        self.check_statuses(f"after {fault['what']}")
        ok = self.db.query("PRAGMA integrity_check")[0][0]
        if ok != "ok":
            self.loss("integrity_check", f"after {fault['what']}: {ok}")
        return sum(self.losses.values()) == lost

    def check_statuses(self, when: str, timeout: float = 30) -> None:
        """Every commit a run reached has a final status; every failed run a failure."""
        runs = self.db.query("SELECT id, kind, sha, result FROM runs WHERE sha IS NOT NULL "
                             "AND kind IN ('reconcile', 'retry') AND event = 0 "
                             "AND result IS NOT NULL")
        for r in runs:
            self.reached.add(r["sha"])

        def missing() -> list[str]:
            with self.receiver.lock:
                seen = {k: list(v) for k, v in self.receiver.statuses.items()}
            bad = []
            for r in runs:
                states = seen.get(r["sha"], [])
                if not states:
                    bad.append(f"no status for {r['sha'][:10]} (run {r['id']} {r['result']})")
                elif states[-1] == "pending":
                    bad.append(f"{r['sha'][:10]} left pending (run {r['id']} {r['result']})")
                elif r["result"] in ("failed", "invalid") and "failure" not in states:
                    bad.append(f"failure of run {r['id']} never reported for {r['sha'][:10]}")
            return sorted(set(bad))

        if self.wait_for(lambda: not missing(), timeout, 1):
            return
        for item in missing():
            key = self.status_keys.setdefault(item, True)
            if key:
                self.status_keys[item] = False
                self.loss("commit status", f"{when}: {item}")


    def check_incidents(self) -> None:
        proc = subprocess.run([sys.executable, "-m", "gitops", "incidents", "--state-dir",
                               str(self.state_dir), "--json"], capture_output=True, text=True,
                              env=self.daemon.env, check=False)
        try:
            found = json.loads(proc.stdout or "[]")
        except ValueError:
            self.loss("incidents", f"gitops incidents --json: {proc.stderr[-300:]}")
            return
        text = json.dumps(found)
        failed = self.db.query("SELECT id FROM runs WHERE kind IN ('reconcile', 'retry') AND "
                               "result = 'failed' AND event = 0")
        covered = {int(x) for x in re.findall(r'"(?:run_id|id)": (\d+)', text)}
        for r in failed:
            if r["id"] not in covered:
                self.loss("failed rollout without incident", f"run {r['id']}")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self.committer, daemon=True).start()
        self.daemon.start()
        sha = git(self.repo.path, "rev-parse", "HEAD")
        if not self.wait_for(lambda: self.db.path.exists() and self.db.converged(sha, self.hosts),
                             600, 1):
            raise RuntimeError("the first rollout did not verify every host")
        plan = (["kill"] * self.opts.kills + ["net"] * self.opts.net
                + ["power"] * self.opts.power + ["disk"] * self.opts.disk
                + ["remote"] * self.opts.remote + ["second"] * self.opts.second)
        self.rng.shuffle(plan)
        self.planned = Counter(plan)
        counts: Counter[str] = Counter()
        t0 = time.monotonic()
        for n, kind in enumerate(plan, 1):
            if self.opts.minutes and time.monotonic() - t0 > self.opts.minutes * 60:
                self.out(f"time budget of {self.opts.minutes:g} min spent: {n - 1} of "
                         f"{len(plan)} faults injected")
                break
            if self.halt.is_set() or (self.opts.stop_at and time.time() >= self.opts.stop_at):
                self.out(f"stopped ({'SIGTERM' if self.halt.is_set() else '--stop-at'}): "
                         f"{n - 1} of {len(plan)} faults injected")
                break
            began = time.monotonic()
            before_max = self.db.max_id()
            self.streaming.set()
            try:
                fault = getattr(self, f"fault_{kind}")(counts[kind])
            finally:
                self.streaming.clear()
            counts[kind] += 1
            self.injected[kind] += 1
            self.out(f"{n}/{len(plan)} {time.monotonic() - t0:7.0f} s  {kind:6} "
                     f"{fault['what']}: injected, checking")
            survived = self.check(kind, fault, before_max)
            if survived:
                self.survived[kind] += 1
            self.seconds[kind].append(time.monotonic() - began)
            self.out(f"{n}/{len(plan)} {time.monotonic() - t0:7.0f} s  {kind:6} "
                     f"{fault['what']}: {'survived' if survived else 'LOSS'}")
        self.check_statuses("at the end", timeout=60)
        self.check_incidents()
        if not self.daemon.alive():
            self.loss("daemon exited", "at the end")
        ok = self.db.query("PRAGMA integrity_check")[0][0]
        if ok != "ok":
            self.loss("integrity_check", f"at the end: {ok}")
        self.stop.set()

    def close(self) -> None:
        self.stop.set()
        self.daemon.stop()
        self.receiver.server.shutdown()
        subprocess.run(["umount", "-l", str(self.state_dir)], check=False)


LOSS_KINDS = ["run left running", "cut run not recorded interrupted", "lock held",
              "next reconcile did not verify every host", "commit status",
              "failed rollout without incident", "integrity_check", "daemon exited",
              "traceback", "second controller did not stop"]
KINDS = ("kill", "net", "power", "disk", "remote", "second")
COUNT_OPTION = {"kill": "kills", "net": "net", "power": "power", "disk": "disk",
                "remote": "remote", "second": "second"}


def figures(c: Campaign, seconds: float) -> dict[str, Any]:
    """What one campaign (one lab) found, as JSON a sharded run merges."""
    results = Counter(f"{r['kind']} {r['result']}" for r in c.db.query(
        "SELECT kind, result FROM runs WHERE event = 0"))
    return {"lab": c.info.name, "minutes": seconds / 60, "planned": dict(c.planned),
            "injected": dict(c.injected), "survived": dict(c.survived),
            "losses": dict(c.losses), "examples": dict(c.examples),
            "seconds": dict(c.seconds), "commits": dict(Counter(c.repo.kinds.values())),
            "runs": c.db.max_id(), "reached": len(c.reached), "results": dict(results),
            "cut_runs": c.cut_runs, "load": [c.load_start, os.getloadavg()[0]]}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several shards as one campaign's: counts summed, examples joined."""
    total: dict[str, Any] = {"lab": ", ".join(p["lab"] for p in parts),
                             "minutes": max(p["minutes"] for p in parts)}
    for key in ("planned", "injected", "survived", "losses", "commits", "results"):
        total[key] = dict(sum((Counter(p[key]) for p in parts), Counter()))
    for key in ("examples", "seconds"):
        joined: dict[str, list[Any]] = defaultdict(list)
        for p in parts:
            for k, v in p[key].items():
                joined[k] += v
        total[key] = dict(joined)
    for key in ("runs", "reached", "cut_runs"):
        total[key] = sum(p[key] for p in parts)
    total["load"] = [max(p["load"][0] for p in parts), max(p["load"][1] for p in parts)]
    return total


def report(f: dict[str, Any], out: Out) -> None:
    injected, survived, losses = Counter(f["injected"]), Counter(f["survived"]), \
        Counter(f["losses"])
    out()
    out(f"Campaign: {sum(injected.values())} faults in {f['minutes']:.0f} min, "
        f"{sum(f['commits'].values())} commits made ({dict(sorted(f['commits'].items()))}), "
        f"{f['runs']} runs recorded, {f['reached']} commits reached the daemon.")
    out(f"Runs by kind and result: "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(f['results'].items()))}; "
        f"{f['cut_runs']} run(s) cut by a kill of the daemon.")
    out()
    out("| fault | planned | injected | survived (no loss) | median s per fault (with checks) |")
    out("|---|---|---|---|---|")
    for kind in KINDS:
        times = sorted(f["seconds"].get(kind, []))
        med = f"{times[len(times) // 2]:.0f}" if times else "-"
        out(f"| {kind} | {f['planned'].get(kind, 0)} | {injected[kind]} | {survived[kind]} "
            f"| {med} |")
    out()
    out("| loss | count | examples |")
    out("|---|---|---|")
    for kind in LOSS_KINDS + sorted(set(losses) - set(LOSS_KINDS)):
        examples = "; ".join(f["examples"].get(kind, [])[:3]).replace("|", "/")
        out(f"| {kind} | {losses[kind]} | {examples} |")
    out()
    out(f"**faults**: {sum(injected.values())} injected, {sum(survived.values())} "
        f"survived without loss, {sum(losses.values())} losses")


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    prefix = os.environ.get("GITOPS_LAB_NAME", "fa")[:2]
    parser.add_argument("--name", default=None,
                        help="the lab (<= 8 characters; default PREFIXcamp, with --shards: "
                        "PREFIX1, PREFIX2... where PREFIX is $GITOPS_LAB_NAME's first two)")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--net", type=int, default=20)
    parser.add_argument("--power", type=int, default=10)
    parser.add_argument("--disk", type=int, default=5)
    parser.add_argument("--remote", type=int, default=10)
    parser.add_argument("--second", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="every count 2")
    parser.add_argument("--shards", type=int, default=1,
                        help="run the faults as this many independent campaigns at once, each "
                        "its own lab of 3 hosts, repository, state tmpfs, daemon and receiver "
                        "(each count divided among them); one merged report")
    parser.add_argument("--commit-every", type=float, default=3)
    parser.add_argument("--converge-s", type=float, default=300,
                        help="how long the next good commit may take to verify everywhere")
    parser.add_argument("--tmpfs-mb", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=0,
                        help="stop injecting after this long (0: every fault of the counts)")
    parser.add_argument("--stop-at", type=float, default=0,
                        help="stop injecting at this Unix time (0: no such limit)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gitops-faults.md"))
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures as JSON here (what --shards merges)")
    opts = parser.parse_args()
    if opts.quick:
        for key in COUNT_OPTION.values():
            setattr(opts, key, 2)
    if opts.name is None:
        opts.name = prefix if opts.shards > 1 else (prefix + "camp")[:8]
    if len(opts.name) > 8 - (len(str(opts.shards)) if opts.shards > 1 else 0):
        parser.error(f"--name {opts.name!r}: a lab name has at most 8 characters")
    return opts


def main() -> None:
    opts = options()
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")
    out = Out(opts.out)
    out.start("faults: the daemon under a fault campaign",
              "python bench/faults.py " + " ".join(sys.argv[1:]))
    if opts.shards > 1:
        sharded(opts, out)
        return
    signal.signal(signal.SIGTERM, lambda *_: HALT.set())
    work = fresh_work(opts.name)
    info = lab_up(opts.name, 3)
    campaign = None
    start = time.monotonic()
    try:
        campaign = Campaign(opts, info, work, out)
        campaign.run()
    finally:
        try:
            if campaign is not None:
                campaign.daemon.stop()
                found = figures(campaign, time.monotonic() - start)
                report(found, out)
                if opts.json:
                    opts.json.write_text(json.dumps(found))
        finally:
            if campaign is not None:
                campaign.close()
            with contextlib.suppress(Exception):
                lab_down(opts.name)


def sharded(opts: argparse.Namespace, out: Out) -> None:
    """``--shards N``: N campaigns of this script at once (labs NAME1..NAMEN), each with its
    share of every count and its own seed; their lines prefixed by their lab; one report."""
    work = fresh_work(f"{opts.name}-shards")
    names = [f"{opts.name}{i}" for i in range(1, opts.shards + 1)]
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    for i, name in enumerate(names):
        share = {key: getattr(opts, key) // opts.shards
                 + (1 if i < getattr(opts, key) % opts.shards else 0)
                 for key in COUNT_OPTION.values()}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--name", name,
               "--seed", str(opts.seed * 100 + i + 1), "--commit-every", str(opts.commit_every),
               "--converge-s", str(opts.converge_s), "--tmpfs-mb", str(opts.tmpfs_mb),
               "--minutes", str(opts.minutes), "--stop-at", str(opts.stop_at),
               "--out", str(work / f"{name}.md"), "--json", str(work / f"{name}.json"),
               *[f"--{k}={v}" for k, v in share.items()]]
        out(f"shard {name}: {' '.join(f'{k} {v}' for k, v in share.items())}")
        procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)))
    out()

    def relay(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() and not line.startswith(("#", "Date:", "Machine:", "gitops code:")):
                out(f"[{name}] {line.rstrip()}")

    def stop(*_: Any) -> None:  # each shard stops after its fault in progress, and reports
        for _name, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loads: list[float] = []
    relays = [threading.Thread(target=relay, args=p, daemon=True) for p in procs]
    for t in relays:
        t.start()
    while any(p.poll() is None for _, p in procs):
        loads.append(os.getloadavg()[0])
        time.sleep(10)
    for t in relays:
        t.join(10)
    parts = []
    for name, proc in procs:
        path = work / f"{name}.json"
        if path.exists():
            parts.append(json.loads(path.read_text()))
        else:
            out(f"shard {name} exited {proc.returncode} without figures (see {work / name}.md)")
    if not parts:
        sys.exit("no shard reported")
    out()
    out(f"Sharded: {len(parts)} of {opts.shards} shards reported, each its own lab of 3 hosts, "
        "repository, state tmpfs, daemon and receiver, run at once on this machine; load "
        f"average (1 min) while they ran: min {min(loads, default=0):.1f}, median "
        f"{sorted(loads)[len(loads) // 2] if loads else 0:.1f}, max {max(loads, default=0):.1f}.")
    out()
    out("| shard | faults planned | injected | survived | losses | minutes | commits | runs |")
    out("|---|---|---|---|---|---|---|---|")
    for p in parts:
        out(f"| {p['lab']} | {sum(p['planned'].values())} | {sum(p['injected'].values())} | "
            f"{sum(p['survived'].values())} | {sum(p['losses'].values())} | "
            f"{p['minutes']:.0f} | {sum(p['commits'].values())} | {p['runs']} |")
    merged = merge(parts)
    report(merged, out)
    if opts.json:
        opts.json.write_text(json.dumps(merged))


if __name__ == "__main__":
    main()
