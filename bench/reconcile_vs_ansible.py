"""Benchmark: a full ``gitops reconcile --once`` with nothing to change vs ``ansible-playbook``.

Run as root: ``python bench/reconcile_vs_ansible.py [--name bench3] [--rounds 5]``. Needs
ansible-core (``pip install ansible-core``, or the project's ``bench`` extra); exits 2 without.

Brings up lab NAME with 3 hosts. For equal work, both sides manage services ``base`` and
``web`` only: the gitops side reconciles a variant of the sample inventory with only those two
services (plan + apply + verify, including the web checks), the Ansible side runs
``bench/ansible/playbook.yml`` (the same tasks with ansible.builtin modules, reading the same
templates and files) with ``-f 20``; web's ``requires: [app]`` is dropped from that variant,
and ``prune: false`` set, as the app is left running by the first converge and managed (or
removed) by neither side. The hosts are
first converged with the full sample (the web checks proxy to the app, which must therefore
run), then once by each side; then ROUNDS alternate
``gitops reconcile --once --repo REPO --state-dir STATE --environment lab`` and
``ansible-playbook -i INVENTORY -f 20 playbook.yml``, both as CLI processes. Ansible runs with
its defaults (SSH ControlPersist 60s, so its connections are reused between rounds) plus
pipelining, without fact gathering. Prints a table, per-stage medians of the reconcile (from
``gitops history --json``), the ratio of medians (goal <= 0.7) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml
from _common import (
    ENVIRONMENT,
    ROOT,
    git,
    header,
    lab_down,
    lab_up,
    load_state,
    make_repo,
    median,
    print_table,
    ratio_line,
    require_root,
    run_checked,
    timed,
    tool,
)

from gitops.model import DeclaredState

GOAL = 0.7
HOSTS = 3
SERVICES = ("base", "web")
PLAYBOOK = ROOT / "bench" / "ansible" / "playbook.yml"


def ansible_inventory(state: DeclaredState, path: Path) -> Path:
    """Group ``web`` with each host's SSH settings and its services' parameters as host vars."""
    hosts: dict[str, dict[str, object]] = {}
    for h in state.hosts:
        data: dict[str, object] = {
            "ansible_host": h.address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": h.ssh.key_file,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        for params in h.services.values():
            data.update(params)
        data["env_name"] = data.pop("environment", "")  # reserved name in Ansible
        hosts[h.name] = data
    path.write_text(yaml.safe_dump({"web": {"hosts": hosts}}, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="bench3")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    playbook_bin = tool("ansible-playbook")
    if playbook_bin is None:
        print("ansible-playbook not found: install ansible-core with `pip install ansible-core` "
              "(or `pip install -e '.[bench]'`)", file=sys.stderr)
        sys.exit(2)
    require_root()

    work = Path("/tmp") / f"gitops-bench-{opts.name}"
    state_dir = work / "state"
    shutil.rmtree(work, ignore_errors=True)
    info = lab_up(opts.name, HOSTS)
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    try:
        full = make_repo(info, work / "repo-full")
        repo = make_repo(info, work / "repo", services=SERVICES)
        # web requires app on its host (deploys/web/service.yml); the app runs from the full
        # converge, and neither side manages (nor removes) it in the rounds: equal work
        (repo / "deploys" / "web" / "service.yml").unlink()
        inv_file = repo / "inventories" / f"{ENVIRONMENT}.yml"
        inv = yaml.safe_load(inv_file.read_text())
        inv["settings"]["prune"] = False
        inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
        git(repo, "commit", "-qam", "base and web only, the app left in place")
        state = load_state(repo)
        assert set(state.service_order) == set(SERVICES), state.service_order
        inventory = ansible_inventory(state, work / "ansible-inventory.yml")
        sample = repo / "deploys"

        def reconcile(source: Path) -> None:
            run_checked([sys.executable, "-m", "gitops", "reconcile", "--once", "--repo",
                         str(source), "--state-dir", str(state_dir), "--environment",
                         ENVIRONMENT], timeout=900)

        changed: list[int] = []

        def ansible() -> None:
            proc = run_checked([playbook_bin, "-i", str(inventory), "-f", "20", str(PLAYBOOK),
                                "-e", f"sample={sample}"], env=env, timeout=900)
            changed.append(sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout)))

        header(
            f"reconcile: `gitops reconcile --once` vs `ansible-playbook` ({HOSTS} lab hosts, "
            f"services {' + '.join(SERVICES)} on both sides, nothing to change, "
            f"{opts.rounds} alternating rounds)",
            f"python bench/reconcile_vs_ansible.py --name {opts.name} --rounds {opts.rounds}",
        )
        first = timed(lambda: reconcile(full))  # base, app, web: the app serves the web checks
        reconcile(repo)
        ansible()
        reconcile(repo)
        figures: dict[str, list[float]] = {"gitops reconcile": [], "ansible-playbook": []}
        changed.clear()
        for _ in range(opts.rounds):
            figures["gitops reconcile"].append(timed(lambda: reconcile(repo)))
            figures["ansible-playbook"].append(timed(ansible))
        history = json.loads(run_checked(
            [sys.executable, "-m", "gitops", "history", "--json", "--state-dir", str(state_dir),
             "--environment", ENVIRONMENT, "--limit", str(opts.rounds)]).stdout)
    finally:
        lab_down(opts.name)

    runs = history if isinstance(history, list) else history.get("runs", [])
    runs = runs[: opts.rounds]
    print(f"First reconcile of the full sample (base, app, web) on fresh hosts (converging, not "
          f"compared): {first:.2f} s")
    print()
    print(f"ansible: `ansible-playbook -i INVENTORY -f 20 bench/ansible/playbook.yml -e "
          f"sample=REPO/deploys` (pipelining on, no fact gathering); tasks changed per round "
          f"(all hosts): {changed}")
    print()
    print_table(figures)
    stages: dict[str, list[float]] = {}
    for run in runs:
        for stage, secs in run.get("stage_s", {}).items():
            stages.setdefault(stage, []).append(float(secs))
    results = [run.get("result") for run in runs]
    applied = [run.get("changed", run.get("changes")) for run in runs]
    print(f"Reconcile stages, median of the {len(runs)} timed runs (from `gitops history "
          f"--json`, stage_s); results {results}" + (f", changes {applied}" if any(
              a is not None for a in applied) else "") + ":")
    print()
    print("| stage | median (s) |")
    print("|---|---|")
    for stage, values in stages.items():
        print(f"| {stage} | {median(values):.2f} |")
    print()
    ratio, met = ratio_line("gitops reconcile / ansible-playbook", figures["gitops reconcile"],
                            figures["ansible-playbook"], GOAL)
    print(
        f"**reconcile_vs_ansible**: gitops reconcile (plan+apply+verify, base+web) "
        f"{median(figures['gitops reconcile']):.2f} s vs ansible-playbook "
        f"{median(figures['ansible-playbook']):.2f} s on {HOSTS} converged hosts "
        f"(median of {opts.rounds}), ratio {ratio:.2f}, goal <= {GOAL:g}: "
        f"{'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
