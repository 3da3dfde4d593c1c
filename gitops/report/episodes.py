"""Episodes of the run history: each span from a failure (a failed rollout, a rollback, a
drift correction) to the verified success that restored every host it broke, with every run
in between. The ground both incidents and the delivery metrics' restore times stand on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gitops.record.store import Store
from gitops.records import APPLY_KINDS, RunRow

__all__ = ["Episode", "default_cause", "episodes", "load_runs", "verified_hosts"]


def load_runs(store: Store, environment: str | None = None) -> dict[str, list[RunRow]]:
    """Every run (oldest first) per environment (``Store.runs``)."""
    return store.runs(environment)


def verified_hosts(store: Store, environment: str | None = None) -> dict[int, frozenset[str]]:
    """The hosts of each succeeded apply run (``Store.verified_hosts``)."""
    return store.verified_hosts(environment)


def default_cause(run: RunRow) -> str | None:
    """What incident, if any, ``run`` opens: the definition in ``gitops.report.incidents``."""
    if run.kind not in APPLY_KINDS or run.result in ("invalid", None):
        return None
    if run.drift_correction:
        return "drift correction"
    if run.kind == "rollback":
        return "rollback"
    if run.result == "failed":
        return "failed rollout"
    return None


@dataclass(frozen=True)
class Episode:
    """An interval from a failure to its restoring run, with every run in between."""

    environment: str
    cause: str
    opener: RunRow
    runs: tuple[RunRow, ...]
    opened_at: datetime
    closed_at: datetime | None
    restorer: RunRow | None


def episodes(
    runs: Iterable[RunRow],
    verified: Mapping[int, frozenset[str]],
    opens: Callable[[RunRow], str | None] = default_cause,
) -> list[Episode]:
    """Scan one environment's runs (oldest first): the open/close rules of
    ``gitops.report.incidents``."""
    found: list[Episode] = []
    current: dict[str, Any] | None = None
    failed_check: RunRow | None = None
    for run in runs:
        if run.drift_check and run.result in ("failed", "succeeded"):
            failed_check = run if run.result == "failed" else None
        cause = opens(run)
        if current is None:
            if cause is None:
                continue
            members = [run]
            pending: set[str] = set(run.failed_hosts) if run.result == "failed" else set()
            opened = run.at if run.result == "failed" else run.started_at
            if cause == "drift correction" and failed_check is not None:
                members = [failed_check, run]
                opened = failed_check.at
                pending |= set(failed_check.failed_hosts)
            failed_check = None
            current = {"cause": cause, "opener": run, "runs": members, "opened": opened,
                       "pending": pending}
        else:
            current["runs"].append(run)
            if run.real and run.kind in APPLY_KINDS and run.result == "failed":
                current["pending"] |= set(run.failed_hosts)
        if run.verified_success:
            hosts = verified.get(run.id)
            current["pending"] = set() if hosts is None else current["pending"] - hosts
            if not current["pending"]:
                found.append(Episode(run.environment, current["cause"], current["opener"],
                                     tuple(current["runs"]), current["opened"], run.at, run))
                current = None
    if current is not None:
        opener = current["opener"]
        found.append(Episode(opener.environment, current["cause"], opener,
                             tuple(current["runs"]), current["opened"], None, None))
    return found
