"""People and robots: ``gitops tokens`` (create, list, revoke) and ``gitops audit``, both on
the record directly (who may write the record is an admin), and ``local_audit``, the audit
entry of an action a command takes here rather than through the daemon."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gitops import freetext
from gitops.cli.context import load_settings
from gitops.cli.options import EXIT_CODES, config_option, json_option, one_line, state_option
from gitops.cli.output import emit
from gitops.errors import UsageError

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["audit", "local_audit", "tokens"]


def local_audit(s: Settings, action: str, environment: str, *, target: str = "",
                reason: str = "", outcome: str = "ok") -> None:
    """One audit entry for an action taken here by the person at the terminal (role
    ``local``: whoever may write the record)."""
    from gitops.daemon.control import who
    from gitops.record.store import open_store

    with open_store(s) as store:
        store.audit(actor=who(), role="local", action=action, environment=environment,
                    target=target, address="", reason=reason, outcome=outcome)


@click.group(epilog=EXIT_CODES)
def tokens() -> None:
    """API tokens for people and robots: create (shown once), list, revoke."""


@tokens.command(epilog=EXIT_CODES)
@click.option("--name", required=True, help="The token's name: how its actions are recorded.")
@click.option("--role", required=True, help="viewer, operator, rollback or admin.")
@click.option("--team", default="*", show_default=True,
              help="The team whose environments the role is for (one of the settings' "
              "teams), or * for all.")
@click.option("--expires", default="90d", show_default=True,
              help="Lifetime: a number and h, d or w (12h, 90d, 8w), or never.")
@click.option("--on-behalf", is_flag=True, help="A robot that may name the person it acts "
              "for (the request's actor, recorded as 'NAME (for PERSON)').")
@state_option
@config_option
@json_option
def create(name: str, role: str, team: str, expires: str, on_behalf: bool,
           state_dir: Path | None, as_json: bool) -> None:
    """Create a token and print it once (it is kept only as a SHA-256 digest)."""
    from gitops.daemon import tokens as made
    from gitops.daemon.control import who
    from gitops.daemon.roles import ANY_TEAM, ROLES
    from gitops.record.store import open_store

    made.check_name(name)
    if role not in ROLES:
        raise UsageError(f"--role {role!r}: one of {', '.join(ROLES)}")
    expires_at = made.expiry(datetime.now(UTC), expires)
    s = load_settings(state_dir=state_dir)
    if team != ANY_TEAM and team not in s.teams:
        raise UsageError(f"--team {team!r}: unknown team (" + (
            f"teams: {', '.join(s.teams)}, or *)" if s.teams else
            "list the teams in the settings' teams = [...], or write *)"))
    secret = made.new_token()
    with open_store(s) as store:
        row = store.add_token(name, made.digest(secret), role=role, team=team,
                              created_by=who(), expires_at=expires_at, on_behalf=on_behalf)
        store.audit(actor=who(), role="local", action="tokens", target=f"create {name}",
                    reason=f"{role} for {team}", outcome="ok")
    if as_json:
        emit({**row.as_dict(), "token": secret})
        return
    click.echo(secret)
    until = row.expires_at.isoformat(timespec="seconds") if row.expires_at else "never"
    click.echo(f"token {name}: {role} for {'every team' if team == ANY_TEAM else team}, "
               f"expires {until}. Shown once: keep it (GITOPS_TOKEN, or "
               "~/.config/gitops/token with mode 600).", err=True)


@tokens.command(name="list", epilog=EXIT_CODES)
@state_option
@config_option
@json_option
def list_tokens(state_dir: Path | None, as_json: bool) -> None:
    """Every token with its role, team, expiry, last use and state; never a secret."""
    from gitops.record.store import NoStore, open_store

    s = load_settings(state_dir=state_dir)
    try:
        with open_store(s, readonly=True) as store:
            rows = store.tokens()
    except NoStore:
        rows = []
    now = datetime.now(UTC)
    if as_json:
        emit([{**r.as_dict(), "state": r.state(now)} for r in rows])
        return
    if not rows:
        click.echo("no tokens (gitops tokens create)")
    for r in rows:
        used = r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else "never"
        until = r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never"
        click.echo(f"{r.name}  {r.role}  team {r.team}  {r.state(now)}  expires {until}  "
                   f"last used {used}  by {freetext.shown(r.created_by)}"
                   f"{'  on behalf' if r.on_behalf else ''}")


@tokens.command(epilog=EXIT_CODES)
@click.argument("name")
@click.option("--reason", callback=one_line, default="", help="Why: in the audit trail.")
@state_option
@config_option
@json_option
def revoke(name: str, reason: str, state_dir: Path | None, as_json: bool) -> None:
    """Revoke the token NAME now: its next request gets 401."""
    from gitops.daemon.control import who
    from gitops.record.store import open_store

    s = load_settings(state_dir=state_dir)
    with open_store(s) as store:
        row = store.revoke_token(name)
        store.audit(actor=who(), role="local", action="tokens", target=f"revoke {name}",
                    reason=reason, outcome="ok")
    if as_json:
        emit(row.as_dict())
        return
    click.echo(f"token {name}: revoked")


def _since(text: str | None) -> datetime | None:
    """``--since``: an ISO 8601 time or a span back from now (``12h``, ``7d``, ``2w``)."""
    if not text:
        return None
    from gitops.daemon.tokens import parse_lifetime

    try:
        stamp = datetime.fromisoformat(text)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - parse_lifetime(text)
    except UsageError:
        raise UsageError(f"--since {text!r}: an ISO 8601 time (2026-12-01T09:00) or a span "
                         "back from now (12h, 7d, 2w)") from None


@click.command(epilog=EXIT_CODES)
@click.option("--actor", help="Only this actor (a token's name, local, webhook:github...).")
@click.option("--environment", "-e", "environment", help="Only this environment.")
@click.option("--action", help="Only this action (suspend, rollback, tokens...).")
@click.option("--since", help="Only since: an ISO 8601 time, or 12h, 7d, 2w back.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@state_option
@config_option
@json_option
def audit(actor: str | None, environment: str | None, action: str | None, since: str | None,
          limit: int, state_dir: Path | None, as_json: bool) -> None:
    """The audit trail: who did what, where, from which address, why, and how it ended."""
    from gitops.record.store import NoStore, open_store

    after = _since(since)
    s = load_settings(state_dir=state_dir)
    try:
        with open_store(s, readonly=True) as store:
            rows = store.audit_trail(actor=actor, environment=environment, action=action,
                                     since=after, limit=limit)
    except NoStore:
        rows = []
    if as_json:
        emit([r.as_dict() for r in rows])
        return
    for r in rows:
        where = f" {r.environment}" if r.environment else ""
        what = f" {freetext.shown(r.target)}" if r.target else ""
        why = f": {freetext.shown(r.reason)}" if r.reason else ""
        role = f" as {r.role}" if r.role else ""
        came = f" from {r.address}" if r.address else ""
        click.echo(f"{r.at.isoformat(timespec='seconds')}  {freetext.shown(r.actor)}{role}"
                   f"{came}  {r.action}{where}{what}  {r.outcome}{why}")
