"""``gitops lab down`` leaves nothing of its lab; ``lab list`` shows what the lab folder holds;
``lab prune`` takes down what no process holds (real labs, root, systemd-nspawn).

The list and prune tests run on a lab folder of their own (``GITOPS_LAB_DIR``), so a prune
never sees the labs of other people on the machine; their labs' names derive from the
session lab's name, as in ``tests/test_lab_e2e.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from statelab import side_lab

import gitops.lab as lab_api
from gitops.lab import locks

pytestmark = pytest.mark.lab


def gitops_lab(*args: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitops", "lab", *args], capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def ours(parent: Path, name: str) -> list[str]:
    """What of lab ``name`` is in the lab folder ``parent``."""
    return sorted(p.name for p in parent.glob(f"{name}*") if p.name.split(".")[0] == name)


def test_down_leaves_nothing_of_the_lab() -> None:
    """After `lab up` then `lab down`, the lab folder holds no file of that lab, and `lab
    list` does not name it."""
    name = side_lab("lv")
    lab_api.down(name)
    up = gitops_lab("up", "--name", name, "--hosts", "1")
    try:
        assert up.returncode == 0, up.stderr
        assert ours(lab_api.common.lab_parent(), name) == [name]
    finally:
        down = gitops_lab("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert ours(lab_api.common.lab_parent(), name) == []
    listed = json.loads(gitops_lab("list", "--json").stdout)
    assert name not in [e["name"] for e in listed]


@pytest.fixture
def own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A lab folder of the test's own; every lab made in it is taken down afterwards."""
    folder = tmp_path / "labs"
    folder.mkdir()
    monkeypatch.setenv("GITOPS_LAB_DIR", str(folder))
    yield folder
    for name in sorted({entry.name.split(".")[0] for entry in folder.iterdir()}):
        lab_api.down(name)


class SlotHolder:
    """Another process holding the preview slot lock of lab ``name`` until closed."""

    def __init__(self, name: str) -> None:
        code = ("import sys\nfrom gitops.daemon.preview import slot_lock\n"
                f"with slot_lock({name!r}) as mine:\n"
                "    print(mine, flush=True)\n    sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "True"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_list_and_prune_take_down_what_no_process_holds(own_folder: Path) -> None:
    """`lab list` shows each lab up or down and who holds it; `lab prune` takes down a lab
    that is down, a preview lab no preview holds (even up) and a lock file nobody holds, and
    keeps a lab that is up and a preview slot a live process holds."""
    up, orphan, down, slot, stale = (side_lab(t) for t in ("pu", "po", "pd", "ps", "pl"))
    assert gitops_lab("up", "--name", up, "--hosts", "1").returncode == 0
    assert gitops_lab("up", "--name", orphan, "--hosts", "1").returncode == 0
    locks.slot_lock_path(orphan).write_text("")  # its preview was killed
    (own_folder / down / "logs").mkdir(parents=True)  # an `up` that failed, or old code
    (own_folder / down / "logs" / "lab-1.log").write_text("boot log\n")
    (own_folder / f"{down}.lock").write_text("")
    (own_folder / slot).mkdir()
    (own_folder / f"{stale}.preview.lock").write_text("")
    holder = SlotHolder(slot)
    try:
        listed = {e["name"]: e for e in json.loads(gitops_lab("list", "--json").stdout)}
        assert set(listed) == {up, orphan, down, slot, stale}
        assert (listed[up]["up"], listed[up]["running"], listed[up]["held_by"]) == (True, 1, [])
        assert listed[orphan]["preview"] is True
        assert (listed[down]["up"], listed[down]["files"]) == (False, [f"{down}/", f"{down}.lock"])
        assert listed[slot]["held_by"] == [{"pid": holder.proc.pid, "what": "preview"}]
        text = gitops_lab("list").stdout
        assert f"held by preview pid {holder.proc.pid}" in text

        pruned = gitops_lab("prune", "--json")
        assert pruned.returncode == 0, pruned.stderr
        doc = json.loads(pruned.stdout)
        assert sorted(e["name"] for e in doc["removed"]) == sorted([orphan, down, stale])
        assert sorted(e["name"] for e in doc["kept"]) == sorted([up, slot])
        assert lab_api.current(orphan) is None
        assert lab_api.current(up) is not None
        assert sorted(p.name for p in own_folder.iterdir()) == sorted(
            [up, slot, f"{slot}.preview.lock"])
    finally:
        holder.close()
    # the holder let go: its lock file went with it, and its leftover folder goes at a prune
    assert sorted(p.name for p in own_folder.iterdir()) == sorted([up, slot])
    again = gitops_lab("prune")
    assert again.returncode == 0, again.stderr
    assert f"lab {slot}: taken down" in again.stdout
    assert sorted(p.name for p in own_folder.iterdir()) == [up]
