"""``gitops incidents``: incidents with their timelines and post-mortems; ``annotate`` and
``action`` write into a post-mortem (recorded with who and when)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gitops import freetext
from gitops.cli.context import load_settings, open_reader, store_environment
from gitops.cli.options import (
    EXIT_CODES,
    ROW_NUMBER,
    a_note,
    json_option,
    one_line,
    store_options,
    writer_options,
)
from gitops.cli.output import duration, emit, fail
from gitops.daemon import control
from gitops.errors import GitopsError, UsageError
from gitops.record.store import NoStore, Store, open_store

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["action", "annotate", "incidents"]


@click.group(epilog=EXIT_CODES, invoke_without_command=True)
@store_options
@click.option("--write", "folder",
              type=click.Path(path_type=Path, file_okay=False, writable=True),
              help="Also write one Markdown report per incident into this folder.")
@json_option
@click.pass_context
def incidents(ctx: click.Context, environment: str | None, state_dir: Path | None,
              folder: Path | None, as_json: bool) -> None:
    """Incidents (failed rollouts, rollbacks, drift corrections) with their timelines and
    post-mortems (annotate, action)."""
    from gitops.report import incidents as incidents_

    if ctx.invoked_subcommand is not None:
        return
    s = load_settings(state_dir=state_dir)
    name_ = store_environment(s, environment)
    store = open_reader(s, name_, as_json)
    if store is None:
        return
    with store:
        found = incidents_.incidents(store, name_)
        if folder is not None:
            incidents_.write_reports(store, folder)
    if as_json:
        emit([i.as_dict() for i in found])
        return
    if not found:
        click.echo("no incidents")
    for i in found:
        d = i.as_dict()
        pm = d["postmortem"]
        review = "reviewed" if d["reviewed"] else "not reviewed"
        actions = f", {pm['open_actions']} open action(s)" if pm.get("open_actions") else ""
        click.echo(f"{d['id']:<16} {d['status']:<7} {d['cause']:<17} "
                   f"{(d['commit'].get('sha') or '')[:10]:<10} opened {d['opened_at'][:19]} "
                   f"{'restored after ' + duration(d['duration_s']) if d['closed_at'] else ''}"
                   f" [{d['team'] or 'no team'}; {review}{actions}]")
    if folder is not None:
        click.echo(f"reports written to {folder}")


def _recorded(s: Settings, as_json: bool) -> None:
    """A post-mortem writes only into a record that has incidents: a missing state folder or
    one with no record yet is one usage error (exit 2), nothing else printed."""
    try:
        store = open_store(s, readonly=True)
    except NoStore as exc:
        fail(exc if not exc.folder_exists else UsageError(
            f"no runs recorded in {s.state_dir}: no incident to write into"), as_json)
    except GitopsError as exc:
        fail(exc, as_json)
    store.close()


def _rewrite_report(s: Settings, store: Store, incident_id: str) -> None:
    """The incident's report in ``reports/`` says what was just written (a folder that
    cannot be written is said on stderr: the entry is recorded all the same)."""
    from gitops.report import reports

    try:
        reports.after_postmortem(s, store, incident_id)
    except OSError as exc:
        click.secho(f"warning: cannot write the incident report: {exc}", fg="yellow", err=True)


def _print_postmortem(incident: Any) -> None:
    from gitops.report.incidents import SECTIONS

    d = incident.as_dict()
    pm = d["postmortem"]
    click.echo(f"{d['id']}: post-mortem {'reviewed' if d['reviewed'] else 'not reviewed yet'}")
    for key, title in SECTIONS.items():
        value = pm[key]
        entries = value if isinstance(value, list) else ([value] if value else [])
        for e in entries:
            click.echo(f"  {title}: {freetext.shown_text(e['text'])} "
                       f"({freetext.shown(e['by'])}, {e['at'][:16]})")
    for a in pm["actions"]:
        given = (f", given by {freetext.shown(a['team_by'])} {a['team_at'][:16]}"
                 if a.get("team_by") else "")
        click.echo(f"  action {a['id']} [{a['state']}] {freetext.shown_text(a['text'])} "
                   f"(team: {a['team'] or 'no owner yet'}{given})")


@incidents.command(epilog=EXIT_CODES)
@click.argument("incident_id", metavar="ID")
@click.option("--summary", callback=a_note,
              help="What happened, in a few sentences (replaces the last).")
@click.option("--impact", callback=a_note,
              help="What users or other teams noticed (replaces the last).")
@click.option("--causes", callback=a_note,
              help="One contributing cause: what, not who (added to the list).")
@click.option("--went-well", "went_well", callback=a_note,
              help="One thing that went well (added to the list).")
@writer_options
def annotate(incident_id: str, summary: str | None, impact: str | None, causes: str | None,
             went_well: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Write into incident ID's post-mortem (recorded with who and when)."""
    from gitops.report import incidents as incidents_

    s = load_settings(state_dir=state_dir)
    sections = {k: v for k, v in (("summary", summary), ("impact", impact), ("causes", causes),
                                  ("went_well", went_well)) if v is not None}
    _recorded(s, as_json)
    with open_store(s) as store:
        found = incidents_.annotate(store, incident_id, sections, actor=control.who())
        _rewrite_report(s, store, found.id)
    if as_json:
        emit(found.as_dict())
        return
    _print_postmortem(found)


@incidents.command(epilog=EXIT_CODES)
@click.argument("incident_id", metavar="ID")
@click.option("--add", "text", callback=a_note,
              help="A new action item (with --team: the team that owns it).")
@click.option("--done", "done", type=ROW_NUMBER, metavar="N",
              help="Mark action item N done.")
@click.option("--reopen", type=ROW_NUMBER, metavar="N",
              help="Mark action item N open again.")
@click.option("--assign", type=ROW_NUMBER, metavar="N",
              help="Give action item N the owning --team.")
@click.option("--team", callback=one_line,
              help="The owning team (one of the settings' teams or a recorded owner).")
@writer_options
def action(incident_id: str, text: str | None, done: int | None, reopen: int | None,
           assign: int | None, team: str | None, state_dir: Path | None,
           as_json: bool) -> None:
    """Add an action item to incident ID's post-mortem, or mark one done (--done N)."""
    from gitops.report import incidents as incidents_

    chosen = [name for name, v in (("--add", text), ("--done", done), ("--reopen", reopen),
                                   ("--assign", assign)) if v is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --add TEXT, --done N, --reopen N, --assign N")
    if assign is not None and team is None:
        raise UsageError("--assign N needs --team TEAM")
    s = load_settings(state_dir=state_dir)
    who = control.who()
    _recorded(s, as_json)
    with open_store(s) as store:
        teams = incidents_.known_teams(store, s.teams)
        if text is not None:
            item = incidents_.add_action(store, incident_id, text, team, actor=who, teams=teams)
        else:
            number = done or reopen or assign
            assert number is not None
            item = incidents_.update_action(
                store, incident_id, number, actor=who, teams=teams, team=team,
                done=True if done else (False if reopen else None))
        found = incidents_.find(store, incident_id)
        _rewrite_report(s, store, found.id)
    if as_json:
        emit({"action": item.as_dict(), "incident": found.as_dict()})
        return
    click.echo(f"action {item.id} [{item.state}] {freetext.shown_text(item.text)} "
               f"(team: {item.team or 'no owner yet'})")
    _print_postmortem(found)
