"""Benchmark of real Vagrant VMs (libvirt) reconciled by gitops: 1 VM and 3 VMs side by side.

Run as root on Debian 12 with the packages of ``./test.sh``:
``python bench/vagrant.py [--counts 1,3] [--cached-box] [--no-guard] [--no-results]``.

Times, with the wall clock of each CLI command: the box build from an empty cache, added to a
Vagrant home of its own (``gitops vagrant box``, once; ``--cached-box`` skips it), then per VM
count: ``gitops vagrant up`` (libvirt, isolation, ``vagrant up``), ``gitops plan``, the first
``reconcile --once``, a no-change reconcile (which must change nothing), ``gitops verify``,
``gitops vagrant down``; and QEMU's resident memory per VM once they are up. The state
repository is the sample (``deploys/``, ``inventories/vagrant.yml`` cut to the machines
booted), in a temporary Git repository.
``--no-guard`` turns the sample's guarded ``base`` into an unguarded one. Prints a Markdown
table and puts it in ``bench/RESULTS.md`` (section ``vagrant``) unless ``--no-results``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import save_section

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ("web1", "web2", "app1")
STEPS = ("vagrant up", "plan", "first reconcile", "no-change reconcile", "verify",
         "vagrant down")


def gitops(*args: str, env: dict[str, str], timeout: float = 3600) -> tuple[float, str]:
    """Wall seconds and stdout of ``python -m gitops ARGS``; exits if it fails."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gitops", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"gitops {' '.join(args)} failed ({proc.returncode}):\n"
                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took, proc.stdout


def state_repo(root: Path, machines: tuple[str, ...], guard: bool) -> Path:
    """The sample, its Vagrant inventory cut to ``machines``, committed in a new repository."""
    repo = root / "repo"
    shutil.copytree(ROOT / "deploys", repo / "deploys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not guard:
        service = repo / "deploys/base/service.yml"
        service.write_text(service.read_text().replace("guard: true", "guard: false"))
    inventory = yaml.safe_load((ROOT / "inventories/vagrant.yml").read_text())
    inventory["hosts"] = {n: h for n, h in inventory["hosts"].items() if n in machines}
    (repo / "inventories").mkdir()
    (repo / "inventories/vagrant.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q",
                  "-m", "sample"]):
        subprocess.run(["git", *args], cwd=repo, check=True, timeout=60)
    return repo


def qemu_rss_mb(prefix: str) -> list[float]:
    """Resident MB of each QEMU process whose guest name starts with ``prefix``."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"qemu-system-x86_64"):
            continue
        if not any(a.startswith(f"guest={prefix}".encode()) for a in argv):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return sizes


def one_count(count: int, base: Path, guard: bool, subnet: str) -> dict[str, float]:
    machines = MACHINES[:count]
    folder = base / f"vms{count}-{os.getpid()}"  # the libvirt domains' prefix: unique
    folder.mkdir()
    shutil.copy(ROOT / "Vagrantfile", folder / "Vagrantfile")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    env.update(GITOPS_VAGRANT_DIR=str(folder), GITOPS_VAGRANT_MACHINES=",".join(machines),
               GITOPS_VAGRANT_SUBNET=subnet)
    repo = state_repo(base / f"state{count}", machines, guard)
    target = ["--repo", str(repo), "-e", "vagrant", "--state-dir", str(base / f"db{count}")]
    figures: dict[str, float] = {}
    try:
        figures["vagrant up"], _ = gitops("vagrant", "up", *machines, env=env)
        rss = qemu_rss_mb(f"{folder.name}_")
        figures["QEMU RSS per VM (MB)"] = sum(rss) / len(rss) if rss else 0.0
        figures["plan"], _ = gitops("plan", *target, env=env)
        figures["first reconcile"], _ = gitops("reconcile", "--once", *target, env=env)
        took, out = gitops("reconcile", "--once", "--json", *target, env=env)
        changed = sum(op["status"] == "changed" for h in json.loads(out)["apply"]["hosts"]
                      for op in h["ops"])
        if changed:
            sys.exit(f"the no-change reconcile of {count} VM(s) changed {changed} operation(s)")
        figures["no-change reconcile"] = took
        figures["verify"], _ = gitops("verify", *target, env=env)
    finally:
        figures["vagrant down"], _ = gitops("vagrant", "down", env=env)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1,3", help="VM counts, comma-separated (1-3).")
    parser.add_argument("--cached-box", action="store_true", help="Do not time a box build.")
    parser.add_argument("--no-guard", action="store_true", help="base unguarded.")
    parser.add_argument("--no-results", action="store_true", help="Leave RESULTS.md alone.")
    parser.add_argument("--subnet", default="192.168.57",
                        help="The VMs' private network (GITOPS_VAGRANT_SUBNET): not the "
                             "default 192.168.56, so the test suite's VM may run meanwhile.")
    opts = parser.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]
    if os.geteuid() != 0 or any(not 1 <= c <= len(MACHINES) for c in counts):
        sys.exit("bench/vagrant.py: run as root, with --counts among 1..3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    box = None
    with tempfile.TemporaryDirectory(prefix="gitops-bench-vagrant-") as tmp:
        if not opts.cached_box:  # a build from nothing, added to a Vagrant of its own
            box, _ = gitops("vagrant", "box", env={
                **env, "GITOPS_CACHE_DIR": f"{tmp}/cache", "VAGRANT_HOME": f"{tmp}/vagrant.d"})
            shutil.rmtree(f"{tmp}/cache")
            shutil.rmtree(f"{tmp}/vagrant.d")
        gitops("vagrant", "box", env=env)  # the VMs' box: cached unless its recipe changed
        results: dict[int, dict[str, float]] = {}
        for count in counts:
            results[count] = one_count(count, Path(tmp), guard=not opts.no_guard,
                                       subnet=opts.subnet)
    load = os.getloadavg()[0]
    lines = [
        f"### Vagrant VMs (libvirt, QEMU's emulator unless KVM is usable), "
        f"{', '.join(str(c) for c in counts)} VM(s), sample "
        f"{'with base unguarded' if opts.no_guard else 'as shipped'}",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load:.2f} at "
        "the end. Seconds of wall time per command.",
        "",
        "| step | " + " | ".join(f"{c} VM{'s' if c > 1 else ''}" for c in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    if box is not None:
        lines.append("| box build and add (`gitops vagrant box`, empty cache, once) | "
                     f"{box:.1f} s |" + " |" * (len(counts) - 1))
    for step in (*STEPS[:1], "QEMU RSS per VM (MB)", *STEPS[1:]):
        unit = "" if "MB" in step else " s"
        lines.append(f"| {step} | " + " | ".join(
            f"{results[c][step]:.{0 if 'MB' in step else 1}f}{unit}" for c in counts) + " |")
    text = "\n".join(lines)
    print(text)
    if not opts.no_results:
        save_section("vagrant", text)


if __name__ == "__main__":
    main()
