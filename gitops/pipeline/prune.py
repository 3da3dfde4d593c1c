"""Removal (Flux's prune, for hosts): what a revision no longer declares comes off its hosts.

The record (``Store.installed``) says which services each host has, with the parameters and
requirements they were last applied with. When a revision no longer declares one of them on
a host, ``removals`` decides per host, in reverse dependency order (dependents first):

- ``remove``: the environment prunes (``settings.prune``, default true) and the service's
  folder in the *new* revision has a ``remove.py``: the reconcile runs that file there (the
  apply worker, like a ``deploy.py``, with the parameters from the record), records its
  operations like any apply, and the service leaves the record; its checks stopped running
  with the revision that dropped it. The new revision's file runs, not the one of the
  revision that last applied the service: it is the one ``gitops validate`` checked, and a
  ``remove.py`` added in the same commit that drops the service is used. To delete a
  service's folder, first drop it from the hosts (its ``remove.py`` runs), then the folder.
- ``left in place``: the service's folder has no ``remove.py`` (or no longer exists): the
  host keeps it, and the plan, the host's ``Pruned`` condition, the
  ``gitops_service_not_removed`` gauge and the page say so until it is declared again or a
  ``remove.py`` takes it off.
- ``not pruned``: ``prune`` is false: reported the same way, the host left as it is; the next
  run with ``prune`` on removes it.

A host that leaves the inventory is never touched (it may be gone): ``gone_hosts`` names the
hosts whose status, convergence and installed services the record drops (``Store.forget_hosts``),
so they leave the status, the gauges and the page at once; their runs stay in the history.

Pure functions (no I/O), called by ``gitops.pipeline.reconcile`` (reconcile and plan).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import depends
from gitops.records import Installed, Removal

__all__ = ["SECRET", "gone_hosts", "pending", "recordable", "removal_state", "removals"]

SECRET = "<secret>"
"""What a secret parameter value is in the record (and so in a ``remove.py``'s data)."""


def removals(state: DeclaredState, installed: Mapping[str, Mapping[str, Installed]],
             prune: bool) -> tuple[Removal, ...]:
    """Per host of ``state`` (inventory order), each service the record has that ``state``
    no longer declares there, dependents before what they require."""
    out: list[Removal] = []
    for h in state.hosts:
        had = installed.get(h.name, {})
        dropped = [s for s in sorted(had) if s not in h.services]
        requires = {s: had[s].requires for s in dropped}
        for service in reversed(depends.apply_order(dropped, requires)):
            if not prune:
                action = "not pruned"
            elif service in state.removable:
                action = "remove"
            else:
                action = "left in place"
            out.append(Removal(host=h.name, service=service, action=action,
                               revision=had[service].revision))
    return tuple(out)


def pending(found: Iterable[Removal]) -> dict[str, tuple[Removal, ...]]:
    """host -> its removals that leave the service on the host (reported, not done)."""
    out: dict[str, tuple[Removal, ...]] = {}
    for r in found:
        if r.action != "remove":
            out[r.host] = (*out.get(r.host, ()), r)
    return out


def gone_hosts(state: DeclaredState, recorded: Iterable[str]) -> list[str]:
    """Hosts the record knows that ``state``'s inventory no longer has."""
    declared = {h.name for h in state.hosts}
    return sorted(set(recorded) - declared)


def removal_state(state: DeclaredState, found: Iterable[Removal],
                  installed: Mapping[str, Mapping[str, Installed]]) -> DeclaredState:
    """What the apply worker runs to remove: each host with the services to take off (their
    recorded parameters), in removal order, as a state whose ``service_order`` is that order
    (the worker then loads each service's ``remove.py``). Hosts with nothing to remove are
    left out."""
    todo: dict[str, list[str]] = {}
    for r in found:
        if r.action == "remove":
            todo.setdefault(r.host, []).append(r.service)
    hosts: list[DeclaredHost] = []
    for h in state.hosts:
        if h.name in todo:
            hosts.append(h.model_copy(update={"services": {
                s: dict(installed[h.name][s].params) for s in todo[h.name]}}))
    # one order for every host: each host's list is already dependents first
    order: list[str] = []
    for names in todo.values():
        for s in names:
            if s not in order:
                order.append(s)
    requires = {s: tuple(r for i in installed.values() if s in i for r in i[s].requires)
                for s in order}
    order = list(reversed(depends.apply_order(list(reversed(order)), requires)))
    return state.model_copy(update={"hosts": tuple(hosts), "service_order": tuple(order),
                                    "requires": {}})


def recordable(params: Mapping[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """``params`` as the record keeps them: a string holding any plain secret value (SOPS,
    ``SecretStr``) becomes ``<secret>``, so the database never holds one."""
    hidden = [s for s in secrets if s]

    def blank(value: Any) -> Any:
        if isinstance(value, str):
            return SECRET if any(s in value for s in hidden) else value
        if isinstance(value, dict):
            return {k: blank(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [blank(v) for v in value]
        return value

    return {k: blank(v) for k, v in params.items()}
