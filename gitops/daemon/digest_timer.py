"""When the daemon sends the digest: the settings' schedule asked against the injected wall
clock, then the digest built from the record and sent (``gitops.daemon.digest``). Logs as
the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gitops.record.store import Store
from gitops.settings import Settings

__all__ = ["DigestTimer"]

log = logging.getLogger("gitops.daemon.loop")


class DigestTimer:
    """Sends the digest each time its schedule (``digest.Schedule``) is due."""

    def __init__(self, settings: Settings, open_store: Callable[[], Store]) -> None:
        from gitops.daemon.digest import Schedule

        self.settings = settings
        self.open_store = open_store
        self.schedule = Schedule(settings.digest)
        """When the next digest is due."""

    def tick(self, now: datetime) -> list[Any] | None:
        """Send the digest if its schedule is due at ``now`` (the deliveries), else None."""
        if not self.schedule.due(now):
            return None
        from gitops.daemon import digest

        try:
            with self.open_store() as store:
                found = digest.build(store, self.settings, now=now)
        except Exception:  # a digest must never stop the daemon
            log.exception("digest: could not read the record")
            return []
        deliveries, unrecorded = digest.deliver(found, self.settings, self.open_store)
        log.info("digest of %s sent to %d receiver(s)", found.title, len(deliveries))
        if unrecorded is not None:
            log.warning("digest deliveries not recorded: %s", type(unrecorded).__name__)
        return deliveries

    def run(self, stop: threading.Event, now: Callable[[], datetime]) -> None:
        """Ask every 30 seconds until ``stop`` is set."""
        while not stop.wait(30):
            self.tick(now())
