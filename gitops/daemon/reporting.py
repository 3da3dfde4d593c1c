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
        """Log how the run ended and why it failed (``explain``), notify ``kind``
        (``policy.event_kind``; None: nobody) and rewrite incident reports."""
        from gitops.report import explain

        log.log(logging.INFO if outcome.result == "succeeded" else logging.WARNING, "%s: %s",
                env.config.name, explain.outcome_summary(outcome))
        for line in explain.failure_lines(
                result=outcome.result, ref=outcome.revision.ref if outcome.revision else None,
                error=outcome.error, apply=outcome.apply, verify=outcome.verify):
            log.warning("%s: %s", env.config.name, line)
        if kind is not None and (env.config.notifiers or self.settings.notifiers):
            self.notify(env, notify.event_from_outcome(kind, env.config.name, outcome))
        self.write_incidents(env)

    def notify(self, env: EnvState, event: notify.Event) -> None:
        """Send ``event`` to the notifiers of ``env`` and the global ones whose filters take
        it; record each delivery. Never raises: a notifier never fails a reconcile."""
        configs = [*self.settings.notifiers, *env.config.notifiers]
        if not configs:
            return
        names = [n.label(i) for i, n in enumerate(self.settings.notifiers)]
        names += [n.label(i, env.config.name) for i, n in enumerate(env.config.notifiers)]
        try:
            team = self._team(env)
            deliveries = notify.notify(configs, event, names=names, team=team,
                                       page_url=self.settings.page_url)
            with self.open_store() as store:
                notify.record(store, deliveries)
        except Exception as exc:  # the record unreachable, say: the run stands
            log.warning("%s: notifications not recorded: %s", env.config.name,
                        type(exc).__name__)

    def _team(self, env: EnvState) -> str | None:
        """The environment's owning team, as ``gitops status`` shows it."""
        from gitops.report.teams import environment_teams

        if env.config.team is not None:
            return env.config.team
        with self.open_store() as store:
            return environment_teams(store).get(env.target.environment)

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
