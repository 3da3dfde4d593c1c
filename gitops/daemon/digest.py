"""The digest: what the teams delivered over a period, to everyone who listens.

``build`` reads the record (``gitops.report.delivery.compare`` by team,
``gitops.report.incidents``) into a
``Digest``: the four keys per team with their change against the period before, incidents
opened and restored in the period, post-mortems not yet reviewed, open action items by team.
``send`` hands it to ``gitops.daemon.notify`` (what talks to receivers): a generic
JSON webhook gets ``as_json()`` (schema ``gitops.digest/v1``, header ``X-Gitops-Event:
digest``), a Slack-compatible hook the ``text()`` as mrkdwn. ``Schedule`` says when one is
due from the settings' cron expression; the daemon (``gitops.daemon.digest_timer``) asks it
with its injected wall clock, so tests need no waiting. ``gitops digest`` prints one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gitops import schedule
from gitops.daemon import notify
from gitops.record.store import Store
from gitops.report.delivery import LOWER_IS_BETTER, Group, compare
from gitops.report.incidents import Incident, incidents
from gitops.report.teams import environment_teams
from gitops.settings import DigestSettings, NotifierConfig, Settings

__all__ = ["KEY_LABELS", "SCHEMA", "Digest", "Schedule", "build", "deliver", "figure", "receivers",
           "send"]

SCHEMA = "gitops.digest/v1"
NO_OWNER = "no owner yet"
_SHOWN = 10
"""Incidents named per list in the text (the JSON has them all)."""


@dataclass(frozen=True)
class Digest:
    """One period's summary; ``as_json()`` and ``text()`` are what receivers get."""

    start: datetime
    end: datetime
    days: float
    teams: dict[str, Group]
    opened: list[Incident]
    restored: list[Incident]
    unreviewed: list[Incident]
    open_actions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        def brief(i: Incident) -> dict[str, Any]:
            return {"id": i.id, "environment": i.environment, "team": i.team, "cause": i.cause,
                    "opened_at": i.opened_at.isoformat(),
                    "closed_at": i.closed_at.isoformat() if i.closed_at else None}

        return {
            "schema": SCHEMA, "kind": "digest",
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat(),
                       "days": self.days},
            "teams": {name: {"environments": list(g.environments),
                             **{k: v for k, v in g.current.as_dict().items()
                                if k not in ("start", "end")},
                             "trends": g.trends()} for name, g in self.teams.items()},
            "incidents": {"opened": [brief(i) for i in self.opened],
                          "restored": [brief(i) for i in self.restored]},
            "unreviewed": [brief(i) for i in self.unreviewed],
            "open_actions": self.open_actions,
        }

    @property
    def title(self) -> str:
        return (f"Delivery digest {self.start:%Y-%m-%d} to {self.end:%Y-%m-%d} "
                f"({self.days:g} days, against the {self.days:g} before)")

    def text(self) -> str:
        """The digest as lines of text (Slack mrkdwn: ``*bold*``)."""
        lines = [f"*{self.title}*"]
        for name, g in self.teams.items():
            lines.append(f"*{name}* ({', '.join(g.environments)})")
            for key, t in g.trends().items():
                lines.append(f"  {KEY_LABELS[key]}: {figure(key, getattr(g.current, key))}"
                             f" ({_change(key, t)})")
        lines.append(f"Incidents: {len(self.opened)} opened, {len(self.restored)} restored"
                     + (": " + ", ".join(i.id for i in self.opened[:_SHOWN]) if self.opened
                        else ""))
        lines.append(f"Post-mortems not reviewed: {len(self.unreviewed)}"
                     + (": " + ", ".join(i.id for i in self.unreviewed[:_SHOWN])
                        if self.unreviewed else ""))
        counts = ", ".join(f"{team} {len(items)}" for team, items in self.open_actions.items())
        lines.append(f"Open action items: {counts or 'none'}")
        return "\n".join(lines)


KEY_LABELS = {"deployment_frequency_per_day": "deployment frequency",
           "lead_time_median_s": "lead time (median)",
           "change_failure_rate": "change failure rate",
           "time_to_restore_median_s": "time to restore (median)"}
assert set(KEY_LABELS) == set(LOWER_IS_BETTER)


def figure(key: str, value: float | None) -> str:
    """One of the four keys as the digest and ``gitops metrics --by`` print it."""
    if value is None:
        return "-"
    if key == "deployment_frequency_per_day":
        return f"{value:.2f}/day"
    if key == "change_failure_rate":
        return f"{value:.0%}"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}min"
    return f"{value / 3600:.1f}h"


def _change(key: str, t: dict[str, Any]) -> str:
    if t["direction"] is None:
        return ("nothing to compare with" if t["previous"] is None
                else f"none now, {figure(key, t['previous'])} before")
    if t["direction"] == "same":
        return "same as before"
    return (f"{t['direction']} from {figure(key, t['previous'])}, "
            f"{'better' if t['better'] else 'worse'}")


def build(store: Store, settings: Settings, *, days: float | None = None,
          now: datetime | None = None) -> Digest:
    """The digest of the ``days`` (default: the settings') up to ``now``."""
    period = days if days is not None else settings.digest.days
    end = now or datetime.now(UTC)
    start = end - timedelta(days=period)
    owners = environment_teams(store, settings.environments)
    groups = compare(store, owners, by="team", days=period, now=end)
    found = incidents(store)
    opened = [i for i in found if start <= i.opened_at <= end]
    restored = [i for i in found if i.closed_at is not None and start <= i.closed_at <= end]
    unreviewed = [i for i in found if not i.reviewed]
    actions: dict[str, list[dict[str, Any]]] = {}
    for i in found:
        for a in i.postmortem.get("actions", []):
            if a["state"] == "open":
                actions.setdefault(a["team"] or NO_OWNER, []).append(
                    {"incident": i.id, "id": a["id"], "text": a["text"]})
    return Digest(start, end, period, groups, opened, restored, unreviewed,
                  dict(sorted(actions.items())))


def receivers(settings: Settings) -> list[tuple[str, NotifierConfig]]:
    """Who gets the digest, each with its name in the record of deliveries: the digest
    settings' notifiers (``digest-<type>-<n>`` unless named), else every environment's and
    the global ones that list ``digest`` in their events, named as their events' deliveries
    are (each receiver once)."""
    if settings.digest.notifiers:
        return [(n.label(i, "digest"), n) for i, n in enumerate(settings.digest.notifiers)]
    seen: dict[tuple[str, Any], tuple[str, NotifierConfig]] = {
        (n.type, n.url): (n.label(i), n) for i, n in enumerate(settings.notifiers)
        if "digest" in n.events}
    for env in settings.environments:
        for i, n in enumerate(env.notifiers):
            seen.setdefault((n.type, n.url), (n.label(i, env.name), n))
    return list(seen.values())


def send(digest: Digest, named: Sequence[tuple[str, NotifierConfig]],
         **options: Any) -> list[notify.Delivery]:
    """Send ``digest`` to ``named`` receivers (``receivers()``; ``options``: notify's timeout,
    retries, sleep); each delivery carries its receiver's name."""
    return notify.notify_digest([c for _, c in named], digest.as_json(), digest.text(),
                                digest.title, names=[name for name, _ in named], **options)


def deliver(digest: Digest, settings: Settings, open_store: Callable[[], Store]
            ) -> tuple[list[notify.Delivery], Exception | None]:
    """Send ``digest`` to the settings' ``receivers`` and record each delivery with its
    notifier's others (a digest that never arrives is a failing notifier too): the
    deliveries, and why they could not be recorded (None: recorded; the digest was sent all
    the same)."""
    deliveries = send(digest, receivers(settings))
    try:
        with open_store() as store:
            notify.record(store, deliveries)
    except Exception as exc:  # the record unreachable or not writable
        return deliveries, exc
    return deliveries, None


class Schedule:
    """When the next digest is due (the settings' cron ``schedule`` in ``timezone``).

    ``due(now)`` is True once per match of the schedule: the first call only learns the next
    match after ``now``; a call at or after it answers True and moves on to the match after."""

    def __init__(self, config: DigestSettings) -> None:
        if config.schedule is None:
            raise ValueError("no digest schedule")
        self.config = config
        self.next: datetime | None = None

    def due(self, now: datetime) -> bool:
        assert self.config.schedule is not None
        if self.next is None:
            self.next = schedule.next_fire(self.config.schedule, self.config.timezone, now)
            return False
        if now < self.next:
            return False
        self.next = schedule.next_fire(self.config.schedule, self.config.timezone, now)
        return True
