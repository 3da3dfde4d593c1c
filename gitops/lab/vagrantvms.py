"""Vagrant VMs of a ``Vagrantfile`` under libvirt, on this machine: ``gitops vagrant box|up|down``.

``add_box()`` builds the box if its recipe changed (``gitops.lab.vagrantbox``) and adds it to
Vagrant under ``debian/bookworm64`` unless Vagrant already holds that very build; a replaced
box's old volume is removed from libvirt's pool. ``up()`` starts libvirt, adds the box, isolates
the VM networks (``gitops.lab.libvirt``) and runs ``vagrant up --provider=libvirt`` with
``GITOPS_VAGRANT_KVM`` from KVM detection (unless set). ``down()`` runs ``vagrant destroy -f``,
then, when no libvirt domain runs any more, removes the isolation and restores forwarding.
Errors are :class:`LabError`: exit code 2 for what the user must install or fix (root, tools,
no Vagrantfile), 1 for a failure at run time (a build, a VM that never answered SSH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gitops.lab import libvirt
from gitops.lab.common import LabError
from gitops.lab.vagrantbox import BOX_NAME, added_digest, box_dir, ensure_box, recipe_hash

__all__ = [
    "BoxResult",
    "add_box",
    "check_prerequisites",
    "down",
    "up",
    "vagrant_env",
]

BUILD_TOOLS = ("debootstrap", "dpkg-scanpackages", "qemu-img", "losetup", "mkfs.ext4")
VM_TOOLS = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "iptables")


@dataclass(frozen=True)
class BoxResult:
    """The box file, its recipe digest, and what this call had to do."""

    path: Path
    digest: str
    built: bool
    added: bool
    seconds: float


def check_prerequisites(tools: Sequence[str] = (*BUILD_TOOLS, *VM_TOOLS)) -> None:
    """Root and every tool, else one line naming what to install (exit code 2)."""
    problems = [] if os.geteuid() == 0 else ["must run as root"]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)}; install: apt-get install "
                        f"{libvirt.LIBVIRT_PACKAGES}")
    if problems:
        raise LabError("gitops vagrant: " + "; ".join(problems), exit_code=2)


def vagrant_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``vagrant`` command in ``folder`` (no version check, no colour)."""
    return dict(os.environ, VAGRANT_CWD=str(folder), VAGRANT_CHECKPOINT_DISABLE="1",
                VAGRANT_NO_COLOR="1", VAGRANT_DEFAULT_PROVIDER="libvirt", **extra)


def _vagrant(args: list[str], folder: Path, env: dict[str, str], timeout: float,
             echo: bool) -> tuple[int, list[str]]:
    """Run ``vagrant ARGS``; its lines (without download progress), echoed if ``echo``."""
    lines: list[str] = []
    try:
        proc = subprocess.Popen(["vagrant", *args], cwd=folder, env=env, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        raise LabError(f"gitops vagrant: cannot run vagrant: {exc}", exit_code=2) from None
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        if "Progress:" in line or not line:
            continue
        lines.append(line)
        if echo:
            print(line, flush=True)
        if time.monotonic() > deadline:
            proc.kill()
            break
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -9
    if code == -9 or time.monotonic() > deadline:
        raise LabError(f"gitops vagrant: `vagrant {' '.join(args)}` did not finish within "
                       f"{timeout:.0f} s in {folder}")
    return code, lines


def _last_error(lines: list[str]) -> str:
    """The most telling line of a failed vagrant command's output."""
    for line in lines:
        if "Timed out while waiting for the machine to boot" in line:
            return ("a VM never answered SSH (timed out waiting for it to boot; on this "
                    "machine's emulator a boot takes ~30-90 s per VM: see `virsh console`)")
    meaningful = [line.strip() for line in lines if line.strip() and not line.startswith("==>")]
    return meaningful[-1] if meaningful else (lines[-1] if lines else "no output")


def add_box(progress: bool = False, force: bool = False) -> BoxResult:
    """The box built (if its recipe changed) and added to Vagrant (if not already)."""
    check_prerequisites((*BUILD_TOOLS, "vagrant"))
    start = time.monotonic()
    if force:
        shutil.rmtree(box_dir(), ignore_errors=True)
    path, built = ensure_box(progress=progress)
    digest = recipe_hash()
    added = False
    if force or added_digest() != digest:
        if progress:
            print(f"gitops vagrant: adding box {BOX_NAME} ({digest})", flush=True)
        code, lines = _vagrant(["box", "add", "--name", BOX_NAME, "--force", str(path)],
                               path.parent, vagrant_env(path.parent), 900, echo=False)
        if code != 0:
            raise LabError(f"gitops vagrant: `vagrant box add` failed: {_last_error(lines)}")
        added = True
        if shutil.which("virsh") and libvirt.libvirt_running():
            libvirt.remove_box_volumes(BOX_NAME)  # the old box's image, else reused
    return BoxResult(path=path, digest=digest, built=built, added=added,
                     seconds=time.monotonic() - start)


def _vagrantfile_dir(folder: Path) -> Path:
    folder = folder.resolve()
    if not (folder / "Vagrantfile").is_file():
        raise LabError(f"gitops vagrant: no Vagrantfile in {folder} (use --dir)", exit_code=2)
    return folder


def up(folder: Path, machines: Sequence[str] = (), progress: bool = False,
       timeout: float = 1800) -> list[str]:
    """``vagrant up`` of ``machines`` (default: all) in ``folder``, everything it needs
    prepared first; the output lines."""
    folder = _vagrantfile_dir(folder)
    check_prerequisites()
    libvirt.start_libvirt()
    add_box(progress=progress)
    libvirt.isolate()
    kvm = os.environ.get("GITOPS_VAGRANT_KVM") or ("1" if libvirt.kvm_usable() else "0")
    if progress:
        how = "KVM" if kvm == "1" else "QEMU's emulator (no usable KVM)"
        print(f"gitops vagrant: vagrant up under {how}", flush=True)
    env = vagrant_env(folder, GITOPS_VAGRANT_KVM=kvm)
    code, lines = _vagrant(["up", "--provider=libvirt", *machines], folder, env, timeout,
                           echo=progress)
    if code != 0:
        raise LabError(f"gitops vagrant: `vagrant up` failed in {folder}: {_last_error(lines)}; "
                       "`gitops vagrant down` removes what it made")
    return lines


def down(folder: Path, progress: bool = False, timeout: float = 900) -> bool:
    """``vagrant destroy -f`` in ``folder``; then the isolation removed if no VM runs any
    more. Whether the isolation was removed."""
    folder = _vagrantfile_dir(folder)
    check_prerequisites(("vagrant", "iptables"))
    if libvirt.libvirt_running():
        code, lines = _vagrant(["destroy", "-f"], folder, vagrant_env(folder), timeout,
                               echo=progress)
        if code != 0:
            raise LabError(f"gitops vagrant: `vagrant destroy -f` failed in {folder}: "
                           f"{_last_error(lines)}")
    if libvirt.libvirt_running() and libvirt.domains():
        return False
    libvirt.unisolate()
    return True

