"""The daemon's pruning of its state after runs: the database history, the repository
mirrors and the pull requests' refs in them (``retention``), at most once an hour, and the
incident reports of the runs gone. Logs as the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gitops.daemon import retention
from gitops.daemon.envstate import EnvState
from gitops.daemon.reporting import Reporter
from gitops.record.store import Store
from gitops.record.store import now as store_now
from gitops.settings import Settings

__all__ = ["PRUNE_EVERY", "Pruner"]

log = logging.getLogger("gitops.daemon.loop")

PRUNE_EVERY = 3600.0
"""Seconds between prunings of the history and the mirrors."""


class Pruner:
    """Prunes after runs, at most once every ``PRUNE_EVERY`` seconds of ``clock``."""

    def __init__(self, settings: Settings, envs: dict[str, EnvState], *,
                 clock: Callable[[], float], open_store: Callable[[], Store],
                 reporter: Reporter) -> None:
        self.settings = settings
        self.envs = envs
        self.clock = clock
        self.open_store = open_store
        self.reporter = reporter
        self.pruned_at: float | None = None
        """When the history was last pruned."""
        self.lock = threading.Lock()

    def prune(self) -> None:
        """Bound the database history, the repository mirrors and the pull requests' refs in
        them (``Settings.retention``), at most once an hour; the snapshots are pruned by
        every run."""
        with self.lock:
            if self.pruned_at is not None and self.clock() - self.pruned_at < PRUNE_EVERY:
                return
            self.pruned_at = self.clock()
            try:
                with self.open_store() as store:
                    removed = retention.prune_history(
                        store, self.settings.state_dir, self.settings.retention,
                        repos={name: e.config.repo for name, e in self.envs.items()},
                        now=store_now())
            except OSError as exc:
                log.warning("cannot prune the state folder: %s", exc)
                return
        if removed:
            log.info("pruned %d run(s) older than %g days from the history", removed,
                     self.settings.retention.history_days)
        for env in self.envs.values():
            if removed:
                self.reporter.write_incidents(env)  # and remove the reports of the runs gone
