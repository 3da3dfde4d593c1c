"""``gitops metrics`` and ``gitops digest``: the delivery figures (the DORA four keys) from
the recorded history, per environment or side by side per team with trends, and the digest."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gitops import freetext
from gitops.cli.context import load_settings, open_reader, store_environment
from gitops.cli.options import EXIT_CODES, Finite, json_option, store_options, writer_options
from gitops.cli.output import duration, emit
from gitops.errors import GitopsError, UsageError
from gitops.record.store import Store

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["MAX_DAYS", "digest", "metrics"]


@click.command(epilog=EXIT_CODES)
@store_options
@click.option("--days", default=90.0, show_default=True, type=Finite(),
              help="The window, in days (a positive number).")
@click.option("--by", type=click.Choice(["team", "environment"]),
              help="Side by side per owning team (or environment), each key with its trend "
                   "against the previous window.")
@json_option
def metrics(environment: str | None, state_dir: Path | None, days: float, by: str | None,
            as_json: bool) -> None:
    """Delivery metrics from the recorded history: deployment frequency, lead time for
    changes, change failure rate and time to restore (the DORA four keys)."""
    from gitops.report.delivery import delivery_metrics

    _max_days(days)
    s = load_settings(state_dir=state_dir)
    name_ = store_environment(s, environment)
    store = open_reader(s, name_, as_json, empty={})
    if store is None:
        return
    if by is not None:
        with store:
            _compare(store, s, by, days, as_json)
        return
    with store:
        result = delivery_metrics(store, environment=name_, days=days)
    if as_json:
        emit({name: m.as_dict() for name, m in result.items()})
        return
    if not result:
        click.echo("no runs recorded yet")
    for name, m in result.items():
        d = m.as_dict()
        rate = d["change_failure_rate"]
        click.echo(f"{name} (last {days:g} days)")
        click.echo(f"  deployment frequency  {d['deployment_frequency_per_day']:.2f}/day "
                   f"({d['deployments']} verified rollouts)")
        click.echo(f"  lead time for changes median {duration(d['lead_time_median_s'])}, "
                   f"p90 {duration(d['lead_time_p90_s'])}")
        click.echo("  change failure rate   "
                   + (f"{rate:.0%} ({d['failed_rollouts']} of {d['rollouts']} rollouts)"
                      if rate is not None else "-")
                   + (f"; {d['rollouts_pending']} not counted yet (errored, interrupted or "
                      "running: counted once verified or failed)"
                      if d["rollouts_pending"] else "")
                   + (f"; {d['short_of_checks']} short of a new check (checks failed, nothing "
                      "changed on the hosts: not a failed change)"
                      if d["short_of_checks"] else ""))
        click.echo(f"  time to restore       median {duration(d['time_to_restore_median_s'])}"
                   + (f"; unrestored since {d['unrestored_since']}"
                      if d["unrestored_since"] else ""))
        for stage in d.get("stages", []):
            click.echo(f"  lead time, {stage['stage']}: median {duration(stage['median_s'])}, "
                       f"p90 {duration(stage['p90_s'])} ({stage['count']} revision(s))")


@click.command(epilog=EXIT_CODES)
@writer_options
@click.option("--days", type=Finite(), help="The period (default: the digest settings').")
@click.option("--send", is_flag=True, help="Also send it to the digest's notifiers.")
def digest(state_dir: Path | None, as_json: bool, days: float | None, send: bool) -> None:
    """The digest: the four keys per team against the previous period, incidents opened and
    restored, post-mortems not reviewed, open action items by team."""
    from gitops.daemon import digest as digest_

    if days is not None:
        _max_days(days)
    s = load_settings(state_dir=state_dir)
    store = open_reader(s, None, as_json, empty={})
    if store is None:
        return
    with store:
        found = digest_.build(store, s, days=days)
    if send:
        from gitops.record.store import open_store

        deliveries, unrecorded = digest_.deliver(found, s, lambda: open_store(s))
        failed = [d for d in deliveries if not d.ok]
        for d in deliveries:
            click.echo(str(d), err=True)
        if unrecorded is not None:  # the digest was sent all the same
            known = isinstance(unrecorded, (GitopsError, OSError, sqlite3.Error))
            click.echo("the deliveries were not recorded: "
                       + (str(unrecorded) if known else type(unrecorded).__name__), err=True)
        if failed:
            if as_json:
                emit(found.as_json())
            sys.exit(1)
    if as_json:
        emit(found.as_json())
        return
    click.echo(freetext.shown_text(found.text()))


MAX_DAYS = 36600
"""The longest window ``--days`` takes (a hundred years; the previous window is as long)."""


def _max_days(days: float) -> None:
    if days > MAX_DAYS:
        raise UsageError(f"--days: at most {MAX_DAYS} (a hundred years)")


def _trend_text(key: str, t: dict[str, Any]) -> str:
    from gitops.daemon.digest import figure

    if t["direction"] is None:
        return ("no figure to compare" if t["previous"] is None
                else f"none now, {figure(key, t['previous'])} before")
    if t["direction"] == "same":
        return "same as before"
    arrow = "up" if t["direction"] == "up" else "down"
    return (f"{arrow} from {figure(key, t['previous'])} "
            f"({'better' if t['better'] else 'worse'})")


def _compare(store: Store, s: Settings, by: str, days: float, as_json: bool) -> None:
    """``gitops metrics --by team|environment``: the groups side by side, with trends."""
    from gitops.daemon.digest import KEY_LABELS, figure
    from gitops.report.delivery import DORA_BANDS, compare
    from gitops.report.teams import environment_teams

    groups = compare(store, environment_teams(store, s.environments), by=by, days=days)
    if as_json:  # the shape of GET /api/delivery?by=...
        emit({"by": by, "days": days, "groups": {n: g.as_dict() for n, g in groups.items()},
               "bands": DORA_BANDS})
        return
    if not groups:
        click.echo("no runs recorded yet")
    for name, g in groups.items():
        d = g.as_dict()
        envs = f" (environments: {', '.join(g.environments)})" if by == "team" else ""
        click.echo(f"{by} {name}{envs}: last {days:g} days, against the {days:g} before")
        for key, label in KEY_LABELS.items():
            extra = ""
            if key == "deployment_frequency_per_day":
                extra = f" ({d['deployments']})"
            elif key == "change_failure_rate" and d["rollouts"]:
                extra = f" ({d['failed_rollouts']} of {d['rollouts']})"
            click.echo(f"  {label:<26} {figure(key, d[key]) + extra:<16} "
                       f"{_trend_text(key, d['trends'][key])}")
    click.echo("what good looks like (DORA 2021 bands; a reference, not a verdict):")
    for key, label in KEY_LABELS.items():
        bands = "; ".join(f"{band}: {text}" for band, text in DORA_BANDS[key])
        click.echo(f"  {label}: {bands}")
