"""The suite's one Vagrant VM, booted in the background from the end of collection.

Building the box and booting a VM under QEMU's emulator take minutes of mostly waiting;
``tests/test_vagrant.py``'s end-to-end tests run near the end of the suite. When the session
collected them (and runs as root), ``conftest.pytest_collection_finish`` calls ``start``:
``gitops vagrant up web1`` runs beside the other tests, and the ``vm`` fixture ``wait``s for
it. ``stop`` destroys the VM (the fixture's teardown, or the session's end when the tests
never ran). Its output goes to ``up.log`` beside the Vagrantfile, quoted when it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MACHINE = "web1"
"""The suite boots one VM of the Vagrantfile (bench/vagrant.py boots all three)."""


def cli(*args: str, folder: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``python -m gitops ARGS`` with the Vagrantfile's folder and the one machine."""
    return subprocess.run([sys.executable, "-m", "gitops", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(folder), check=False)


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPS_")}
    env.update(GITOPS_VAGRANT_DIR=str(folder), GITOPS_VAGRANT_MACHINES=MACHINE)
    return env


@dataclass
class Boot:
    folder: Path
    process: subprocess.Popen[bytes]
    stopped: bool = False

    @property
    def log(self) -> Path:
        return self.folder / "up.log"


_boot: Boot | None = None


def start() -> Boot:
    """Start ``gitops vagrant up`` in a folder of this process's own (its name prefixes the
    libvirt domain's, so a leftover of another session never meets it); once."""
    global _boot
    if _boot is None:
        folder = Path(tempfile.gettempdir()) / f"gitops-vagrant{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copy(REPO / "Vagrantfile", folder / "Vagrantfile")
        with (folder / "up.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gitops", "vagrant", "up", MACHINE], env=_env(folder),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _boot = Boot(folder, process)
    return _boot


def wait(timeout: float = 1800) -> str | None:
    """None once the VM started by ``start`` (started now if not yet) is up, else what went
    wrong (the end of its log)."""
    boot = start()
    try:
        code = boot.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        boot.process.kill()
        code = boot.process.wait()
    text = boot.log.read_text(errors="replace")
    if code != 0 or "Traceback" in text:
        return f"gitops vagrant up exited {code}:\n{text[-3000:]}"
    return None


def stop() -> subprocess.CompletedProcess[str] | None:
    """Destroy the VM (``gitops vagrant down``) if ``start`` ran; None when nothing was
    started or it was already stopped."""
    boot = _boot
    if boot is None or boot.stopped:
        return None
    boot.stopped = True
    if boot.process.poll() is None:
        boot.process.terminate()
        try:
            boot.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            boot.process.kill()
            boot.process.wait()
    down = cli("vagrant", "down", folder=boot.folder, timeout=900)
    if down.returncode == 0:
        shutil.rmtree(boot.folder, ignore_errors=True)
    return down
