"""Maintenance windows and schedules: pure functions of the windows and an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gitops.schedule import Window, next_fire, parse_duration, window_state


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


WEEKDAY_EVENINGS = Window(schedule="0 22 * * 1-5", duration="2h")  # type: ignore[arg-type]
BERLIN_NIGHTS = Window(schedule="0 2 * * *", duration="1h30m",  # type: ignore[arg-type]
                       timezone="Europe/Berlin")

# (windows, now, open?, closes_at or opens_at)
CASES = [
    ([], "2026-12-01T12:00:00", True, None),
    ([WEEKDAY_EVENINGS], "2026-12-01T22:00:00", True, "2026-12-02T00:00:00"),  # Tuesday, opens
    ([WEEKDAY_EVENINGS], "2026-12-01T23:59:59", True, "2026-12-02T00:00:00"),
    ([WEEKDAY_EVENINGS], "2026-12-02T00:00:00", False, "2026-12-02T22:00:00"),  # just closed
    ([WEEKDAY_EVENINGS], "2026-12-01T21:59:59", False, "2026-12-01T22:00:00"),
    ([WEEKDAY_EVENINGS], "2026-12-05T23:00:00", False, "2026-12-07T22:00:00"),  # Saturday
    ([BERLIN_NIGHTS], "2026-12-01T01:00:00", True, "2026-12-01T02:30:00"),  # 02:00 CET = 01:00Z
    ([BERLIN_NIGHTS], "2026-07-01T00:00:00", True, "2026-07-01T01:30:00"),  # CEST: 00:00Z
    ([BERLIN_NIGHTS], "2026-12-01T00:59:00", False, "2026-12-01T01:00:00"),
    ([WEEKDAY_EVENINGS, BERLIN_NIGHTS], "2026-12-01T23:30:00", True, "2026-12-02T00:00:00"),
    ([WEEKDAY_EVENINGS, BERLIN_NIGHTS], "2026-12-02T00:30:00", False, "2026-12-02T01:00:00"),
]


@pytest.mark.parametrize(("windows", "now", "is_open", "when"), CASES)
def test_window_state(windows: list[Window], now: str, is_open: bool, when: str | None) -> None:
    """Open from each match of the schedule (in its time zone) for its duration, else closed
    with the next opening; no windows means always open."""
    state = window_state(windows, at(now))
    assert state.open is is_open
    if is_open:
        assert state.closes_at == (at(when) if when else None)
        assert state.opens_at is None
    else:
        assert state.opens_at == at(when) if when else None


def test_closed_state_says_when_it_opens() -> None:
    """A closed window's description names the opening time, in UTC."""
    state = window_state([WEEKDAY_EVENINGS], at("2026-12-01T12:00:00"))
    assert state.describe() == (
        "waiting for the maintenance window that opens at 2026-12-01 22:00 UTC")
    assert "until 2026-12-02 00:00 UTC" in window_state(
        [WEEKDAY_EVENINGS], at("2026-12-01T22:30:00")).describe()


def test_window_longer_than_its_period_stays_open() -> None:
    """An hourly window lasting 90 minutes is open all the time."""
    w = Window(schedule="0 * * * *", duration="90m")  # type: ignore[arg-type]
    for minute in range(0, 180, 7):
        assert window_state([w], at("2026-12-01T00:00:00") + timedelta(minutes=minute)).open


def test_naive_now_is_refused() -> None:
    """The clock must give an aware datetime: a naive one would silently mean local time."""
    with pytest.raises(ValueError):
        window_state([WEEKDAY_EVENINGS], datetime(2026, 12, 1, 12, 0))


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("45s", 45), (90, 90),
    (1.5, 1.5), ("1d2h3m4s", 93784),
])
def test_durations(text: object, seconds: float) -> None:
    """Durations read as Argo CD's sync windows write them, or as seconds."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "h", "2x", "-5m", "0s", 0, -1, float("nan"),
                                 float("inf"), True, None, [], "400d"])
def test_bad_durations(bad: object) -> None:
    """Anything else is refused with the expected form, not a traceback."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("schedule", "bad", "five-field cron"),
    ("schedule", "0 25 * * *", "five-field cron"),
    ("schedule", "* * * * * *", "five-field cron"),
    ("timezone", "Mars/Olympus", "IANA time zone"),
    ("timezone", "../../etc/passwd", "IANA time zone"),
    ("duration", "soon", "duration"),
])
def test_bad_windows(field: str, value: str, message: str) -> None:
    """A bad schedule, time zone or duration is a validation error naming the field."""
    values = {"schedule": "0 22 * * *", "duration": "1h", "timezone": "UTC", field: value}
    with pytest.raises(ValidationError) as info:
        Window(**values)  # type: ignore[arg-type]
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert message in errors[0]["msg"]


def test_next_fire() -> None:
    """A schedule fires at its next match strictly after the given time, in its time zone."""
    monday_9 = "0 9 * * 1"
    assert next_fire(monday_9, "UTC", at("2026-12-01T00:00:00")) == at("2026-12-07T09:00:00")
    assert next_fire(monday_9, "UTC", at("2026-12-07T09:00:00")) == at("2026-12-14T09:00:00")
    assert next_fire(monday_9, "Europe/Berlin",
                     at("2026-12-01T00:00:00")) == at("2026-12-07T08:00:00")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)))
def test_state_is_consistent(now: datetime) -> None:
    """Whatever the moment: open means the close is ahead, closed means the opening is ahead
    and the window is open then."""
    windows = [WEEKDAY_EVENINGS, BERLIN_NIGHTS]
    state = window_state(windows, now)
    if state.open:
        assert state.closes_at is not None and state.closes_at > now
    else:
        assert state.opens_at is not None and state.opens_at > now
        assert window_state(windows, state.opens_at).open
