"""Owning teams: which team owns each environment and service, as the record knows it.

An inventory names its environment's owner (``settings.team``) and owners of some of its
services (``settings.service_teams``), each one of the repository's ``teams.yml`` (checked by
``gitops.pipeline.load``); ``reconcile`` records them with every run that loads the inventory. The
daemon settings may name an environment's owner too (``[[environments]] team``, one of the
settings' ``teams``); the daemon records it at start, and it wins over the inventory's.
Read by the CLI (``status``, ``history``, ``incidents``, ``metrics --by team``, ``digest``),
the API, the Prometheus metrics (a ``team`` label: team names are declared, so bounded) and
the status page.
"""

from __future__ import annotations

from collections.abc import Iterable

from gitops.record.store import Store
from gitops.settings import EnvironmentConfig

__all__ = ["environment_teams", "service_teams"]

_RANK = {"settings": 0, "inventory": 1}


def environment_teams(store: Store,
                      configs: Iterable[EnvironmentConfig] = ()) -> dict[str, str]:
    """Environment -> its owning team: ``configs``' (the settings at hand), else the daemon
    settings' recorded, else the inventory's recorded."""
    found: dict[str, tuple[int, str]] = {
        c.environment: (-1, c.team) for c in configs if c.team is not None}
    for owner in store.owners():
        if owner.service:
            continue
        rank = _RANK.get(owner.source, 2)
        if owner.environment not in found or rank < found[owner.environment][0]:
            found[owner.environment] = (rank, owner.team)
    return {env: team for env, (_, team) in sorted(found.items())}


def service_teams(store: Store) -> dict[str, dict[str, str]]:
    """Environment -> service -> owning team, where the inventory names one (a service
    without an entry is owned by its environment's team)."""
    out: dict[str, dict[str, str]] = {}
    for owner in store.owners():
        if owner.service:
            out.setdefault(owner.environment, {})[owner.service] = owner.team
    return out
