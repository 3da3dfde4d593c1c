"""How the commands print: one JSON document (``--json``) or text, an error as one line,
a plan, a run's outcome and its closing summary line, then the exit code that goes with it."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from gitops import freetext
from gitops.errors import GitopsError, InvalidDeclaration
from gitops.records import NO_CHANGE_BY_FINGERPRINT as NO_CHANGE
from gitops.records import OpPlan, Plan
from gitops.report.explain import outcome_summary, run_summary

if TYPE_CHECKING:
    from gitops.pipeline import reconcile as pipeline

__all__ = [
    "check_failure", "conclude", "duration", "emit", "fail", "finish", "outcome_summary",
    "print_plan", "run_summary", "short_ref"
]


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def short_ref(ref: str | None) -> str:
    if not ref:
        return "-"
    branch, _, sha = ref.partition("@sha1:")
    return f"{branch}@{sha[:10]}"


def print_plan(plan: Plan) -> None:
    def show(op: OpPlan, suffix: str = "") -> None:
        click.secho(f"  ~ {op.name}{suffix}", fg="yellow")
        for line in (op.diff or "").splitlines():
            click.echo(f"      {line}")

    errors: dict[str, list[str]] = {}
    for host in plan.hosts:
        if host.error:
            errors.setdefault(host.error, []).append(host.host)
    for error, names in errors.items():  # a deploy's exception is the same on every host
        click.secho(f"{', '.join(names)}: cannot plan: {error}", fg="red")
    for host in plan.hosts:
        if host.error:
            continue
        if host.fingerprint == NO_CHANGE:
            click.echo(f"{host.host}: {NO_CHANGE}")
            continue
        click.echo(f"{host.host}: {host.changes} of {len(host.ops)} operation(s) would change"
                   + (f" ({host.fingerprint})" if host.fingerprint else ""))
        for removal in (r for r in plan.removals if r.host == host.host):
            last = f" (last applied {short_ref(removal.revision)})" if removal.revision else ""
            click.secho(f"  - {removal.note}{last}",
                        fg="red" if removal.action == "remove" else "yellow")
        follow = [op for op in host.ops if op.would_change and op.depends_on]
        for op in host.ops:
            if op.would_change and not op.depends_on:
                show(op)
        if follow:
            click.echo("  and, because of those changes:")
            for op in follow:
                show(op, f"  (runs if {' or '.join(op.depends_on)} changes)")
        if host.guard_restores:
            click.echo(f"  guarded: a revert would restore {', '.join(host.guard_restores)}")
    if plan.guarded:
        click.echo(f"guarded services: {', '.join(plan.guarded)} (a host they change reverts "
                   f"by itself unless the controller reaches it again within "
                   f"{plan.confirm_timeout} s)")
    planned = [h for h in plan.hosts if not h.error]
    changes = sum(h.changes for h in planned)
    hosts = sum(1 for h in planned if h.changes)
    removing = sum(1 for r in plan.removals if r.action == "remove")
    kept = len(plan.removals) - removing
    click.echo((f"plan: {changes} change(s) on {hosts} of {len(plan.hosts)} host(s)"
                if changes else "plan: no changes")
               + (f"; {removing} removal(s)" if removing else "")
               + (f"; {kept} service(s) no longer declared stay on their host" if kept else "")
               + (f"; {len(plan.hosts) - len(planned)} host(s) cannot plan"
                  if len(planned) < len(plan.hosts) else ""))


_MESSAGE_LINES = 15
"""Lines of a failing check's message shown in a run's output (all of them in --json)."""


def check_failure(host: str, service: str, check: str, status: str, message: str) -> None:
    """A failing check with its message: the assertion, pytest's explanation, where."""
    lines = message.strip().splitlines() or [""]
    click.secho(f"  ✗ {host} {service}/{check}: {status}: {freetext.shown(lines[0])}", fg="red")
    for line in lines[1:_MESSAGE_LINES]:
        click.echo(f"      {freetext.shown(line)}")
    if len(lines) > _MESSAGE_LINES:
        click.echo(f"      ... ({len(lines) - _MESSAGE_LINES} more line(s): gitops history "
                   "--run ID --json)")


def _print_outcome(outcome: pipeline.Outcome) -> None:
    if outcome.revision is not None:
        click.echo(f"revision {outcome.revision.ref}")
    if outcome.apply is not None:
        for h in outcome.apply.hosts:
            colour = "green" if h.status == "ok" else "red"
            click.secho(f"{h.host}: {h.status}, "
                        + (NO_CHANGE if h.fingerprint == NO_CHANGE else
                           f"{h.changed} change(s)"), fg=colour)
            for op in h.ops:
                if op.status == "changed":
                    click.echo(f"  ~ {op.name}")
                elif op.status == "failed":
                    click.secho(f"  ✗ {op.name}", fg="red")
                    for line in op.stderr.splitlines()[-5:]:
                        click.echo(f"      {freetext.shown(line)}")
            if h.error:
                click.secho(f"  {h.error}", fg="red")
        if outcome.apply.stopped:
            click.secho(f"rollout stopped: {outcome.apply.stopped}", fg="red")
    if outcome.verify is not None:
        v = outcome.verify
        passed = sum(1 for r in v.results if r.status == "pass")
        waiting = sum(1 for r in v.results if r.status == "DependencyNotReady")
        click.echo(f"checks: {passed} passed, {len(v.failed) - waiting} failed"
                   + (f", {waiting} service(s) DependencyNotReady" if waiting else "")
                   + (f", {len(v.host_errors)} host(s) unreachable" if v.host_errors else ""))
        for r in v.failed:
            check_failure(r.host, r.service, r.check, r.status, r.message)
        for host, why in v.host_errors.items():
            click.secho(f"  ✗ {host}: {why}", fg="red")


def fail(exc: GitopsError, as_json: bool) -> None:
    if as_json:
        emit({"result": "error", "error": str(exc)})
    else:
        click.secho(f"error: {freetext.shown_text(exc)}", fg="red", err=True)
    sys.exit(exc.exit_code)


def conclude(outcome: pipeline.Outcome, as_json: bool) -> None:
    """Print a run's outcome (JSON or text) and exit with its code."""
    if as_json:
        emit(outcome.as_dict())
    else:
        _print_outcome(outcome)
    finish(outcome, as_json)


def finish(outcome: pipeline.Outcome, as_json: bool) -> None:
    if outcome.error is not None and not as_json:
        click.secho(f"error: {outcome.error}" if not isinstance(outcome.error, InvalidDeclaration)
                    else str(outcome.error), fg="red", err=True)
    if not as_json and outcome.run_id is not None:
        click.secho(outcome_summary(outcome),
                    fg="green" if outcome.result == "succeeded" else "red")
    elif not as_json and outcome.result != "succeeded" and outcome.error is None:
        click.secho(f"{outcome.result}", fg="red", err=True)
    sys.exit(outcome.exit_code)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
