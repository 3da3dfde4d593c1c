"""Operator commands carried out by the running daemon: ask it (``DaemonClient``), follow
its run to the end through its API, print it as a run made here prints, and exit with the
same codes."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from gitops import freetext
from gitops.cli.client import DaemonClient
from gitops.cli.context import api_name
from gitops.cli.output import check_failure, emit, run_summary
from gitops.daemon import control
from gitops.errors import EXIT_FAILED, EXIT_INVALID, UsageError
from gitops.records import APPLY_KINDS

if TYPE_CHECKING:
    from gitops.settings import Settings

__all__ = ["daemon_answer", "daemon_reconcile", "through_daemon"]


_POLL = 0.5
_IDLE_GIVE_UP = 15.0
"""Seconds the daemon may sit idle, with no run for the request, before the wait gives up."""


def daemon_reconcile(s: Settings, reason: str, *, wait: bool, as_json: bool,
                     force: bool = False) -> bool:
    """Ask the running daemon to reconcile and (``wait``) follow its run to the end through
    its API (``/api/runs``), printing each host as it is recorded, then the outcome; exits
    with a local run's codes. ``force``: even outside the maintenance window (recorded).
    False when no daemon watches the environment."""
    body: dict[str, Any] = {"reason": reason, **({"force": True} if force else {})}
    return through_daemon(s, "reconcile", body, wait=wait, as_json=as_json)


def through_daemon(s: Settings, action: str, body: dict[str, Any], *, wait: bool,
                   as_json: bool) -> bool:
    """``action`` (reconcile, rollback, retry) by the running daemon, its run followed to
    the end unless not ``wait``; exits with the run's code. False: no daemon here."""
    name = api_name(s)
    daemon = DaemonClient(s)
    try:
        before = max((r["id"] for r in daemon.recent(s.environment, 1)), default=0)
    except (OSError, ValueError):
        before = 0
    answer = daemon.ask(name, action, body)
    if answer is None:
        return False
    actor = str(answer.get("actor") or control.who())  # who the daemon recorded
    # reconcile says whether it was queued or folded into a pending one; the others queue
    triggered = bool(answer.get("triggered", True))
    asked_at = daemon.answered_at()
    if not wait:
        if as_json:
            emit(answer)
        else:
            click.echo(daemon_answer(name, action, answer))
        return True
    if not as_json:
        click.echo(f"{daemon_answer(name, action, answer)}; waiting for its run "
                   "(Ctrl-C stops waiting, not the run)", err=True)
    try:
        run = _follow(daemon, s.environment, name, before, actor,
                      asked_at if triggered else None, as_json)
    except KeyboardInterrupt:
        click.echo("stopped waiting; the daemon's run goes on (gitops history)", err=True)
        sys.exit(EXIT_FAILED)
    except (OSError, ValueError) as exc:
        click.secho(f"error: lost the daemon at {s.listen} while waiting: {exc}", fg="red",
                    err=True)
        sys.exit(EXIT_FAILED)
    code = _run_exit_code(daemon, run)
    if as_json:
        emit({**run, "exit_code": code})
    else:
        passed = sum(1 for c in run["checks"] if c["status"] == "pass")
        for c in run["checks"]:
            if c["status"] != "pass":
                check_failure(c["host"], c["service"], c["check"], c["status"], c["message"])
        if run["error"]:
            click.secho(f"error: {freetext.shown_text(run['error'])}", fg="red", err=True)
        click.secho(run_summary(run["id"], run["result"], run["changed"], passed,
                                len(run["checks"]) - passed),
                    fg="green" if run["result"] == "succeeded" else "red")
    sys.exit(code)


def daemon_answer(name: str, action: str, answer: dict[str, Any]) -> str:
    event = f" (recorded as run #{answer['event']})" if answer.get("event") else ""
    if action == "rollback":
        return f"{name}: the daemon holds {str(answer.get('held_sha'))[:10]}{event}"
    if action == "retry":
        return f"{name}: the daemon retries {', '.join(answer.get('retrying', []))}"
    if action == "promote":
        return (f"{name}: promoted {str(answer.get('sha'))[:10]} from "
                f"{answer.get('promote_from')}{' (forced)' if answer.get('forced') else ''}"
                f"{event}")
    return (f"{name}: the daemon will reconcile now" if answer.get("triggered") else
            f"{name}: a reconcile is already pending in the daemon")


def _follow(daemon: DaemonClient, environment: str, name: str, before: int, actor: str,
            asked_at: datetime | None, as_json: bool) -> dict[str, Any]:
    """The daemon's run for this request, once finished; each host printed as recorded.

    Ours is the first apply run of the environment after ``before`` by ``actor`` started
    since ``asked_at`` (the daemon's clock, to the second); None (the request was coalesced
    into a pending one): the first apply run after ``before``."""
    mine: int | None = None
    idle_since: float | None = None
    shown: set[str] = set()
    while True:
        if mine is None:
            found = sorted((r for r in daemon.recent(environment, 20) if r["id"] > before
                            and r["kind"] in APPLY_KINDS and not _event(r) and (
                                asked_at is None or (r["actor"] == actor
                                                     and _since(r, asked_at)))),
                           key=lambda r: int(r["id"]))
            if found:
                mine = int(found[0]["id"])
                if not as_json:
                    click.echo(f"run #{mine}: {found[0]['kind']} of "
                               f"{(found[0]['sha'] or '')[:10] or 'the branch head'} started",
                               err=True)
                continue
            _, health = daemon.call("GET", "/healthz")
            state = ((health or {}).get("environments") or {}).get(name) or {}
            busy = state.get("pending") or str(state.get("running") or "").startswith(
                tuple(APPLY_KINDS))
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > _IDLE_GIVE_UP:
                raise UsageError(f"{name}: the daemon started no run for this request (is the "
                                 "environment suspended, its head quarantined or waiting for "
                                 "approval? gitops status)")
            time.sleep(_POLL)
            continue
        status, run = daemon.call("GET", f"/api/runs/{mine}")
        if status != 200 or not isinstance(run, dict):
            raise ValueError(f"run {mine}: HTTP {status}")
        if not as_json:
            for h in run["hosts"]:
                if h["host"] not in shown and (h["verify_status"] or h["apply_status"]
                                               not in (None, "ok")):
                    shown.add(h["host"])
                    bad = h["apply_status"] not in (None, "ok") or h["verify_status"] == "fail"
                    click.secho(f"{h['host']}: apply {h['apply_status'] or '-'}, "
                                f"{h['changed']} change(s), checks {h['verify_status'] or '-'}",
                                fg="red" if bad else "green")
        if run["result"] is not None:
            return run
        time.sleep(_POLL)


def _event(run: dict[str, Any]) -> bool:
    """An operator action (``Store.record_event``: a rollback hold), not a run: it finished
    as it started."""
    return run.get("finished_at") is not None and run.get("finished_at") == run.get(
        "started_at")


def _since(run: dict[str, Any], asked_at: datetime) -> bool:
    try:
        started = datetime.fromisoformat(run["started_at"])
    except (TypeError, ValueError):
        return True
    return started >= asked_at


def _run_exit_code(daemon: DaemonClient, run: dict[str, Any]) -> int:
    """A local run's exit code for a run the daemon made: permanent errors stall (2)."""
    if run["result"] == "succeeded":
        return 0
    if run["result"] == "invalid":
        return EXIT_INVALID
    if run["result"] == "error":
        try:
            _, rows = daemon.call("GET", "/api/status")
        except (OSError, ValueError):
            return EXIT_FAILED
        for row in rows if isinstance(rows, list) else []:
            if row.get("environment") == run["environment"] and row.get("host") == "" and any(
                    c["type"] == "Stalled" and c["status"] == "True"
                    for c in row.get("conditions", [])):
                return EXIT_INVALID
    return EXIT_FAILED
