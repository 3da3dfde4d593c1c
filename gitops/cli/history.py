"""``gitops history``: recorded runs and operator actions, newest first, or one run in full
(hosts, operations, checks and, with ``--diff``, the diffs of the files it changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gitops import freetext
from gitops.cli.context import load_settings, open_reader, store_environment
from gitops.cli.options import EXIT_CODES, ROW_NUMBER, json_option, store_options
from gitops.cli.output import emit, run_summary
from gitops.errors import UsageError
from gitops.records import APPLY_KINDS

__all__ = ["history"]


@click.command(epilog=EXIT_CODES)
@store_options
@click.option("--limit", "-n", default=20, show_default=True, type=ROW_NUMBER,
              help="How many runs.")
@click.option("--run", "run_id", type=ROW_NUMBER,
              help="Show one run in full: hosts, operations, every check and its message.")
@click.option("--diff", "diffs", is_flag=True,
              help="With --run: also what each changed file operation wrote (its diff, "
                   "secrets redacted).")
@json_option
def history(as_json: bool, environment: str | None, state_dir: Path | None, limit: int,
            run_id: int | None, diffs: bool) -> None:
    """Recorded runs and operator actions, newest first (--run ID: one run in full)."""
    if diffs and run_id is None:
        raise UsageError("--diff shows the diffs of one run: give --run ID")
    s = load_settings(state_dir=state_dir)
    name_ = store_environment(s, environment)
    store = open_reader(s, name_, as_json)
    if store is None:
        if run_id is not None:
            raise UsageError(f"no run {run_id} in {s.state_dir}")
        return
    with store:
        if run_id is not None:
            detail = store.run(run_id)
            if detail is None:
                raise UsageError(f"no run {run_id} in {s.state_dir}")
            if as_json:
                emit(detail.as_dict())
            else:
                _print_run(detail.as_dict())
                _print_diffs(detail.as_dict(), diffs)
            return
        from gitops.report.teams import environment_teams

        owners = environment_teams(store, s.environments)
        runs = [r.as_dict() | {"team": owners.get(r.environment)}
                for r in store.history(name_, limit)]
    if as_json:
        emit(runs)
        return
    for r in runs:
        sha = (r["sha"] or "")[:10] or "-"
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "running"
        failed = f" failed: {', '.join(r['failed_hosts'])}" if r["failed_hosts"] else ""
        why = f": {freetext.shown(r['reason'])}" if r["reason"] else ""
        # an operator's action (suspend, a rollback's hold, ...) ran nothing: no result of its own
        done = (f"{'action':<11} {'':>7} " if r["event"] else
                f"{r['result'] or 'running':<11} {took:>7} changed={r['changed']} ")
        click.echo(f"#{r['id']:<4} {r['started_at'][:19]} {r['environment']:<10} "
                   f"{r['kind']:<9} {sha:<10} {done}by {freetext.shown(r['actor'])}{failed}{why}")


def _print_run(run: dict[str, Any]) -> None:
    """One recorded run in full: what the JSON says, as text."""
    click.echo(f"run #{run['id']} {run['kind']} of {run['environment']} by "
               f"{freetext.shown(run['actor'])}: "
               + ("an operator's action" if run["event"] else run["result"] or "running")
               + f" ({run['sha'] or '-'})")
    click.echo(f"  started {run['started_at'][:19]}"
               + (f", took {run['duration_s']:.1f}s" if run["duration_s"] is not None else "")
               + (f"; reason: {freetext.shown(run['reason'])}" if run["reason"] else ""))
    if run.get("message"):
        click.echo(f"  commit: {freetext.shown(run['message'].splitlines()[0])} "
                   f"({freetext.shown(run.get('author') or '?')})")
    if run["error"]:
        click.echo(f"  error: {freetext.shown_text(run['error'])}")
    ops: dict[str, list[dict[str, Any]]] = {}
    for op in run.get("operations", []):
        ops.setdefault(op["host"], []).append(op)
    checks: dict[str, list[dict[str, Any]]] = {}
    for c in run["checks"]:
        checks.setdefault(c["host"], []).append(c)
    for h in run["hosts"]:
        click.echo(f"  {h['host']}: apply={h['apply_status'] or '-'} changed={h['changed']} "
                   f"verify={h['verify_status'] or '-'}"
                   + (f" error={freetext.shown(h['error'])}" if h["error"] else ""))
        for op in ops.get(h["host"], []):
            service = f"{op['service']}: " if op["service"] else ""
            click.echo(f"    {op['status']:<9} {service}{op['name']}")
            if op["status"] == "failed":
                for line in op["stderr"].splitlines()[-5:]:
                    click.echo(f"          {freetext.shown(line)}")
        for c in checks.get(h["host"], []):
            mark = "✓" if c["status"] == "pass" else "✗"
            click.echo(f"    {mark} {c['service']}/{c['check']}: {c['status']}")
            for line in c["message"].strip().splitlines():
                click.echo(f"          {freetext.shown(line)}")
    passed = sum(1 for c in run["checks"] if c["status"] == "pass")
    if run["kind"] in (*APPLY_KINDS, "verify") and not run["event"]:
        click.echo(run_summary(run["id"], run["result"] or "running", run["changed"], passed,
                            len(run["checks"]) - passed))


def _print_diffs(run: dict[str, Any], shown: bool) -> None:
    """The diffs of a run's changed files (``--diff``), the same diff on several hosts once;
    without ``--diff``, how many there are and how to see them."""
    from gitops.report.incidents import changed_files

    plan = run.get("plan") or {"hosts": []}
    found = changed_files([{"host": h["host"], "diffs": [
        {"change": f"{op['service'] or '-'}: {op['name']}", "diff": op["diff"]}
        for op in h["ops"] if op["would_change"] and op.get("diff")]} for h in plan["hosts"]])
    if found and not shown:
        click.echo(f"  {len(found)} file diff(s): gitops history --run {run['id']} --diff")
    for change, hosts, diff in found if shown else []:
        click.echo(f"diff of {change} on {', '.join(hosts)}:")
        for line in diff.splitlines():
            click.echo(f"    {line}")
