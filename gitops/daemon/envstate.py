"""What the daemon keeps in memory per environment (``EnvState``; everything else is in the
record), and how its jobs set one condition of an environment in the record. Logs as the
daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gitops import schedule
from gitops.daemon.policy import Trigger
from gitops.pipeline.reconcile import Target
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.settings import EnvironmentConfig

__all__ = ["EnvState", "reconciling_again", "set_condition"]

log = logging.getLogger("gitops.daemon.loop")


@dataclass
class EnvState:
    """What the daemon keeps in memory per environment; everything else is in the store."""

    config: EnvironmentConfig
    target: Target
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Trigger | None = None
    """The reconcile asked for and not yet started."""
    next_poll: float = 0.0
    next_drift: float = 0.0
    failures: int = 0
    """Consecutive temporary failures: the backoff exponent."""
    retry_hosts: frozenset[str] | None = None
    """Hosts to retry at the next cycle (an operator's ``retry``, unreachable hosts)."""
    running: str | None = None
    """What the environment's thread is doing now (for health)."""
    diffs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(old, new) -> ``git diff --stat`` in its repository, for incident reports."""
    windows: tuple[str, tuple[schedule.Window, ...]] | None = None
    """(sha, the inventory's maintenance windows at that commit), read once per commit."""
    lineage: tuple[str, tuple[str, ...]] | None = None
    """(head, the branch's commits oldest first) for promotion, read once per head."""
    fence: threading.Event = field(default_factory=threading.Event)
    """Set to stop a run before its next batch: the daemon stops, or its lease was lost."""
    shed: threading.Event = field(default_factory=threading.Event)
    """Set when this controller holds more than its fair share: give the lease up between
    runs (``lease.surplus``)."""


def reconciling_again(env: EnvState) -> Callable[[str], None]:
    """What recovering a run left unfinished says, in the log of ``env``."""
    return lambda line: log.warning("%s: %s; reconciling again", env.config.name, line)


def set_condition(store: Store, env: str, condition: Condition) -> None:
    """Set one condition of the environment, keeping the others (Ready stays as it was)."""
    row = store.environment_status(env)
    kept = [c for c in (row.conditions if row is not None else ())
            if c.type != condition.type]
    store.set_status(env, ENVIRONMENT, [*kept, condition])
