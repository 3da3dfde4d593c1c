"""Fault campaign: the daemon under faults, and what each fault lost (issue 15).

Run as root: ``python bench/faults.py [--kills 100] [--net 20] [--power 10] [--disk 5]
[--remote 10] [--second 5] [--name ftcamp] [--seed 1] [--out /tmp/gitops-faults.md]``
(``--quick`` sets every count to 2). Brings up a lab of 3 hosts and a state repository from
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
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, header, lab_down, lab_up, make_repo

import gitops.lab as lab
from gitops.lab import common as lab_common
from gitops.lab import hosts as lab_hosts

GIT_ID = ["-c", "user.name=faults", "-c", "user.email=faults@localhost"]
TOKEN = "faults-campaign-operator-token"
PROBE_DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files

files.put(name="Probe file", src=__import__("io").StringIO(host.data.get("value") + "\\n"),
          dest="/etc/gitops-probe", mode="0644")
"""
PROBE_CHECKS = """\
def test_probe_is_ok(host):
    \"\"\"The probe file says ok.\"\"\"
    assert host.file("/etc/gitops-probe").content_string.strip() == "ok"
"""
PROBE_MODEL = """\
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = "ok"
"""
FINAL = ("success", "failure", "error")


# -- the receiver ---------------------------------------------------------------------------

class Receiver:
    """Notifications and GitHub commit statuses, as they arrive."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, list[str]] = defaultdict(list)
        self.events: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                m = re.fullmatch(r"/gh/repos/o/r/statuses/([0-9a-f]{40})", self.path)
                ok = False
                with contextlib.suppress(ValueError):
                    data = json.loads(body)
                    if m and self.headers.get("Authorization") == f"Bearer {TOKEN}" and \
                            data.get("state") in ("pending", *FINAL):
                        with receiver.lock:
                            receiver.statuses[m.group(1)].append(data["state"])
                        ok = True
                    elif self.path == "/hook" and data.get("schema") == "gitops.notification/v1":
                        with receiver.lock:
                            receiver.events.append(data)
                        ok = True
                self.send_response(201 if ok and m else 200 if ok else 422)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# -- the repository and its commits ---------------------------------------------------------

def git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(repo), *GIT_ID, *args], check=check,
                          capture_output=True, text=True, timeout=60).stdout.strip()


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
    probe = dest / "deploys/probe"
    probe.mkdir()
    (probe / "deploy.py").write_text(PROBE_DEPLOY)
    (probe / "checks.py").write_text(PROBE_CHECKS)
    (probe / "model.py").write_text(PROBE_MODEL)
    inv_file = dest / "inventories/lab.yml"
    inv = yaml.safe_load(inv_file.read_text())
    inv["groups"].setdefault("all", {}).setdefault("services", {})["probe"] = {"value": "ok"}
    inv["settings"]["rollout"] = {"batch": "100%"}  # one batch: a fault's check is quicker
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "probe service, one batch")
    return Repo(dest)


# -- the daemon -----------------------------------------------------------------------------

class Daemon:
    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str]) -> None:
        self.config, self.port, self.log, self.env = config, port, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.unexpected_exits: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=self.env,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while not self.healthy():
            if self.proc.poll() is not None:
                self.unexpected_exits.append(f"exited {self.proc.returncode} at start")
                raise RuntimeError(f"gitops run exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not answer /healthz in 90 s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=3) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether it runs; an exit nobody asked for is recorded."""
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            self.unexpected_exits.append(f"exited {self.proc.returncode}")
            self.proc = None
            return False
        return True

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, path: str, body: dict[str, Any]) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {TOKEN}",
                                    "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid``."""
    parents, cmds = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            after = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry)], cmds[int(entry)] = int(after[1]), cmd
    out = []
    for child in parents:
        cur, hops = child, 0
        while cur in parents and hops < 64:
            cur, hops = parents[cur], hops + 1
            if cur == pid:
                out.append((child, cmds[child]))
                break
    return out


def workers(daemon: Daemon, kinds: tuple[str, ...] = ("apply", "verify")) -> list[int]:
    if daemon.proc is None:
        return []
    return [p for p, cmd in descendants(daemon.proc.pid)
            if any(f"gitops.workers.{k}" in cmd for k in kinds)]


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
        rows = {r["host"]: r for r in self.query("SELECT * FROM status WHERE environment='lab'")}
        for h in hosts:
            row = rows.get(h)
            if row is None or not (row["last_applied_revision"] or "").endswith(sha) \
                    or not (row["last_verified_revision"] or "").endswith(sha):
                return False
            if not any(c["type"] == "Ready" and c["status"] == "True"
                       for c in json.loads(row["conditions"])):
                return False
        return True


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
        self.receiver = Receiver()
        self.state_dir = work / "state"
        self.state_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={opts.tmpfs_mb}m", "tmpfs",
                        str(self.state_dir)], check=True)
        self.repo = make_campaign_repo(info, work / "repo")
        self.port = free_port()
        self.config = self.write_config(work / "gitops.toml", self.port)
        self.env = {**os.environ, "FAULTS_TOKEN": TOKEN,
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=self.env,
            start_new_session=True)
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
            self.daemon.api("/api/environments/lab/reconcile", {"reason": "host replaced"})
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
                              env=self.env, check=False)
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
        counts: Counter[str] = Counter()
        t0 = time.monotonic()
        for n, kind in enumerate(plan, 1):
            if self.opts.minutes and time.monotonic() - t0 > self.opts.minutes * 60:
                self.out(f"time budget of {self.opts.minutes:g} min spent: {n - 1} of "
                         f"{len(plan)} faults injected")
                break
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Out:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


LOSS_KINDS = ["run left running", "cut run not recorded interrupted", "lock held",
              "next reconcile did not verify every host", "commit status",
              "failed rollout without incident", "integrity_check", "daemon exited",
              "traceback", "second controller did not stop"]


def report(c: Campaign, out: Out, seconds: float) -> None:
    out()
    out(f"Campaign: {sum(c.injected.values())} faults in {seconds / 60:.0f} min, "
        f"{len(c.repo.kinds)} commits made ({Counter(c.repo.kinds.values())}), "
        f"{c.db.max_id()} runs recorded, {len(c.reached)} commits reached the daemon.")
    results = Counter(f"{r['kind']} {r['result']}" for r in c.db.query(
        "SELECT kind, result FROM runs WHERE event = 0"))
    out(f"Runs by kind and result: {', '.join(f'{k}: {v}' for k, v in sorted(results.items()))}; "
        f"{c.cut_runs} run(s) cut by a kill of the daemon.")
    out()
    out("| fault | injected | survived (no loss) |")
    out("|---|---|---|")
    for kind in ("kill", "net", "power", "disk", "remote", "second"):
        out(f"| {kind} | {c.injected[kind]} | {c.survived[kind]} |")
    out()
    out("| loss | count | examples |")
    out("|---|---|---|")
    for kind in LOSS_KINDS + sorted(set(c.losses) - set(LOSS_KINDS)):
        examples = "; ".join(c.examples.get(kind, [])[:3]).replace("|", "/")
        out(f"| {kind} | {c.losses[kind]} | {examples} |")
    out()
    out(f"**faults**: {sum(c.injected.values())} injected, {sum(c.survived.values())} "
        f"survived without loss, {sum(c.losses.values())} losses")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_name = (os.environ.get("GITOPS_LAB_NAME", "fa")[:2] + "camp")[:8]
    parser.add_argument("--name", default=default_name, help="the lab (<= 8 characters)")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--net", type=int, default=20)
    parser.add_argument("--power", type=int, default=10)
    parser.add_argument("--disk", type=int, default=5)
    parser.add_argument("--remote", type=int, default=10)
    parser.add_argument("--second", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="every count 2")
    parser.add_argument("--commit-every", type=float, default=3)
    parser.add_argument("--converge-s", type=float, default=300,
                        help="how long the next good commit may take to verify everywhere")
    parser.add_argument("--tmpfs-mb", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=0,
                        help="stop injecting after this long (0: every fault of the counts)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gitops-faults.md"))
    opts = parser.parse_args()
    if opts.quick:
        for key in ("kills", "net", "power", "disk", "remote", "second"):
            setattr(opts, key, 2)
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")
    out = Out(opts.out)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        header("faults: the daemon under a fault campaign",
               "python bench/faults.py " + " ".join(sys.argv[1:]))
    for line in buf.getvalue().splitlines():
        out(line)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    out(f"gitops code: commit {rev}")
    out()
    work = Path("/tmp") / f"gitops-bench-{opts.name}"
    if work.exists():
        subprocess.run(["umount", "-l", str(work / "state")], check=False,
                       capture_output=True)
        shutil.rmtree(work)
    work.mkdir(parents=True)
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
                report(campaign, out, time.monotonic() - start)
        finally:
            if campaign is not None:
                campaign.close()
            with contextlib.suppress(Exception):
                lab_down(opts.name)


if __name__ == "__main__":
    main()
