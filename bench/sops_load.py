"""Benchmark: loading a revision with SOPS-encrypted values and a file vs the same in plain text.

Two snapshots of the sample (``deploys/`` + ``inventories/lab.yml``), identical but for where
their 20 secret values and one file live: the plain one has the values in the inventory
(``groups.all.vars``) and ``deploys/app/files/settings.conf`` in clear; the encrypted one
has the values in ``inventories/lab.secrets.sops.yaml`` and the file as
``deploys/app/files/settings.sops.conf``, both encrypted for an age key (as ``sops`` writes
them). Each round loads both (``gitops.pipeline.load.load``, alternating), each timed with
``time.perf_counter``; medians are compared. Goal: at most 100 ms more for the encrypted one.

    python bench/sops_load.py [--rounds 30] [--no-results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pyrage import x25519

from gitops.pipeline import sops
from gitops.pipeline.load import load
from gitops.settings import SecretRef, SopsSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
VALUES = 20
GOAL_MS = 100.0
FILE_TEXT = "".join(f"SETTING_{i}=value-{i}-{'x' * 24}\n" for i in range(40))


def _sample(dest: Path) -> dict[str, Any]:
    shutil.copytree(ROOT / "deploys", dest / "deploys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "inventories").mkdir()
    inventory: dict[str, Any] = yaml.safe_load((ROOT / "inventories/lab.yml").read_text())
    # addresses of its own (TEST-NET, never contacted): loading needs no lab up
    inventory["settings"]["source"] = "inventory"
    for i, host in enumerate(inventory["hosts"].values(), start=1):
        host["address"] = f"192.0.2.{i}"
    return inventory


def build(base: Path, recipient: str) -> tuple[Path, Path]:
    """The plain and the encrypted snapshot folders."""
    values = {f"secret_{i}": f"s3cret-value-{i}-{os.urandom(8).hex()}" for i in range(VALUES)}
    plain, encrypted = base / "plain", base / "encrypted"
    inv = _sample(plain)
    inv["groups"]["all"]["vars"] = dict(values)
    (plain / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    (plain / "deploys/app/files/settings.conf").write_text(FILE_TEXT)

    inv = _sample(encrypted)
    (encrypted / "inventories/lab.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    secrets = sops.encrypt({"groups": {"all": {"vars": values}}}, [recipient])
    (encrypted / "inventories/lab.secrets.sops.yaml").write_text(sops.to_yaml(secrets))
    doc = sops.encrypt({"data": FILE_TEXT}, [recipient])
    (encrypted / "deploys/app/files/settings.sops.conf").write_text(json.dumps(doc, indent=4))
    return plain, encrypted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    load_avg = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="gitops-bench-sops-") as tmp:
        base = Path(tmp)
        identity = x25519.Identity.generate()
        key_file = base / "age.key"
        key_file.write_text(f"{identity}\n")
        keys = SopsSettings(age_key=SecretRef(file=key_file))
        plain, encrypted = build(base, str(identity.to_public()))
        a, b = load(plain, "lab"), load(encrypted, "lab", keys=keys)  # warm-up, and a check:
        assert a.host("lab-1").vars == b.host("lab-1").vars and len(b.redact) >= VALUES
        assert "deploys/app/files/settings.sops.conf" in b.secret_files
        times: dict[str, list[float]] = {"plain": [], "encrypted": []}
        for _ in range(args.rounds):
            for name, root, k in (("plain", plain, None), ("encrypted", encrypted, keys)):
                started = time.perf_counter()
                load(root, "lab", keys=k)
                times[name].append((time.perf_counter() - started) * 1000)

    med = {name: statistics.median(v) for name, v in times.items()}
    diff = med["encrypted"] - med["plain"]
    met = "met" if diff <= GOAL_MS else "NOT met"
    rows = ["| revision | median (ms) | min (ms) | max (ms) |", "|---|---|---|---|"]
    rows += [f"| {name} | {med[name]:.1f} | {min(v):.1f} | {max(v):.1f} |"
             for name, v in times.items()]
    summary = (f"**sops_load**: loading the sample with {VALUES} SOPS-encrypted values and one "
               f"encrypted file (age) {med['encrypted']:.1f} ms vs {med['plain']:.1f} ms in "
               f"plain text (median of {args.rounds}): +{diff:.1f} ms, goal <= "
               f"{GOAL_MS:.0f} ms: {met}")
    print("\n".join(rows))
    print(summary)
    if not args.no_results:
        section = "\n".join([
            "", "## sops_load", "",
            f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: "
            f"`python bench/sops_load.py --rounds {args.rounds}`", "",
            f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
            f"{load_avg:.2f} at the start", "", *rows, "", summary, ""])
        with RESULTS.open("a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
