"""What follows a run of the daemon for people: why it failed in the log (``explain``),
the notification of its kind, and the environment's incident reports rewritten. Logs as
the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gitops.daemon import notify, retention
from gitops.daemon.envstate import EnvState
from gitops.pipeline import source
from gitops.pipeline.reconcile import Outcome
from gitops.record.store import Store
from gitops.settings import Settings

__all__ = ["DIFF_CACHE", "Reporter"]

log = logging.getLogger("gitops.daemon.loop")

DIFF_CACHE = 512
"""Diff summaries kept in memory (incident reports rewrite them after every run)."""


class Reporter:
    """Tells people about an environment's runs: the log, notifications, incident reports."""

    def __init__(self, settings: Settings, open_store: Callable[[], Store]) -> None:
        self.settings = settings
        self.open_store = open_store

    def report(self, env: EnvState, outcome: Outcome, *,
               kind: notify.EventKind | None) -> None:
        """Log why a run failed (``explain``), notify ``kind`` (``policy.event_kind``; None:
        nobody) and rewrite incident reports."""
        from gitops.report import explain

        for line in explain.failure_lines(
                result=outcome.result, ref=outcome.revision.ref if outcome.revision else None,
                error=outcome.error, apply=outcome.apply, verify=outcome.verify):
            log.warning("%s: %s", env.config.name, line)
        if kind is not None and env.config.notifiers:
            self.notify(env, notify.event_from_outcome(kind, env.config.name, outcome))
        self.write_incidents(env)

    @staticmethod
    def notify(env: EnvState, event: notify.Event) -> None:
        """Send ``event`` to the receivers of ``env``."""
        if env.config.notifiers:  # never raises; failures are logged without the URL
            notify.notify(env.config.notifiers, event)

    def write_incidents(self, env: EnvState) -> None:
        """Rewrite the incident reports of ``env`` (only its own: no other changed), their
        diff summaries from its own repository's mirror."""
        from gitops.report import incidents

        folder = self.settings.reports_dir or self.settings.state_dir / "reports"
        cfg = env.config

        def diff(old: str, new: str) -> str:
            key = (old, new)
            if key not in env.diffs:  # commits do not change: each pair is asked once
                text = source.diff_summary(cfg.repo, self.settings.state_dir, old, new)
                if not text:
                    return text  # not fetched yet, perhaps: ask again next time
                if len(env.diffs) >= DIFF_CACHE:
                    env.diffs.pop(next(iter(env.diffs)))
                env.diffs[key] = text
            return env.diffs[key]

        try:
            with self.open_store() as store:
                written = incidents.write_reports(store, folder, diff_summary=diff,
                                                  environment=env.target.environment)
            retention.prune_reports(folder, env.target.environment, written)
        except OSError as exc:
            log.warning("%s: cannot write incident reports: %s", cfg.name, exc)
