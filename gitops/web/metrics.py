"""Monitoring: Prometheus metrics and the JSON status API, both read from the store.

The only prometheus-client user. A scrape reads the status record and the run history as
they are (``StoreCollector``), so the CLI, the API and the metrics can never disagree, and a
restarted daemon loses no counts; the run totals are added up once and then only for the runs
finished since the last scrape (``_Totals``), so a scrape does not grow with the history.

Labels hold only bounded values (environment, host, service, check, stage, kind, result, and
team: declared names only) and never a message; the one SHA is the current applied revision,
in ``gitops_applied_revision_info``.

``routes(state_dir, authorize)`` gives the daemon's ``GET /metrics`` and the read-only API
(``gitops.web.readapi``): ``/api/environments``, ``/api/hosts``, ``/api/runs``,
``/api/runs/{id}``, ``/api/delivery`` (``?by=team`` or ``environment``: side by side with
trends, as ``gitops metrics --by``), ``/api/incidents`` and ``/api/teams``; each answers what
``gitops status --json`` / ``history --json`` print. Delivery figures come from
``gitops.web.figures``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gitops.record.store import ENVIRONMENT, Database, Store
from gitops.records import LatestCheck
from gitops.web import readapi
from gitops.web.access import Authorize, loopback_only
from gitops.web.figures import DELIVERY_WINDOW, delivery_figures, team_figures
from gitops.web.readapi import (
    api_delivery,
    api_environments,
    api_hosts,
    api_incidents,
    reader,
)

__all__ = [
    "DELIVERY_WINDOW",
    "DURATION_BUCKETS",
    "METRICS",
    "Authorize",
    "StoreCollector",
    "api_delivery",
    "api_environments",
    "api_hosts",
    "api_incidents",
    "render",
    "routes",
]

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1200.0, 1800.0)
"""Upper bounds (seconds) of the stage duration histogram: 0.1 s to 30 min, then +Inf."""

SHORT_SHA = 10
"""Characters of the applied SHA in ``gitops_applied_revision_info`` (``Revision.short``)."""

METRICS: dict[str, str] = {
    "gitops_reconcile_duration_seconds": "histogram",
    "gitops_runs_total": "counter",
    "gitops_operator_actions_total": "counter",
    "gitops_environment_ready": "gauge",
    "gitops_host_ready": "gauge",
    "gitops_applied_revision_info": "info",
    "gitops_drift": "gauge",
    "gitops_service_ready": "gauge",
    "gitops_check_result": "gauge",
    "gitops_service_not_removed": "gauge",
    "gitops_last_success_timestamp_seconds": "gauge",
    "gitops_rollout_hosts": "gauge",
    "gitops_quarantined_revisions": "gauge",
    "gitops_suspended": "gauge",
    "gitops_environment_controller": "gauge",
    "gitops_deployment_frequency_per_day": "gauge",
    "gitops_lead_time_seconds": "gauge",
    "gitops_change_failure_ratio": "gauge",
    "gitops_time_to_restore_seconds": "gauge",
    "gitops_rollouts_short_of_checks": "gauge",
    "gitops_environment_team_info": "info",
    "gitops_team_deployment_frequency_per_day": "gauge",
    "gitops_team_lead_time_seconds": "gauge",
    "gitops_team_change_failure_ratio": "gauge",
    "gitops_team_time_to_restore_seconds": "gauge",
}
"""Every metric exported, by its exposed name (counters with ``_total``, info with ``_info``)."""


# -- reading the store ------------------------------------------------------------------


def _epoch(stamp: datetime | None) -> float | None:
    return stamp.timestamp() if stamp is not None else None


def _number(data: dict[str, Any], key: str) -> float | None:
    """``data[key]`` as a float; None when absent or not a number (no figure yet)."""
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# -- run totals, added up as the history grows -------------------------------------------


@dataclasses.dataclass
class _Totals:
    """Finished runs of one store added up so far. The history only grows and a run is
    finished once, so each scrape reads only the runs above ``watermark`` (below it every
    run is finished and counted) that are not yet in ``counted``."""

    watermark: int = 0
    counted: set[int] = dataclasses.field(default_factory=set)
    runs: dict[tuple[str, str, str, int], int] = dataclasses.field(default_factory=dict)
    durations: dict[tuple[str, str, str], list[float]] = dataclasses.field(
        default_factory=dict)

    def update(self, store: Store) -> None:
        # Where the next watermark can go is read first: every run at or below it was
        # finished then, so the read that follows sees it (a run finishing in between is
        # above it and lands in ``counted``).
        unfinished, top, finished = store.finished_since(self.watermark, self.counted)
        for run in finished:
            self.counted.add(run.id)
            if run.result is not None:
                key = (run.environment, run.kind, run.result, int(run.event))
                self.runs[key] = self.runs.get(key, 0) + 1
            for stage, value in run.stage_s.items():
                sums = self.durations.setdefault((run.environment, run.kind, stage),
                                                 [0.0] * (2 + len(DURATION_BUCKETS)))
                sums[0] += 1
                sums[1] += value
                for i, bound in enumerate(DURATION_BUCKETS, 2):
                    sums[i] += value <= bound
        if top is not None:
            self.watermark = unfinished - 1 if unfinished is not None else top
        self.counted = {i for i in self.counted if i > self.watermark}


_totals_by_store: dict[tuple[str, int], _Totals] = {}
_totals_lock = threading.Lock()
MAX_COUNTED = 10_000
"""Runs counted above an old unfinished one before the totals are added up afresh."""


def _totals(store: Store) -> _Totals:
    """The up-to-date totals of ``store`` (kept per process and path, like a counter)."""
    key = store.identity()  # a store made anew at the same path starts over
    top = store.max_run_id()
    with _totals_lock:
        totals = _totals_by_store.get(key)
        if totals is None or len(totals.counted) > MAX_COUNTED or top < totals.watermark:
            # runs gone from below the watermark: not the history counted so far
            totals = _totals_by_store[key] = _Totals()
        totals.update(store)
        return totals


# -- the collector ----------------------------------------------------------------------


class StoreCollector(Collector):
    """Every gitops metric, read from one open ``Store`` at collection time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        latest = store.latest_checked()
        totals = _totals(store)
        yield self._durations(totals)
        yield from self._runs(totals)
        yield from self._status(store, latest)
        yield from self._checks(store, latest)
        yield self._not_removed(store)
        yield from self._environment_gauges(store, store.environments())
        yield from self._leases(store)
        yield from self._delivery()
        yield from self._teams()

    @staticmethod
    def _leases(store: Store) -> Iterator[Metric]:
        """Which controller holds each environment (several controllers on PostgreSQL; no
        series without leases): 1 for the live holder; an expired lease, a takeover due,
        shows ``controller=""`` at 0."""
        held = GaugeMetricFamily(
            "gitops_environment_controller",
            "1 for the controller holding the environment's lease (several controllers on"
            " one PostgreSQL); controller=\"\" 0 while nobody holds it.",
            labels=["environment", "controller"])
        for lease in store.leases():
            held.add_metric([lease.environment, lease.holder if lease.live else ""],
                            int(lease.live))
        yield held

    @staticmethod
    def _durations(totals: _Totals) -> Metric:
        family = HistogramMetricFamily(
            "gitops_reconcile_duration_seconds",
            "Duration of each stage of finished runs (source+load, plan+apply, verify).",
            labels=["environment", "kind", "stage"])
        for (env, kind, stage), (count, total, *cumulative) in sorted(totals.durations.items()):
            buckets = [(repr(b), int(c)) for b, c in zip(DURATION_BUCKETS, cumulative,
                                                          strict=True)]
            family.add_metric([env, kind, stage], [*buckets, ("+Inf", int(count))], total)
        return family

    @staticmethod
    def _runs(totals: _Totals) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "gitops_runs", "Finished runs by environment, kind and result.",
            labels=["environment", "kind", "result"])
        events = CounterMetricFamily(
            "gitops_operator_actions", "Operator actions recorded in the history.",
            labels=["environment", "action"])
        for (env, kind, result, event), count in sorted(totals.runs.items()):
            if event:
                events.add_metric([env, kind], count)
            else:
                runs.add_metric([env, kind, result], count)
        yield runs
        yield events

    @staticmethod
    def _status(store: Store, latest: list[LatestCheck]) -> Iterator[Metric]:
        env_ready = GaugeMetricFamily(
            "gitops_environment_ready", "1 if the environment's Ready condition is True.",
            labels=["environment"])
        host_ready = GaugeMetricFamily(
            "gitops_host_ready", "1 if the host's Ready condition is True.",
            labels=["environment", "host"])
        revision = InfoMetricFamily(
            "gitops_applied_revision", "The revision currently applied on the host.",
            labels=["environment", "host"])
        drift = GaugeMetricFamily(
            "gitops_drift",
            "1 if the host's latest check was a drift check (verify run) that failed.",
            labels=["environment", "host"])
        hosts: set[tuple[str, str]] = set()
        for row in store.status():
            if row.updated_at is None:
                continue  # only suspended or held: no run has written its status
            ready = int(row.ready)
            if row.host == ENVIRONMENT:
                env_ready.add_metric([row.environment], ready)
                continue
            hosts.add((row.environment, row.host))
            host_ready.add_metric([row.environment, row.host], ready)
            if row.last_applied is not None:
                revision.add_metric([row.environment, row.host],
                                    {"revision": row.last_applied.sha[:SHORT_SHA]})
        drifted = {(r.environment, r.host): int(r.kind == "verify" and r.verify_status == "fail")
                   for r in latest}
        for env, host in sorted(hosts | set(drifted)):
            drift.add_metric([env, host], drifted.get((env, host), 0))
        yield from (env_ready, host_ready, revision, drift)

    @staticmethod
    def _checks(store: Store, latest_checked: list[LatestCheck]) -> Iterator[Metric]:
        service_ready = GaugeMetricFamily(
            "gitops_service_ready",
            "1 if every check of the service passed in the host's latest checked run.",
            labels=["environment", "host", "service"])
        check = GaugeMetricFamily(
            "gitops_check_result", "Latest result of each check: 1 pass, 0 fail or error.",
            labels=["environment", "host", "service", "check"])
        for latest in latest_checked:
            services: dict[str, int] = {}
            for result in store.checks(latest.run_id, latest.host):
                passed = int(result.status == "pass")
                services[result.service] = services.get(result.service, 1) & passed
                check.add_metric([latest.environment, latest.host, result.service,
                                  result.check], passed)
            for service, ready in services.items():
                service_ready.add_metric([latest.environment, latest.host, service], ready)
        yield service_ready
        yield check

    @staticmethod
    def _not_removed(store: Store) -> Metric:
        family = GaugeMetricFamily(
            "gitops_service_not_removed",
            "1 for each service a host keeps that its revision no longer declares: reason"
            " left_in_place (no remove.py) or prune_disabled (settings.prune is false).",
            labels=["environment", "host", "service", "reason"])
        for env, kept in store.not_removed():
            reason = "left_in_place" if kept.state == "left in place" else "prune_disabled"
            family.add_metric([env, kept.host, kept.service, reason], 1)
        return family

    @staticmethod
    def _environment_gauges(store: Store, environments: list[str]) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "gitops_last_success_timestamp_seconds",
            "Unix time the last run that verified its hosts succeeded.", labels=["environment"])
        rollout = GaugeMetricFamily(
            "gitops_rollout_hosts",
            "Hosts of the latest rollout (reconcile, rollback, retry) by state:"
            " done (applied and verified), failed, not_verified (applied, no check ran),"
            " pending (not reached yet, or not attempted).",
            labels=["environment", "state"])
        quarantined = GaugeMetricFamily(
            "gitops_quarantined_revisions", "Revisions quarantined after a failed rollout.",
            labels=["environment"])
        suspended = GaugeMetricFamily(
            "gitops_suspended", "1 if applies to the environment are suspended.",
            labels=["environment"])
        counts = store.quarantine_counts()
        controls = store.all_controls()
        known_hosts: dict[str, set[str]] = {}
        for row in store.status():
            if row.host != ENVIRONMENT:
                known_hosts.setdefault(row.environment, set()).add(row.host)
        for env in environments:
            stamp = _epoch(store.last_verified_success(env))
            if stamp is not None:
                success.add_metric([env], stamp)
            quarantined.add_metric([env], counts.get(env, 0))
            suspended.add_metric([env], int(env in controls and controls[env].suspended))
            latest = store.latest_rollout(env)
            if latest is None:
                continue
            done = failed = unchecked = 0
            reached: set[str] = set()
            for host in store.host_results(latest.id):
                reached.add(host.host)
                if host.apply_status in ("failed", "unreachable") or host.verify_status == "fail":
                    failed += 1
                elif host.verify_status == "pass":
                    done += 1
                elif host.apply_status == "ok":
                    unchecked += 1
            pending = 0 if latest.result == "succeeded" else len(
                known_hosts.get(env, set()) - reached)
            for state, value in (("done", done), ("failed", failed),
                                 ("not_verified", unchecked), ("pending", pending)):
                rollout.add_metric([env, state], value)
        yield from (success, rollout, quarantined, suspended)

    def _delivery(self) -> Iterator[Metric]:
        figures = delivery_figures(self.store)
        if figures is None:
            return
        window = f"{DELIVERY_WINDOW}d"
        frequency = GaugeMetricFamily(
            "gitops_deployment_frequency_per_day", "Verified rollouts per day.",
            labels=["environment", "window"])
        lead = GaugeMetricFamily(
            "gitops_lead_time_seconds",
            "Commit time to verified on all targeted hosts over the window, by statistic:"
            " median or p90 (nearest rank).",
            labels=["environment", "window", "statistic"])
        failure = GaugeMetricFamily(
            "gitops_change_failure_ratio",
            "Rollouts that failed verification or were rolled back, over all rollouts.",
            labels=["environment", "window"])
        restore = GaugeMetricFamily(
            "gitops_time_to_restore_seconds",
            "Median time from a failed rollout to the next verified success.",
            labels=["environment", "window"])
        short = GaugeMetricFamily(
            "gitops_rollouts_short_of_checks",
            "Rollouts whose checks failed while nothing changed on the hosts (a stricter"
            " check): not failed changes, not in the change failure ratio.",
            labels=["environment", "window"])
        samples: tuple[tuple[GaugeMetricFamily, str, tuple[str, ...]], ...] = (
            (short, "short_of_checks", ()),
            (frequency, "deployment_frequency_per_day", ()),
            (lead, "lead_time_median_s", ("median",)),
            (lead, "lead_time_p90_s", ("p90",)),
            (failure, "change_failure_rate", ()),
            (restore, "time_to_restore_median_s", ()),
        )
        for env, data in sorted(figures.items()):
            for family, key, statistic in samples:
                value = _number(data, key)
                if value is not None:
                    family.add_metric([env, window, *statistic], value)
        yield from (frequency, lead, failure, restore, short)


    def _teams(self) -> Iterator[Metric]:
        """The owning team of each environment, and the four keys per team (the ``team``
        label holds declared team names only: ``teams.yml`` or the settings' ``teams``)."""
        from gitops.report.teams import environment_teams

        owners = environment_teams(self.store)
        info = GaugeMetricFamily(
            "gitops_environment_team_info", "1 per environment, labelled with its owning team.",
            labels=["environment", "team"])
        for env, team in owners.items():
            info.add_metric([env, team], 1)
        yield info
        groups = team_figures(self.store, owners)
        window = f"{DELIVERY_WINDOW}d"
        families = {
            "deployment_frequency_per_day": GaugeMetricFamily(
                "gitops_team_deployment_frequency_per_day",
                "Verified rollouts per day of the team's environments.",
                labels=["team", "window"]),
            "lead_time_median_s": GaugeMetricFamily(
                "gitops_team_lead_time_seconds",
                "Median commit-to-verified time over the team's environments.",
                labels=["team", "window"]),
            "change_failure_rate": GaugeMetricFamily(
                "gitops_team_change_failure_ratio",
                "Failed rollouts over decided rollouts of the team's environments.",
                labels=["team", "window"]),
            "time_to_restore_median_s": GaugeMetricFamily(
                "gitops_team_time_to_restore_seconds",
                "Median time to restore over the team's environments.",
                labels=["team", "window"]),
        }
        for team, data in groups.items():
            for key, family in families.items():
                value = _number(data, key)
                if value is not None:
                    family.add_metric([team, window], value)
        yield from families.values()


def render(store: Store) -> bytes:
    """The Prometheus text exposition of every gitops metric, read from ``store`` now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry)


def routes(state_dir: Path, authorize: Authorize | None = None,
           database: Database | None = None) -> list[BaseRoute]:
    """``GET /metrics`` and the read-only JSON API (``gitops.web.readapi``) over the store in
    ``state_dir`` (or ``database``).

    Every route asks ``authorize`` first (the server's bearer-token-or-loopback check); with
    None, only loopback clients are answered. Each request opens the store and closes it.
    """
    read = reader(database or Database(state_dir),
                  authorize or loopback_only("the API answers loopback clients only"))

    def metrics(request: Request, store: Store) -> Response:
        return Response(render(store), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", read(metrics), methods=["GET"]), *readapi.routes(read)]
