"""The interrupted-apply journal: per host, the operations an apply started and what they did.

An apply killed between an operation that changed a host (a configuration file) and the
operations that depend on it (the restart, pyinfra's ``_if=``) leaves the change without its
consequences, and the next apply finds the file up to date, so pyinfra sees nothing to do.
The apply worker (``workers/apply_journal.py``) therefore appends to
``<state-dir>/journal/<environment>/<host>.jsonl``, as it goes, a line when an operation
starts (fsync'd before it runs: the worker dies with its parent) and one when it is done;
the file is removed once that host's apply completes. An apply that ended with the host
failed (an operation failed, a deploy file raised) ends its file with a ``{"failed": ...}``
line (``failed``): the host is not ``interrupted`` (nothing was cut, the next run is an
ordinary one), but what that apply changed stays ``pending``. A file found at the start of an
apply whose last line is not that says the last one was cut. ``pending`` is what the last
applies may have changed, and the worker makes those operations count as changed for the
operations that depend on them, once; except, on a host whose guard reverted
(``gitops.pipeline.guard``: the cut apply's guarded changes were undone there), the guarded
services'
operations, which find their changes to make again.

A share of a batch applied by another controller (``gitops.daemon.fanout``) and cut there (that
controller died or was cut off) is applied again here without that controller's journal, which
is on its machine: what the cut attempt changed is unknown. ``cut_elsewhere`` marks each of
the share's hosts so (a line ``{"unknown": ...}``), and ``pending`` then holds ``ANY``: every
operation of the host counts as changed once for what depends on it (an operation with
nothing to do still does nothing), until an apply of that host here completes. Called by
``reconcile`` (which hosts are recovering), by ``fanout`` (``cut_elsewhere``) and by the apply
worker (reading and writing).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO

__all__ = ["ANY", "Writer", "clear", "cut_elsewhere", "failed", "forget_others",
           "interrupted", "journaled", "pending"]

_SUFFIX = ".jsonl"
ANY = "*"
"""In ``pending``: an apply cut on another controller may have changed any operation."""


def _path(folder: Path, host: str) -> Path:
    return folder / f"{host}{_SUFFIX}"


def journaled(folder: Path) -> set[str]:
    """The hosts with a journal: their last apply did not complete (it was cut, or failed)."""
    if not folder.is_dir():
        return set()
    return {p.name[: -len(_SUFFIX)] for p in folder.glob(f"*{_SUFFIX}")}


def interrupted(folder: Path) -> set[str]:
    """The hosts whose last apply was cut (their journal does not end with its failure)."""
    return {host for host in journaled(folder) if not _ended(folder, host)}


def _entries(folder: Path, host: str) -> list[dict[str, object]]:
    try:
        lines = _path(folder, host).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by the crash
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _ended(folder: Path, host: str) -> bool:
    """Whether ``host``'s journal ends with the failure of its apply (``failed``)."""
    entries = _entries(folder, host)
    return bool(entries) and "failed" in entries[-1]


def pending(folder: Path, host: str) -> set[str]:
    """The operations (by name) the unfinished applies of ``host`` (cut, or failed) changed or
    may have changed: those done with a change, and those started and never done (cut while
    running); with ``ANY`` when an apply of it on another controller was cut
    (``cut_elsewhere``)."""
    out: set[str] = set()
    started: set[str] = set()
    for entry in _entries(folder, host):
        if "run" in entry:  # an earlier cut apply's operations stay pending
            out |= started
            started = set()
        elif "unknown" in entry:
            out.add(ANY)
        elif "start" in entry:
            started.add(str(entry["start"]))
        elif "done" in entry:
            name = str(entry["done"])
            started.discard(name)
            if entry.get("changed"):
                out.add(name)
    return out | started


def clear(folder: Path, host: str) -> None:
    """``host``'s apply completed: nothing is pending any more."""
    with contextlib.suppress(FileNotFoundError):
        _path(folder, host).unlink()


def failed(folder: Path, host: str, why: str) -> None:
    """``host``'s apply ended with the host failed (``why``): not cut, so the next apply is
    an ordinary one; what it changed stays pending. Only a journal that exists is marked."""
    path = _path(folder, host)
    if not path.exists():
        return
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"failed": why[:200]}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def forget_others(folder: Path, hosts: set[str]) -> None:
    """Remove the journals of hosts no longer declared."""
    for host in journaled(folder) - hosts:
        clear(folder, host)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_elsewhere(folder: Path, host: str, why: str = "an apply on another controller") -> None:
    """An apply of ``host`` was cut where its journal cannot be read (``why``: another
    controller's): anything may have changed there, so every operation is pending (``ANY``)
    until an apply of ``host`` here completes. On disk before the apply that follows."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _path(folder, host)
    created = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"unknown": why}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if created:
        _sync_folder(folder)


class Writer:
    """Appends one host's journal; each start is on disk before the operation runs."""

    def __init__(self, folder: Path, host: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = _path(folder, host)
        created = not path.exists()
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._write({"run": os.getpid()}, sync=True)
        if created:  # the file's name on disk too
            _sync_folder(folder)

    def _write(self, entry: dict[str, object], *, sync: bool) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def start(self, name: str) -> None:
        self._write({"start": name}, sync=True)

    def done(self, name: str, changed: bool) -> None:
        # no fsync: a lost "done" leaves the operation started, which counts as changed
        self._write({"done": name, "changed": changed}, sync=False)


    def close(self) -> None:
        self._file.close()
