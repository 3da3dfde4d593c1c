"""``gitops status``: conditions and revisions per environment and host, the quarantined
revisions, the problems of an invalid revision, and the promotion pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gitops import freetext
from gitops.cli.context import load_settings, open_reader, store_environment
from gitops.cli.options import EXIT_CODES, json_option, store_options
from gitops.cli.output import emit, short_ref
from gitops.record.store import Store

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["status"]


@click.command(epilog=EXIT_CODES)
@store_options
@json_option
def status(as_json: bool, environment: str | None, state_dir: Path | None) -> None:
    """Conditions (Ready / Reconciling / Stalled) and revisions per environment and host,
    the revisions quarantined there, and the promotion pipeline.

    --json: the status rows; each environment's own row (host empty) also has
    "quarantined" (sha, reason, since) and "pipeline" (its stage, or null when no
    environment promotes from another)."""
    from gitops.daemon import promotion

    s = load_settings(state_dir=state_dir)
    name_ = store_environment(s, environment)
    store = open_reader(s, name_, as_json)
    if store is None:
        return
    from gitops.report.teams import environment_teams

    chain = promotion.links(s.environments)
    with store:
        owners = environment_teams(store, s.environments)
        rows = [row.as_dict() | {"team": owners.get(row.environment)}
                for row in store.status(name_)]
        quarantined: dict[str, list[dict[str, Any]]] = {}
        for q in store.quarantined(name_):
            quarantined.setdefault(q.environment, []).append(
                {"sha": q.sha, "reason": q.reason, "since": q.since.isoformat()})
        stages = (promotion.pipeline(store, chain) if any(link.upstream for link in chain)
                  else [])
        access = _access(s, store)
        invalid = {row["environment"]: _invalid_run(store, row["environment"]) for row in rows
                   if not row["host"] and any(c["reason"] == "ValidationFailed"
                                              for c in row["conditions"])}
    stage_of = {link.environment: stage for link, stage in zip(chain, stages, strict=False)}
    for row in rows:
        if not row["host"]:
            row["quarantined"] = quarantined.get(row["environment"], [])
            row["pipeline"] = stage_of.get(row["environment"])
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no runs recorded yet")
        return
    for row in rows:
        name = row["environment"] + (f"/{row['host']}" if row["host"] else "")
        ready = next((c for c in row["conditions"] if c["type"] == "Ready"), None)
        flags = " ".join(f"{c['type']}={c['status']}" for c in row["conditions"])
        owner = f" team={row['team']}" if row["team"] and not row["host"] else ""
        click.echo(f"{name:<24} {flags:<32} {ready['reason'] if ready else '':<26} "
                   f"applied={short_ref(row['last_applied_revision'])}{owner}")
        for c in row["conditions"]:
            click.echo(f"    {c['type']}: {freetext.shown(c['message'])}")
        found = invalid.get(row["environment"]) if not row["host"] else None
        if found is not None:
            _print_problems(*found)
        held = row.get("held")
        if held:
            click.echo(f"    Held: {held['sha'][:10]} by {freetext.shown(held['actor'])} until "
                       f"`gitops resume` or a commit newer than {(held['head'] or '')[:10]}")
        _print_quarantined(row["environment"], row.get("quarantined") or [])
    _print_stages(stages)
    click.echo(f"access: {access}", err=True)


def _access(s: Settings, store: Store) -> str:
    """Who the daemon's HTTP server lets in, in one line (``docs/operate/people.md``)."""
    from datetime import UTC, datetime

    tokens = store.tokens()
    live = sum(1 for t in tokens if t.state(datetime.now(UTC)) == "live")
    trusted = (s.trust_loopback if s.trust_loopback is not None
               else s.api_token is None and not tokens)
    if trusted and s.trust_loopback is None:
        return ("single-operator lab mode: loopback clients act as 'local' (admin) without "
                "a token; making a token or setting api_token ends it (docs/operate/people.md)")
    if trusted:
        return (f"trust_loopback = true: loopback clients act as 'local' (admin) beside "
                f"{live} live token(s)")
    return f"{live} live token(s){' and api_token' if s.api_token else ''}: every client " \
           "needs a token"


_PROBLEMS_SHOWN = 10
"""Problems of an invalid revision ``gitops status`` prints (``history --run N``: all)."""


def _invalid_run(store: Store, environment: str) -> tuple[int, list[str]] | None:
    """The newest invalid run of ``environment`` among its last 50: its id and problems."""
    run = next((r for r in store.history(environment, 50) if r.result == "invalid"), None)
    if run is None:
        return None
    return run.id, [line.strip() for line in (run.error or "").splitlines()[1:] if line.strip()]


def _print_problems(run_id: int, problems: list[str]) -> None:
    """The problems that make the environment's revision invalid, where each one is."""
    click.echo(f"    Problems (run #{run_id}; all of them: gitops history --run {run_id}):")
    for line in problems[:_PROBLEMS_SHOWN]:
        click.secho(f"      {line}", fg="red")
    if len(problems) > _PROBLEMS_SHOWN:
        click.echo(f"      ... and {len(problems) - _PROBLEMS_SHOWN} more")


def _print_quarantined(environment: str, entries: list[dict[str, Any]]) -> None:
    """Each quarantined revision of ``environment``: which, since when, why, and the way out."""
    for q in entries:
        click.echo(f"    Quarantined: {q['sha'][:10]} since {q['since'][:19]}: "
                   f"{freetext.shown(q['reason'])}")
    if entries:
        click.echo(f"    (not applied again; a newer commit is applied as usual; `gitops "
                   f"unquarantine {environment} SHA --reason WHY` releases one; `gitops forget "
                   f"{environment}` clears the quarantine, with the status and controls)")


def _print_stages(stages: list[dict[str, Any]]) -> None:
    if not stages:
        return
    click.echo("pipeline:")
    for stage in stages:
        name = stage["environment"] + (f" <- {stage['promote_from']}"
                                       if stage["promote_from"] else "")
        click.echo(f"  {name:<30} applied={(stage['applied'] or '-')[:10]} "
                   f"verified everywhere={(stage['verified'] or '-')[:10]}"
                   + (f"; {stage['waiting']}" if stage["waiting"] else ""))
