"""``gitops validate``, ``plan``, ``reconcile`` and ``verify``: the pipeline for one
environment, run here or (reconcile) through the running daemon."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from gitops.cli.context import load_settings, pipeline_target
from gitops.cli.local import guard, prestart_workers, run_here, window_guard
from gitops.cli.options import EXIT_CODES, json_option, one_line, target_options, with_force
from gitops.cli.output import emit, fail, finish, print_plan
from gitops.cli.progress import live_progress
from gitops.cli.remote import daemon_reconcile
from gitops.daemon import control
from gitops.errors import EXIT_INVALID, GitopsError, InvalidDeclaration, UsageError

__all__ = ["EXIT_CHANGES", "plan", "reconcile", "validate", "verify"]


@click.command(epilog=EXIT_CODES)
@target_options
@click.option("--worktree", is_flag=True,
              help="Validate the files on disk at --repo instead of the branch head.")
@json_option
def validate(as_json: bool, worktree: bool, **opts: Any) -> None:
    """Validate the declared state of an environment; apply nothing."""
    from gitops.pipeline import reconcile as pipeline
    from gitops.pipeline.load import load

    s = load_settings(**opts)
    target = pipeline_target(s)
    try:
        if worktree:
            state = load(Path(s.repo), s.environment, keys=s.sops, lab=target.lab)
            where = f"{s.repo} (work tree)"
        else:
            revision, state = pipeline.declared(target, live_progress(as_json), keep=False)
            where = revision.ref
    except InvalidDeclaration as exc:
        if as_json:
            emit({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
        else:
            click.echo(str(exc), err=True)
        sys.exit(EXIT_INVALID)
    except GitopsError as exc:
        fail(exc, as_json)
    if as_json:
        emit({"valid": True, "revision": where, "hosts": [h.name for h in state.hosts],
               "services": list(state.service_order), "warnings": list(state.warnings)})
    else:
        for warning in state.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        click.echo(f"{s.environment} at {where}: valid, {len(state.hosts)} hosts, "
                   f"services {', '.join(state.service_order)}")


EXIT_CHANGES = 3
"""``gitops plan --exit-code``: the plan succeeded and something would change."""


@click.command(epilog=EXIT_CODES[:-1] + "; with --exit-code, 3: the plan has changes.")
@target_options
@click.option("--exit-code", "exit_code", is_flag=True,
              help="Exit 0 when nothing would change, 3 when something would (1 and 2 as "
              "always): for CI gates.")
@json_option
def plan(as_json: bool, exit_code: bool, **opts: Any) -> None:
    """Show, per host and operation, what a reconcile would change (a dry run).

    Operations that run only when another one changes (pyinfra's _if=, a restart when
    the unit changed) are counted when their condition would hold, and listed with what
    makes them run.
    """
    from gitops.pipeline import reconcile as pipeline

    prestart_workers()
    progress = live_progress(as_json)
    outcome = pipeline.plan(pipeline_target(load_settings(**opts)), progress)
    progress.done()
    changes = outcome.plan.changes if outcome.plan is not None else 0
    if as_json:
        emit({**outcome.as_dict(), "changes": changes})
    elif outcome.plan is not None:
        print_plan(outcome.plan)
    if exit_code and outcome.exit_code == 0 and changes:
        sys.exit(EXIT_CHANGES)
    finish(outcome, as_json)


@click.command(epilog=EXIT_CODES)
@target_options
@click.option("--once", is_flag=True, help="Run one reconcile here and now, even when a "
              "daemon is running (it waits for no one: a held lock is reported).")
@click.option("--changed-only", is_flag=True, help="Apply on each host only the services "
              "changed since its last apply that verified (all are still verified); the "
              "daemon does this for new commits.")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@click.option("--reason", callback=one_line, default="", help="Why: recorded in history.")
@click.option("--lease-timeout", type=float, default=0.0, show_default=True,
              help="With the record in PostgreSQL: seconds to wait for the environment's "
              "lease while a daemon holds it, before refusing (exit 1).")
@with_force
@json_option
def reconcile(as_json: bool, once: bool, changed_only: bool, no_wait: bool, reason: str,
              force: bool, lease_timeout: float, **opts: Any) -> None:
    """Reconcile now: through the running daemon (waiting for its run), or, with no daemon
    or --once, apply and verify here."""
    from gitops.pipeline import reconcile as pipeline

    s = load_settings(**opts)
    if changed_only:
        once = True
    if guard(s, "reconcile", force, reason):
        once = True  # a suspended daemon applies nothing: the forced run happens here
    if not once and daemon_reconcile(s, reason, wait=not no_wait, as_json=as_json,
                                     force=force):
        return  # the daemon refuses outside the window, or (--force) records and runs
    window_guard(s, force, reason)
    if not math.isfinite(lease_timeout) or lease_timeout < 0:
        raise UsageError("--lease-timeout: a number of seconds, 0 or more")
    from gitops.cli.people import local_audit

    local_audit(s, "reconcile", s.environment, reason=reason)
    run_here(s, pipeline.Request(reason=reason, changed_only=changed_only,
                                  actor=control.who()), as_json, lease_timeout=lease_timeout)


@click.command(epilog=EXIT_CODES)
@target_options
@json_option
def verify(as_json: bool, **opts: Any) -> None:
    """Run the checks of every service on every host (changes nothing); record the run."""
    from gitops.pipeline import reconcile as pipeline

    s = load_settings(**opts)
    run_here(s, pipeline.Request(kind="verify", actor=control.who()), as_json)
