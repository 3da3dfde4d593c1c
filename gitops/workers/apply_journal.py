"""The apply worker's interrupted-apply journal (``gitops.pipeline.journal``): each host's
operations journaled as they run, and what an interrupted apply changed counted as changed
once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra.api.operation import OperationMeta
from pyinfra.api.state import BaseStateCallback, State

from gitops.pipeline import journal
from gitops.records import ApplyReport
from gitops.workers.apply_ops import host_ops, op_name, progress, service_of

__all__ = ["Journal"]

_did_change = OperationMeta.did_change
_forced: set[int] = set()
"""``id()`` of the operations that count as changed while executing (see ``Journal``)."""


def _did_change_or_forced(self: OperationMeta) -> bool:
    return bool(_did_change(self) or (id(self) in _forced and self.did_succeed(False)))


class Journal(BaseStateCallback):
    """Journals each host's operations as they run (``gitops.pipeline.journal``), and makes the
    operations an interrupted apply changed count as changed once, so what depends on them
    (``_if=``: a restart after a configuration change) runs although the change is done;
    every operation of a host whose apply was cut on another controller (``journal.ANY``)."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        self.folder = folder
        self.pending = {name: journal.pending(folder, name) for name in names}
        self.undone_services: dict[str, frozenset[str]] = {}
        """host -> the guarded services whose operations are not forced there (reverted)."""
        self.writers: dict[str, journal.Writer] = {}
        self.journaled: set[str] = set()
        """The hosts this apply journaled (an operation started)."""
        self.interrupted = journal.interrupted(folder)
        self.current: dict[str, str] = {}
        # before the deploy files bind ``meta.did_change`` for their ``_if=`` arguments
        OperationMeta.did_change = _did_change_or_forced  # type: ignore[method-assign]

    def undone(self, reverted: dict[str, str], services: frozenset[str]) -> None:
        """Hosts where a guard's revert ran (``gitops.pipeline.guard``): what the interrupted apply
        changed in the guarded services was undone there, so it is not forced again; the
        next apply finds those changes to make, and what depends on them follows."""
        for host in reverted:
            self.undone_services[host] = services

    def forced(self, state: State, host: Any) -> list[str]:
        """The hashes of ``host``'s operations that count as changed once: those the
        interrupted apply changed (all of them after a cut elsewhere), but for the services
        a guard's revert undid."""
        wanted = self.pending.get(host.name) or set()
        undone = self.undone_services.get(host.name, frozenset())
        return [op_hash for op_hash in host_ops(state, host)
                if (journal.ANY in wanted or op_name(state, op_hash) in wanted)
                and service_of(op_name(state, op_hash)) not in undone]

    def arm(self, state: State) -> None:
        """Before executing: journal from now on; force what the interrupted apply changed."""
        state.add_callback_handler(self)
        for host in state.inventory:
            forced = self.forced(state, host)
            if not forced:
                continue
            _forced.update(id(state.ops[host][h].operation_meta) for h in forced)
            if journal.ANY in self.pending.get(host.name, set()):
                progress(f"{host.name}: an interrupted apply on another controller may have "
                         f"changed any of its {len(forced)} operations; what depends on them "
                         "runs again")
            else:
                earlier = ("an interrupted apply" if host.name in self.interrupted
                           else "the last apply, which failed,")
                progress(f"{host.name}: {earlier} changed "
                         f"{', '.join(op_name(state, h) for h in forced)}; what depends on "
                         "it runs again")

    def operation_host_start(self, state: State, host: Any, op_hash: str) -> None:  # type: ignore[override]
        self._done(state, host)
        if op_hash in state.ops[host]:
            if host.name not in self.writers:
                self.writers[host.name] = journal.Writer(self.folder, host.name)
                self.journaled.add(host.name)
            self.writers[host.name].start(op_name(state, op_hash))
            self.current[host.name] = op_hash

    def _done(self, state: State, host: Any) -> None:
        op_hash = self.current.pop(host.name, None)
        meta = state.ops[host][op_hash].operation_meta if op_hash else None
        if op_hash and meta is not None and meta.is_complete():
            self.writers[host.name].done(op_name(state, op_hash),
                                         changed=meta.did_succeed(False) and _did_change(meta))

    def stop(self, state: State) -> None:
        """After executing: nothing is forced any more (the report says what changed)."""
        _forced.clear()
        for host in state.inventory:
            if host.name in self.writers:
                self._done(state, host)
                self.writers.pop(host.name).close()

    def finish(self, report: ApplyReport) -> None:
        """A host whose apply completed has nothing pending any more; one whose apply ended
        failed is marked so (not cut: the next run is an ordinary one)."""
        for h in report.hosts:
            if h.status == "ok":
                journal.clear(self.folder, h.host)
            elif h.host in self.journaled:
                why = (h.error or h.status).splitlines()
                journal.failed(self.folder, h.host, why[0] if why else h.status)
