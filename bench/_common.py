"""Shared helpers of the benchmark scripts in ``bench/`` (not a benchmark itself).

Each benchmark brings up its own lab (``bench1``, ``bench2``, ...), builds a temporary Git
state repository from the project's sample (``deploys/`` and ``inventories/lab.yml``) pointed
at that lab's hosts and key, times alternating rounds and prints ratios of medians. The
daemon benchmarks (daemon, soak, faults, controllers, promotion) share here a ``gitops run``
subprocess (``Daemon``), the processes below it (``descendants``), a receiver of commit
statuses and notifications (``Receiver``), the ``probe`` service whose check a commit can
break (``write_probe``), a read of the status record (``verified_everywhere``) and the
writing of their section of ``bench/RESULTS.md`` (``save_section``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import yaml

import gitops.lab as lab
from gitops.lab.hostsource import LAB
from gitops.model import DeclaredState
from gitops.pipeline.load import load

ROOT = Path(__file__).resolve().parent.parent
"""The project checkout: its ``deploys/`` and ``inventories/lab.yml`` are the sample."""

ENVIRONMENT = "lab"


def tool(name: str) -> str | None:
    """The command ``name`` installed beside this Python (a venv's ``bin``) first, then on
    PATH: ``.venv/bin/python bench/...`` finds the venv's pyinfra without an activated venv."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (it brings up a gitops lab)")


def lab_up(name: str, hosts: int) -> lab.LabInfo:
    """Bring lab ``name`` up with ``hosts`` hosts, taking down a leftover of an earlier run."""
    if lab.current(name) is not None:
        lab.down(name)
    return lab.up(hosts=hosts, name=name)


def lab_down(name: str) -> None:
    lab.down(name)


def make_repo(info: lab.LabInfo, dest: Path, services: Iterable[str] | None = None) -> Path:
    """A Git state repository at ``dest``: the committed sample's ``deploys/`` and
    ``inventories/lab.yml`` with ``hosts:`` replaced by the lab's hosts (all in group ``web``)
    and ``settings.lab`` naming the lab.

    ``services`` keeps only those services in the inventory (groups and host overrides).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    # the committed sample (HEAD), not the working tree other engineers may be editing
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "deploys", f"inventories/{ENVIRONMENT}.yml"],
        capture_output=True, check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    inv_file = dest / "inventories" / f"{ENVIRONMENT}.yml"
    inv = yaml.safe_load(inv_file.read_text())
    inv["settings"]["lab"] = info.name  # addresses and key from the lab (source: lab)
    inv["hosts"] = {h.name: {"groups": ["web"]} for h in info.hosts}
    if services is not None:
        keep = set(services)
        for group in inv.get("groups", {}).values():
            group["services"] = {k: v for k, v in group.get("services", {}).items() if k in keep}
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    git = ["git", "-C", str(dest), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench state"], check=True)
    return dest


def parse_args(doc: str | None, default_name: str) -> argparse.Namespace:
    """``--name`` (the lab) and ``--rounds``, the options every lab benchmark takes."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--name", default=default_name)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


@contextmanager
def sample_on_lab(name: str, hosts: int) -> Iterator[tuple[lab.LabInfo, Path, Path,
                                                         DeclaredState]]:
    """Lab ``name`` up with ``hosts`` hosts and the sample repository aimed at it: yields
    the lab, a work folder, the repository and its loaded state; the lab goes down after."""
    require_root()
    work = Path("/tmp") / f"gitops-bench-{name}"
    info = lab_up(name, hosts)
    try:
        repo = make_repo(info, work / "repo")
        yield info, work, repo, load_state(repo)
    finally:
        lab_down(name)


def load_state(repo: Path) -> DeclaredState:
    return load(repo, ENVIRONMENT, lab=LAB)


def timed(func: Callable[[], object]) -> float:
    """Wall seconds of ``func()``."""
    start = time.monotonic()
    func()
    return time.monotonic() - start


def run_checked(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, capturing output; exit with its output if it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def header(title: str, command: str) -> None:
    load1 = os.getloadavg()[0]
    print(f"# {title}")
    print()
    print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `{command}`")
    print()
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load1:.2f} "
          "at the start")
    print()


def print_table(figures: dict[str, list[float]]) -> None:
    """One row per measure: median, min, max and every round, in seconds."""
    print("| measure | median (s) | min (s) | max (s) | rounds (s) |")
    print("|---|---|---|---|---|")
    for label, values in figures.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {label} | {median(values):.2f} | {min(values):.2f} | {max(values):.2f} "
              f"| {rounds} |")
    print()


def ratio_line(name: str, num: list[float], den: list[float], goal: float) -> tuple[float, bool]:
    """Print the ratio of medians ``num/den`` against ``goal`` (met when ratio <= goal)."""
    ratio = median(num) / median(den)
    met = ratio <= goal
    print(f"Ratio {name}: {ratio:.2f} (goal <= {goal:g}): {'met' if met else 'NOT MET'}")
    print()
    return ratio, met


# -- the daemon benchmarks ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(repo: Path, *args: str, check: bool = True, who: str = "bench") -> str:
    """``git -C repo args`` as ``who``; its stdout, stripped."""
    return subprocess.run(["git", "-C", str(repo), "-c", f"user.name={who}", "-c",
                           f"user.email={who}@localhost", *args], check=check,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def code_line() -> str:
    """Which code a benchmark ran: the checkout's commit, and whether gitops/ was modified."""
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "gitops"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"gitops code: commit {rev}" + (" (gitops/ modified in the working tree)"
                                           if dirty else "")


class Out:
    """Each line to stdout and appended to a file at once (a cut benchmark keeps its lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # lines of several threads stay whole
        path.write_text("")

    def __call__(self, line: str = "") -> None:
        with self.lock:
            print(line, flush=True)
            with self.path.open("a") as f:
                f.write(line + "\n")

    def start(self, title: str, command: str) -> None:
        """The header (date, command, machine, load) and the code's commit."""
        for line in header_lines(title, command):
            self(line)
        self(code_line())
        self()


def header_lines(title: str, command: str) -> list[str]:
    return [f"# {title}", "", f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: "
            f"`{command}`", "", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f} at the start", ""]


def fresh_work(name: str) -> Path:
    """``/tmp/gitops-bench-NAME``, emptied (a state tmpfs an earlier run left mounted there
    is unmounted first)."""
    work = Path("/tmp") / f"gitops-bench-{name}"
    if (work / "state").is_mount():
        subprocess.run(["umount", "-l", str(work / "state")], check=False, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


class Proc(NamedTuple):
    pid: int
    state: str
    """``R``, ``S``, ``Z``... (``/proc/PID/stat``)."""
    cmd: str
    ppid: int = 0


def descendants(pid: int) -> list[Proc]:
    """Every process below ``pid``, zombies too."""
    parents: dict[int, int] = {}
    found: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            after = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry)] = int(after[1])
        found[int(entry)] = Proc(int(entry), after[0], cmd, int(after[1]))
    out = []
    for child in parents:
        cur, hops = child, 0
        while cur in parents and hops < 64:
            cur, hops = parents[cur], hops + 1
            if cur == pid:
                out.append(found[child])
                break
    return out


class Daemon:
    """A ``gitops run --config CONFIG`` subprocess, its stderr appended to ``log``."""

    def __init__(self, config: Path, port: int, log: Path, env: Mapping[str, str] | None = None,
                 *, cwd: Path | None = None, session: bool = True) -> None:
        self.config, self.port, self.log, self.cwd = config, port, log, cwd
        self.env = {**os.environ, **(env or {})}
        self.session = session
        self.proc: subprocess.Popen[bytes] | None = None
        self.unexpected_exits: list[str] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start it without waiting."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=self.env,
            cwd=str(self.cwd) if self.cwd else None, start_new_session=self.session)
        return self.proc

    def start(self, timeout: float = 90, step: float = 0.2) -> None:
        """Start it and wait until ``/healthz`` answers; RuntimeError when it exits first
        or does not answer in ``timeout`` seconds."""
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if proc.poll() is not None:
                self.unexpected_exits.append(f"exited {proc.returncode} at start")
                raise RuntimeError(f"gitops run exited {proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not answer /healthz in {timeout:g} s")
            time.sleep(step)

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
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 120) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, path: str, body: dict[str, Any], token: str) -> int:
        """POST ``body`` to the daemon's API as the operator of ``token``: the HTTP status
        (0 when it does not answer)."""
        try:
            return post(f"http://127.0.0.1:{self.port}{path}", json.dumps(body).encode(),
                        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        except OSError:
            return 0


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body``: the HTTP status, an error's too (OSError when nothing answers)."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


FINAL = ("success", "failure", "error")
"""The commit states that end a commit's status (``pending`` does not)."""


class Receiver:
    """Generic webhook notifications (``POST /hook``) and GitHub commit statuses (``POST
    /gh/repos/o/r/statuses/<sha>`` with a Bearer ``token``, answered 201 as GitHub does),
    as they arrive, on a loopback port."""

    def __init__(self, token: str) -> None:
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
                    if m and self.headers.get("Authorization") == f"Bearer {token}" and \
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


PROBE_DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files

files.put(name="Probe file", src=__import__("io").StringIO(host.data.get("value") + "\\n"),
          dest="/etc/gitops-probe", mode="0644")
"""
PROBE_MODEL = """\
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = "ok"
"""


def write_probe(repo: Path, *, exact: bool = True) -> None:
    """The ``probe`` service in ``repo/deploys``: it writes its ``value`` parameter to
    ``/etc/gitops-probe``; its check passes when the file says ``ok`` (or, not ``exact``,
    starts with it), so a commit breaks the check by giving another value."""
    probe = repo / "deploys/probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "deploy.py").write_text(PROBE_DEPLOY)
    test = ".strip() == \"ok\"" if exact else ".startswith(\"ok\")"
    (probe / "checks.py").write_text(
        "def test_probe_is_ok(host):\n"
        "    \"\"\"The probe file says ok.\"\"\"\n"
        f"    assert host.file(\"/etc/gitops-probe\").content_string{test}\n")
    (probe / "model.py").write_text(PROBE_MODEL)


def verified_everywhere(status: Iterable[Any], sha: str, hosts: Iterable[str]) -> bool:
    """Whether the status rows (of table ``status``) have ``sha`` applied, verified and
    Ready on every one of ``hosts``."""
    rows = {r["host"]: r for r in status}
    for h in hosts:
        row = rows.get(h)
        if row is None or not (row["last_applied_revision"] or "").endswith(sha) \
                or not (row["last_verified_revision"] or "").endswith(sha):
            return False
        if not any(c["type"] == "Ready" and c["status"] == "True"
                   for c in json.loads(row["conditions"])):
            return False
    return True


def save_section(name: str, text: str) -> None:
    """Put ``text`` as section ``## name`` of ``bench/RESULTS.md``, replacing the one there."""
    results = ROOT / "bench" / "RESULTS.md"
    current = results.read_text()
    section = f"## {name}\n\n" + text.rstrip() + "\n"
    match = re.search(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", current, flags=re.S | re.M)
    if match:
        current = current[: match.start()] + section + "\n" + current[match.end():].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + section
    results.write_text(current.rstrip("\n") + "\n")
