"""The lab's base image and package mirror contents, built once and cached.

``ensure_image()`` (called by ``gitops.lab.up``) returns the cache folder
``$GITOPS_CACHE_DIR/lab-image-<recipehash>/`` holding ``rootfs/`` (a debootstrapped Debian 12
with systemd, sshd, python3 and sudo) and ``mirror/`` (the .debs of ``MIRROR_PACKAGES`` and
everything they need that the image lacks, with ``Packages.gz``). Building is the only lab step
that reaches the package registries; it happens in a temp folder renamed atomically at the end,
and then removes the images of older recipes that no running lab uses.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from gitops.lab.common import LabError, cache_dir, cmdlines, run

__all__ = [
    "INCLUDE",
    "MIRROR_PACKAGES",
    "MIRROR_SOURCES",
    "RECIPE_VERSION",
    "SUITE",
    "ensure_image",
    "image_dir",
    "inst_packages",
    "prune_images",
    "recipe",
    "recipe_hash",
]

SUITE = "bookworm"
INCLUDE = ("systemd", "systemd-sysv", "openssh-server", "python3", "iproute2", "dbus", "sudo")

MIRROR_PACKAGES: tuple[str, ...] = ("nginx", "tzdata", "curl")
"""Every package the lab mirror carries (plus what they need): the ONE place to declare them."""

RECIPE_VERSION = 2
"""Bump when the post-debootstrap steps below change, so the cached image is rebuilt."""

MIRROR_SOURCES = "etc/apt/sources.list.d/gitops-lab.list"
"""In-image path of the apt source that each lab bind-mounts to point at its mirror."""


def recipe() -> dict[str, object]:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "include": list(INCLUDE),
        "mirror_packages": list(MIRROR_PACKAGES),
        "version": RECIPE_VERSION,
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def image_dir() -> Path:
    return cache_dir() / f"lab-image-{recipe_hash()}"


def _umount_under(path: Path) -> None:
    """Unmount whatever a killed build left mounted inside ``path`` (deepest first)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        run(["umount", "-l", point], timeout=30, check=False)


def inst_packages(output: str) -> list[str]:
    """Package names from ``apt-get install -s`` output ("Inst name (version ...)")."""
    return [m.group(1) for m in re.finditer(r"^Inst (\S+) ", output, re.MULTILINE)]


def _build(tmp: Path, log: list[str]) -> None:
    rootfs = tmp / "rootfs"
    mirror = tmp / "mirror"
    rootfs.mkdir(parents=True)
    mirror.mkdir()
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            SUITE,
            str(rootfs),
        ],
        timeout=1200,
    )
    chroot = ["chroot", str(rootfs)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    run([*chroot, "apt-get", "update"], timeout=600, env=env)
    sim = run([*chroot, "apt-get", "install", "-s", *MIRROR_PACKAGES], timeout=300, env=env)
    needed = inst_packages(sim.stdout)
    log.append("mirror packages: " + " ".join(needed))
    archives = "/var/cache/apt/archives"
    run([*chroot, "apt-get", "clean"], timeout=60, env=env)  # drop debootstrap's own .debs
    run(
        [*chroot, "apt-get", "install", "-y", "--download-only", *MIRROR_PACKAGES],
        timeout=900,
        env=env,
    )
    debs = sorted((rootfs / archives.lstrip("/")).glob("*.deb"))
    got = {deb.name.split("_", 1)[0] for deb in debs}
    lacking = [pkg for pkg in needed if pkg not in got]
    if lacking:
        raise LabError(f"image build: no .deb downloaded for {', '.join(lacking)}")
    for deb in debs:
        shutil.move(str(deb), mirror / deb.name)
    scan = run(["dpkg-scanpackages", "-m", ".", "/dev/null"], timeout=300, cwd=mirror)
    (mirror / "Packages").write_text(scan.stdout)
    with gzip.open(mirror / "Packages.gz", "wt") as gz:
        gz.write(scan.stdout)
    # The image only knows the lab mirror: no default sources, no stale lists.
    run([*chroot, "apt-get", "clean"], timeout=60, env=env)
    lists = rootfs / "var/lib/apt/lists"
    for entry in lists.iterdir():
        if entry.is_file():
            entry.unlink()
    (rootfs / "etc/apt/sources.list").write_text("")
    (rootfs / MIRROR_SOURCES).write_text("# bind-mounted by gitops lab: the lab's mirror\n")
    # The base /etc/hostname would win over nspawn --hostname.
    (rootfs / "etc/hostname").unlink(missing_ok=True)
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text("")
    (rootfs / "etc/ssh/sshd_config.d/gitops-lab.conf").write_text(
        "UseDNS no\nPermitRootLogin prohibit-password\n"
    )
    (tmp / "recipe.json").write_text(json.dumps(recipe(), indent=2) + "\n")


def ensure_image(progress: bool = False) -> Path:
    """The cached image folder for the current recipe, building it first if missing."""
    final = image_dir()
    if (final / "recipe.json").exists():
        return final
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "lab-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time on this machine
        if (final / "recipe.json").exists():
            return final
        for stale in base.glob(".lab-image-*.tmp"):
            _umount_under(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".lab-image-{recipe_hash()}-{os.getpid()}.tmp"
        if progress:
            print(f"gitops lab: building base image {final} (once; about a minute)", flush=True)
        log: list[str] = []
        try:
            _build(tmp, log)
            os.rename(tmp, final)
        except BaseException:
            _umount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        prune_images(keep=final)
    return final


def prune_images(keep: Path) -> list[Path]:
    """Remove cached images of older recipes that no running process (lab host or mirror)
    uses; return what was removed."""
    in_use = [" ".join(argv) for argv in cmdlines().values()]
    removed = []
    for old in cache_dir().glob("lab-image-*"):
        if old == keep or not old.is_dir() or any(str(old) in line for line in in_use):
            continue
        _umount_under(old)
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed
