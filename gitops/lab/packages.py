"""Packages a state repository declares for the lab: ``lab: {packages: [...]}`` in an inventory.

The lab's built-in mirror carries what the sample needs (``image.MIRROR_PACKAGES``). Any other
package a repository's deploys install is declared in the inventory and provided here, called
by the loader (``gitops.pipeline.load``) for an inventory with ``source: lab``: what the lab does
not
have yet is downloaded once on this machine by its own apt, from this machine's configured
Debian sources, with everything it needs that the base image lacks (recommends included, as
``apt-get install`` on a host installs them), into the lab's ``extra/`` folder. The lab's mirror
serves that folder as a second repository (``/extra/``); each host is then told to
``apt-get update``. Lab hosts still reach nothing but the lab's bridge.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import re
import shutil
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gitops.lab.common import LabError, LabInfo, run

__all__ = ["extra_source_line", "provide"]

EXTRA = "extra"
"""The lab state folder's subfolder of declared packages, and its path on the mirror."""

_UNKNOWN = re.compile(r"Unable to locate package (\S+)")


def extra_source_line(mirror_url: str) -> str:
    """The apt source line of the declared packages' repository."""
    return f"deb [trusted=yes] {mirror_url}{EXTRA}/ ./\n"


def provide(info: LabInfo, packages: Sequence[str]) -> list[str]:
    """Make ``packages`` installable on the hosts of lab ``info``; return those newly added.

    Raises LabError naming a package this machine's Debian sources do not have, or a lab whose
    mirror predates declared packages.
    """
    folder = info.state_dir / EXTRA
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two reconciles of one lab at once download once
        done_file = folder / "declared.json"
        done = set(json.loads(done_file.read_text())) if done_file.exists() else set()
        wanted = sorted(set(packages) - done)
        if not wanted:
            return []
        _download(_image_rootfs(info), folder, wanted)
        _index(folder)
        done_file.write_text(json.dumps(sorted(done | set(wanted))) + "\n")
        _check_served(info)
        _add_source(info)
        _update_hosts(info)
    return wanted


def _image_rootfs(info: LabInfo) -> Path:
    data = json.loads((info.state_dir / "lab.json").read_text())
    return Path(str(data["image"])) / "rootfs"


def _download(rootfs: Path, folder: Path, packages: list[str]) -> None:
    """The .debs of ``packages`` and what they need beyond the base image, into ``folder``."""
    cache = folder / ".download"
    shutil.rmtree(cache, ignore_errors=True)
    (cache / "partial").mkdir(parents=True)
    args = [
        "apt-get", "install", "-y", "-q", "--download-only",
        "-o", f"Dir::State::status={rootfs / 'var/lib/dpkg/status'}",
        "-o", f"Dir::Cache::archives={cache}",
        "-o", "APT::Install-Recommends=true",
        "-o", "Debug::NoLocking=1",
        *packages,
    ]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    proc = run(args, timeout=900, check=False, env=env)
    if proc.returncode != 0 and _UNKNOWN.search(proc.stderr):
        run(["apt-get", "update", "-q"], timeout=600, env=env)  # this machine's lists, stale
        proc = run(args, timeout=900, check=False, env=env)
    if proc.returncode != 0:
        unknown = _UNKNOWN.findall(proc.stderr)
        if unknown:
            raise LabError(f"package {', '.join(unknown)} is not in this machine's Debian "
                           "sources (apt-cache policy NAME)", exit_code=2)
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"downloading {', '.join(packages)}: {last[-1] if last else 'failed'}")
    for deb in cache.glob("*.deb"):
        shutil.move(str(deb), folder / deb.name)
    shutil.rmtree(cache, ignore_errors=True)


def _index(folder: Path) -> None:
    scan = run(["dpkg-scanpackages", "-m", ".", "/dev/null"], timeout=300, cwd=folder)
    (folder / "Packages").write_text(scan.stdout)
    with gzip.open(folder / "Packages.gz", "wt") as gz:
        gz.write(scan.stdout)


def _check_served(info: LabInfo) -> None:
    url = f"{info.mirror_url}{EXTRA}/Packages"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read(1)
    except OSError as exc:
        raise LabError(f"lab {info.name}'s mirror does not serve declared packages ({exc}); "
                       f"it was started by an older gitops: run `gitops lab down --name "
                       f"{info.name}` and `gitops lab up --name {info.name}`") from None


def _add_source(info: LabInfo) -> None:
    """Add the repository to the hosts' apt source, in place: the file is bind-mounted into
    every host, so it must stay the same file."""
    sources = info.state_dir / "sources.list"
    line = extra_source_line(info.mirror_url)
    if line not in sources.read_text():
        with open(sources, "a") as fh:
            fh.write(line)


def _update_hosts(info: LabInfo) -> None:
    """``apt-get update`` on every host, so a deploy's cached package lists know the new ones."""

    def update(host: str) -> None:
        run(["ssh", "-F", str(info.ssh_config), "-o", "BatchMode=yes", host,
             "apt-get", "update", "-q"], timeout=300)

    with ThreadPoolExecutor(max_workers=min(len(info.hosts), 16) or 1) as pool:
        list(pool.map(update, [h.name for h in info.hosts]))
