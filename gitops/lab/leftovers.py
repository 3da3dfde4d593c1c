"""What the lab folder holds, lab by lab, and the removal of what no process holds.

``labs()`` is ``gitops lab list``: every lab with a folder or a lock file in
``$GITOPS_LAB_DIR`` (default ``/var/lib/gitops/lab``), up or down, and which process holds
it. ``prune()`` is ``gitops lab prune``: it takes down each lab that no process holds (its
hosts, folder and lock files; the shared base image and package cache stay) and keeps:

- a lab whose ``up``/``down`` runs (``NAME.lock`` held);
- a lab a preview uses (``NAME.preview.lock`` held, ``gitops.daemon.preview.slot_lock``);
- a lab that is up with its hosts running, unless a preview made it (a preview lab no
  preview holds was left by a killed one): ``gitops lab down`` takes that one down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gitops.lab as api
from gitops.lab import hosts as _hosts
from gitops.lab import locks as _locks
from gitops.lab.common import check_prerequisites, lab_parent, state_dir

__all__ = ["Holder", "LabEntry", "entry", "labs", "prune"]

_FOLDER_RE = re.compile(r"^[a-z0-9]{1,8}$")
_LOCK_RE = re.compile(r"^([a-z0-9]{1,8})(\.preview)?\.lock$")


@dataclass(frozen=True)
class Holder:
    """A process holding a lab: ``what`` is ``up/down`` or ``preview``; pid 0 if unknown."""

    pid: int
    what: str


@dataclass(frozen=True)
class LabEntry:
    """One lab of the lab folder: up or down, what of it is on disk, who holds it."""

    name: str
    up: bool
    """Its ``lab.json`` says it is up and at least one of its hosts runs."""
    hosts: int
    """Hosts its ``lab.json`` lists (0 when it is down)."""
    running: int
    """Its hosts whose ``systemd-nspawn`` runs."""
    preview: bool
    """A preview made it (its ``NAME.preview.lock`` exists)."""
    files: tuple[str, ...]
    """What of it is in the lab folder: ``NAME/``, ``NAME.lock``, ``NAME.preview.lock``."""
    held_by: tuple[Holder, ...]

    @property
    def prunable(self) -> bool:
        """Whether ``prune`` takes it down: no process holds it, and it is down or a
        preview's."""
        return not self.held_by and (not self.up or self.preview)


def _names(parent: Path) -> list[str]:
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    names = set()
    for entry in entries:
        lock = _LOCK_RE.match(entry.name)
        if lock:
            names.add(lock.group(1))
        elif _FOLDER_RE.match(entry.name) and entry.is_dir():
            names.add(entry.name)
    return sorted(names)


def _holders(path: Path, what: str) -> tuple[Holder, ...]:
    if not _locks.is_held(path):
        return ()
    return tuple(Holder(pid, what) for pid in _locks.holders(path)) or (Holder(0, what),)


def entry(name: str) -> LabEntry:
    """Lab ``name`` as it is now."""
    info = api.current(name)
    running = len(set(_hosts.find_nspawn(name).values()))
    lock, slot = _locks.lab_lock(name), _locks.slot_lock_path(name)
    files = tuple(f"{p.name}/" if p.is_dir() else p.name
                  for p in (state_dir(name), lock, slot) if p.exists())
    return LabEntry(
        name=name,
        up=info is not None and running > 0,
        hosts=len(info.hosts) if info else 0,
        running=running,
        preview=slot.exists(),
        files=files,
        held_by=_holders(lock, "up/down") + _holders(slot, "preview"),
    )


def labs() -> list[LabEntry]:
    """Every lab with a folder or a lock file in the lab folder, by name."""
    return [entry(name) for name in _names(lab_parent())]


def prune() -> tuple[list[LabEntry], list[LabEntry]]:
    """Take down every lab no process holds (see the module); returns (removed, kept).

    Raises LabError (exit code 2) when not root.
    """
    check_prerequisites(tools=("ip",))
    removed, kept = [], []
    for found in labs():
        if not found.prunable:
            kept.append(found)
            continue
        name = found.name
        # The slot is held while the lab goes, so no preview takes it meanwhile; the lab's
        # own lock is taken without waiting, and the lab looked at again under it.
        with _locks.held(_locks.slot_lock_path(name)) as mine:
            try:
                gone = mine and api.down(name, wait=0, unless=_came_up(found))
            except api.LabBusy:
                gone = False
        if gone:
            removed.append(found)
        else:
            kept.append(entry(name))
    return removed, kept


def _came_up(found: LabEntry) -> Callable[[], bool]:
    """Asked under the lab's lock: whether a lab that is not a preview's came up meanwhile."""
    def check() -> bool:
        return (not found.preview and api.current(found.name) is not None
                and bool(_hosts.find_nspawn(found.name)))
    return check
