"""Benchmark of a preview: from a signed pull-request webhook to the comment at the receiver.

Run as root: ``python bench/preview.py [--runs 2]``. A ``gitops run`` daemon watches a
temporary copy of the sample (one host per group: one preview host), its commit statuses and
comments going to a local stand-in of the GitHub API (``tests/githost.py``). Each run pushes a
change of the app's message to the pull request's branch and sends GitHub's signed
``pull_request`` delivery; the figure is the wall time until the comment arrives (created,
then edited in place), split per stage as the preview recorded them (lab boot, base
converge, change, verify, teardown). Goal: 30 s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from githost import TOKEN, GitHost  # noqa: E402  (the test helper, beside the tests)

from gitops.record.store import Database  # noqa: E402

GOAL_S = 30.0
SECRET = "bench-preview-secret"
STAGES = ("fetch", "lab_up", "base", "change", "verify", "teardown")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (previews boot a gitops lab)")
    root = Path(tempfile.mkdtemp(prefix="bench-preview-"))
    repo = root / "repo"
    shutil.copytree(ROOT / "deploys", repo / "deploys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "inventories").mkdir()
    shutil.copy(ROOT / "inventories/lab.secrets.sops.yaml", repo / "inventories")
    inventory = yaml.safe_load((ROOT / "inventories/lab.yml").read_text())
    inventory["settings"]["lab"] = "bnone"  # the environment's own lab stays down
    path = repo / "inventories/lab.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", "add", "-A")
    git(repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid",
        "commit", "-q", "-m", "sample")
    github = GitHost("github")
    port = free_port()
    # preview labs <prefix>0..: named after $GITOPS_LAB_NAME, so two people's runs never meet
    prefix = (os.environ.get("GITOPS_LAB_NAME") or "bench")[:5] + "b"
    config = root / "gitops.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\nlisten = "127.0.0.1:{port}"\n'
        f'[preview]\nlab_prefix = "{prefix}"\n'
        f'[[environments]]\nname = "lab"\nrepo = "{repo}"\ninterval = 3600\n'
        'drift_interval = 3600\nwatch = false\nwebhook_secret = {env = "BENCH_HOOK"}\n'
        f'[[environments.commit_status]]\nprovider = "github"\napi_url = "{github.base}"\n'
        'repository = "acme/state"\ntoken = {env = "BENCH_TOKEN"}\n')
    log = (root / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gitops", "run", "--config", str(config)], stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "BENCH_HOOK": SECRET, "BENCH_TOKEN": TOKEN})
    rows = []
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        git(repo, "checkout", "-q", "-b", "change")
        for run in range(1, args.runs + 1):
            inventory["groups"]["web"]["services"]["app"]["message"] = f"Hello, run {run}"
            path.write_text(yaml.safe_dump(inventory, sort_keys=False))
            git(repo, "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid",
                "commit", "-qam", f"message {run}")
            sha = git(repo, "rev-parse", "HEAD")
            body = json.dumps({"action": "opened" if run == 1 else "synchronize", "number": 1,
                               "pull_request": {
                                   "head": {"ref": "change", "sha": sha,
                                            "repo": {"full_name": "acme/state"}},
                                   "base": {"ref": "main",
                                            "repo": {"full_name": "acme/state"}}}}).encode()
            signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            edits = github.comments[0].edits if github.comments else -1
            start = time.monotonic()
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/hooks/lab", data=body, method="POST",
                headers={"X-GitHub-Event": "pull_request", "Content-Type": "application/json",
                         "X-Hub-Signature-256": f"sha256={signature}"}), timeout=10)
            if not github.wait(lambda g, e=edits: bool(g.comments) and g.comments[0].edits > e,
                               600):
                sys.exit(f"no comment after 600 s; see {root / 'daemon.log'}")
            took = time.monotonic() - start
            with Database(root / "state").open(readonly=True) as store:
                row = store.previews(limit=1)[0]
                report = store.preview(row.id)
            stages = report.report.stages if report and report.report else {}
            rows.append((run, took, row.result, stages))
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=120)
        github.close()
        log.close()
    print(f"# preview: webhook to comment ({platform.node()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})\n")
    print("| run | result | " + " | ".join(STAGES) + " | webhook to comment | goal |")
    print("|---|---|" + "---|" * len(STAGES) + "---|---|")
    for run, took, result, stages in rows:
        cells = " | ".join(f"{stages.get(s, 0):.1f}" for s in STAGES)
        print(f"| {run} | {result} | {cells} | {took:.1f} s | ≤ {GOAL_S:.0f} s"
              f" {'met' if took <= GOAL_S else 'missed'} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
