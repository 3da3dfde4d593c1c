"""Time rules from cron expressions: maintenance windows and schedules (the only croniter user).

A maintenance window says when an environment may change: it opens at each time its
``schedule`` (a five-field cron expression, read in ``timezone``) matches and stays open for
``duration``, Argo CD's sync-window vocabulary. With no windows an environment is always open.
A schedule (the weekly digest) fires at each match. Everything here is a pure function of the
windows and an injected ``now`` (an aware datetime), so the daemon's decisions and their tests
need no waiting. Called by the daemon's decisions and by settings validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

__all__ = ["Window", "WindowState", "next_fire", "parse_duration", "window_state"]

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_MINUTE = timedelta(minutes=1)


def parse_duration(value: object) -> timedelta:
    """``90m``, ``2h``, ``1h30m``, ``1d``, ``45s`` or a number of seconds; positive."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("a duration such as 30m, 2h or 1h30m")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and (m := _DURATION.fullmatch(value.strip())):
        if not any(m.groups()):
            raise ValueError("a duration such as 30m, 2h or 1h30m")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = float(((d * 24 + h) * 60 + mi) * 60 + s)
    else:
        raise ValueError("a duration such as 30m, 2h or 1h30m")
    if not 0 < seconds <= 366 * 86400 or seconds != seconds:
        raise ValueError("a duration between 1 second and 366 days")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration),
                     PlainSerializer(lambda d: d.total_seconds(), return_type=float,
                                     when_used="json")]
"""In JSON (the worker's job) a number of seconds, which ``parse_duration`` reads back."""


def _check_cron(expression: str) -> str:
    from croniter import croniter  # imported by the commands that read a cron expression

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError("a five-field cron expression (minute hour day month weekday)")
    return expression


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone name such as UTC or Europe/Berlin") from None


class Window(BaseModel):
    """When changes may be applied: from each match of ``schedule`` for ``duration``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    schedule: str = Field(min_length=1, max_length=200)
    """A five-field cron expression: ``0 22 * * 1-5`` opens at 22:00 on weekdays."""
    duration: Duration
    """How long the window stays open: ``2h``, ``90m``, ``1h30m``."""
    timezone: str = "UTC"
    """The IANA time zone the schedule is read in."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        _zone(value)
        return value

    def last_opening(self, now: datetime) -> datetime:
        """The latest time at or before ``now`` that this window opened."""
        from croniter import croniter

        local = now.astimezone(_zone(self.timezone)).replace(second=0, microsecond=0)
        start: datetime = croniter(self.schedule, local + _MINUTE).get_prev(datetime)
        return start

    def next_opening(self, now: datetime) -> datetime:
        """The first time after ``now`` that this window opens."""
        from croniter import croniter

        local = now.astimezone(_zone(self.timezone))
        start: datetime = croniter(self.schedule, local).get_next(datetime)
        return start


@dataclass(frozen=True)
class WindowState:
    """Whether changes may be applied at a moment, and when that changes."""

    open: bool
    closes_at: datetime | None = None
    """While open: when the (last closing) open window ends; None without windows."""
    opens_at: datetime | None = None
    """While closed: when the next window opens."""

    def describe(self) -> str:
        if self.open:
            if self.closes_at is None:
                return "no maintenance windows: changes apply at any time"
            return f"maintenance window open until {_iso(self.closes_at)}"
        assert self.opens_at is not None
        return f"waiting for the maintenance window that opens at {_iso(self.opens_at)}"


def window_state(windows: list[Window] | tuple[Window, ...], now: datetime) -> WindowState:
    """Open if any window is open at ``now`` (an aware datetime); always open without windows."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not windows:
        return WindowState(open=True)
    closes = [end for w in windows
              if (end := w.last_opening(now) + w.duration) > now]
    if closes:
        return WindowState(open=True, closes_at=max(closes).astimezone(UTC))
    return WindowState(open=False,
                       opens_at=min(w.next_opening(now) for w in windows).astimezone(UTC))


def check_cron(expression: str) -> str:
    """``expression`` if it is a five-field cron expression, else ValueError (settings)."""
    return _check_cron(expression)


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone, else ValueError (settings)."""
    _zone(name)
    return name


def next_fire(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first match of a cron ``schedule`` (read in ``timezone``) strictly after ``after``."""
    from croniter import croniter

    _check_cron(schedule)
    fire: datetime = croniter(schedule, after.astimezone(_zone(timezone))).get_next(datetime)
    return fire.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
