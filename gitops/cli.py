"""The ``gitops`` command line: thin click commands that parse, call a stage, and print.

Exit codes: 0 all good; 1 apply or verify failed (or a temporary failure: Git remote, SSH,
lock held); 2 invalid declaration or usage. ``--json`` prints one JSON document on stdout;
progress goes to stderr. Errors are one clear message, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from gitops import reconcile as pipeline
from gitops.errors import EXIT_INVALID, GitopsError, InvalidDeclaration
from gitops.lab.cli import lab
from gitops.load import load
from gitops.records import OpPlan, Plan
from gitops.settings import Settings
from gitops.store import Store

EXIT_CODES = "Exit codes: 0 all good; 1 apply or verify failed; 2 invalid declaration or usage."


def _settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise click.UsageError(f"settings {field}: {first['msg']}") from None


def _target(s: Settings) -> pipeline.Target:
    return pipeline.Target(repo=s.repo, branch=s.branch, environment=s.environment,
                           state_dir=s.state_dir, vagrant_dir=s.vagrant_dir)


def _target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--repo", "-r", help="State repository: URL or local path "
                        "[env GITOPS_REPO; default .]")(func)
    func = click.option("--branch", "-b", help="Branch to reconcile [GITOPS_BRANCH; main]")(func)
    func = click.option("--environment", "--inventory", "-e", "environment",
                        help="Environment: inventories/<NAME>.yml [GITOPS_ENVIRONMENT; lab]")(func)
    func = click.option("--state-dir", type=click.Path(path_type=Path),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    return func


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _progress(as_json: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        click.secho(f"· {line}", err=True, dim=True)

    return say


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="gitops")
def main() -> None:
    """GitOps for plain Linux hosts: Git -> validate -> plan -> apply -> verify -> record."""


main.add_command(lab)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--worktree", is_flag=True,
              help="Validate the files on disk at --repo instead of the branch head.")
@json_option
def validate(as_json: bool, worktree: bool, **opts: Any) -> None:
    """Validate the declared state of an environment; apply nothing."""
    s = _settings(**opts)
    target = _target(s)
    try:
        if worktree:
            state = load(Path(s.repo), s.environment)
            where = f"{s.repo} (work tree)"
        else:
            revision, state = pipeline.declared(target, _progress(as_json))
            where = revision.ref
    except InvalidDeclaration as exc:
        if as_json:
            _emit({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
        else:
            click.echo(str(exc), err=True)
        sys.exit(EXIT_INVALID)
    except GitopsError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit({"valid": True, "revision": where, "hosts": [h.name for h in state.hosts],
               "services": list(state.service_order)})
    else:
        click.echo(f"{s.environment} at {where}: valid, {len(state.hosts)} hosts, "
                   f"services {', '.join(state.service_order)}")


EXIT_CHANGES = 3
"""``gitops plan --exit-code``: the plan succeeded and something would change."""


@main.command(epilog=EXIT_CODES[:-1] + "; with --exit-code, 3: the plan has changes.")
@_target_options
@click.option("--exit-code", "exit_code", is_flag=True,
              help="Exit 0 when nothing would change, 3 when something would (1 and 2 as "
              "always): for CI gates.")
@json_option
def plan(as_json: bool, exit_code: bool, **opts: Any) -> None:
    """Show, per host and operation, what a reconcile would change (a dry run).

    Operations that run only when another one changes (``_if=``: restart when the unit
    changed) are counted when their condition would hold, and listed with what makes them
    run.
    """
    outcome = pipeline.plan(_target(_settings(**opts)), _progress(as_json))
    changes = outcome.plan.changes if outcome.plan is not None else 0
    if as_json:
        _emit({**outcome.as_dict(), "changes": changes})
    elif outcome.plan is not None:
        _print_plan(outcome.plan)
    if exit_code and outcome.exit_code == 0 and changes:
        sys.exit(EXIT_CHANGES)
    _finish(outcome, as_json)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--once", is_flag=True, help="Run one reconcile here and now, even when a "
              "daemon is running (it waits for no one: a held lock is reported).")
@click.option("--changed-only", is_flag=True, help="Apply on each host only the services "
              "changed since its last apply that verified (all are still verified); the "
              "daemon does this for new commits.")
@click.option("--reason", default="", help="Why: recorded in history.")
@json_option
def reconcile(as_json: bool, once: bool, changed_only: bool, reason: str, **opts: Any) -> None:
    """Reconcile now: ask the running daemon, or (none, or --once) apply and verify here."""
    s = _settings(**opts)
    if changed_only:
        once = True
    if not once:
        answer = _ask_daemon(s, s.environment, "reconcile", {"reason": reason})
        if answer is not None:
            if as_json:
                _emit(answer)
            else:
                click.echo(f"{s.environment}: the daemon will reconcile now"
                           if answer.get("triggered") else
                           f"{s.environment}: a reconcile is already pending in the daemon")
            return
    outcome = pipeline.run(_target(s), pipeline.Request(reason=reason, changed_only=changed_only),
                           _progress(as_json))
    _conclude(outcome, as_json)


@main.command(epilog=EXIT_CODES)
@_target_options
@json_option
def verify(as_json: bool, **opts: Any) -> None:
    """Run the checks of every service on every host (changes nothing); record the run."""
    outcome = pipeline.verify(_target(_settings(**opts)), _progress(as_json))
    _conclude(outcome, as_json)


@main.command()
@click.option("--environment", "--inventory", "-e", "environment",
              help="Only this environment (default: all).")
@click.option("--state-dir", type=click.Path(path_type=Path))
@json_option
def status(as_json: bool, environment: str | None, state_dir: Path | None) -> None:
    """Conditions (Ready / Reconciling / Stalled) and revisions per environment and host."""
    s = _settings(state_dir=state_dir)
    store = Store(s.state_dir)
    rows = store.status(environment)
    store.close()
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no runs recorded yet")
        return
    for row in rows:
        name = row["environment"] + (f"/{row['host']}" if row["host"] else "")
        ready = next((c for c in row["conditions"] if c["type"] == "Ready"), None)
        flags = " ".join(f"{c['type']}={c['status']}" for c in row["conditions"])
        click.echo(f"{name:<24} {flags:<32} {ready['reason'] if ready else '':<26} "
                   f"applied={_short(row['last_applied_revision'])}")
        for c in row["conditions"]:
            click.echo(f"    {c['type']}: {c['message']}")


@main.command()
@click.option("--environment", "--inventory", "-e", "environment",
              help="Only this environment (default: all).")
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--limit", "-n", default=20, show_default=True)
@click.option("--run", "run_id", type=int, help="Show one run in full.")
@json_option
def history(as_json: bool, environment: str | None, state_dir: Path | None, limit: int,
            run_id: int | None) -> None:
    """Recorded runs, newest first; ``--run ID`` for one run's hosts, operations and checks."""
    s = _settings(state_dir=state_dir)
    store = Store(s.state_dir)
    try:
        if run_id is not None:
            run = store.run(run_id)
            if run is None:
                raise click.UsageError(f"no run {run_id}")
            if as_json:
                _emit(run)
            else:
                _print_run(run)
            return
        runs = store.history(environment, limit)
    finally:
        store.close()
    if as_json:
        _emit(runs)
        return
    for r in runs:
        sha = (r["sha"] or "")[:10] or "-"
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "running"
        failed = f" failed: {', '.join(r['failed_hosts'])}" if r["failed_hosts"] else ""
        click.echo(f"#{r['id']:<4} {r['started_at'][:19]} {r['environment']:<10} "
                   f"{r['kind']:<9} {sha:<10} {r['result'] or 'running':<11} {took:>7} "
                   f"changed={r['changed']} by {r['actor']}{failed}")


def _short(ref: str | None) -> str:
    if not ref:
        return "-"
    branch, _, sha = ref.partition("@sha1:")
    return f"{branch}@{sha[:10]}"


def _print_plan(plan: Plan) -> None:
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
        click.echo(f"{host.host}: {host.changes} of {len(host.ops)} operation(s) would change")
        follow = [op for op in host.ops if op.would_change and op.depends_on]
        for op in host.ops:
            if op.would_change and not op.depends_on:
                show(op)
        if follow:
            click.echo("  and, because of those changes:")
            for op in follow:
                show(op, f"  (runs if {' or '.join(op.depends_on)} changes)")
    planned = [h for h in plan.hosts if not h.error]
    changes = sum(h.changes for h in planned)
    hosts = sum(1 for h in planned if h.changes)
    click.echo((f"plan: {changes} change(s) on {hosts} of {len(plan.hosts)} host(s)"
                if changes else "plan: no changes")
               + (f"; {len(plan.hosts) - len(planned)} host(s) cannot plan"
                  if len(planned) < len(plan.hosts) else ""))


def _print_outcome(outcome: pipeline.Outcome) -> None:
    if outcome.revision is not None:
        click.echo(f"revision {outcome.revision.ref}")
    if outcome.apply is not None:
        for h in outcome.apply.hosts:
            colour = "green" if h.status == "ok" else "red"
            click.secho(f"{h.host}: {h.status}, {h.changed} change(s)", fg=colour)
            for op in h.ops:
                if op.status == "changed":
                    click.echo(f"  ~ {op.name}")
                elif op.status == "failed":
                    click.secho(f"  ✗ {op.name}", fg="red")
                    for line in op.stderr.splitlines()[-5:]:
                        click.echo(f"      {line}")
            if h.error:
                click.secho(f"  {h.error}", fg="red")
        if outcome.apply.stopped:
            click.secho(f"rollout stopped: {outcome.apply.stopped}", fg="red")
    if outcome.verify is not None:
        v = outcome.verify
        passed = sum(1 for r in v.results if r.status == "pass")
        click.echo(f"checks: {passed} passed, {len(v.failed)} failed"
                   + (f", {len(v.host_errors)} host(s) unreachable" if v.host_errors else ""))
        for r in v.failed:
            first = r.message.strip().splitlines()[0] if r.message.strip() else ""
            click.secho(f"  ✗ {r.host} {r.service}/{r.check}: {r.status}: {first}", fg="red")
        for host, why in v.host_errors.items():
            click.secho(f"  ✗ {host}: {why}", fg="red")


def _print_run(run: dict[str, Any]) -> None:
    click.echo(f"run #{run['id']} {run['kind']} of {run['environment']} by {run['actor']}: "
               f"{run['result']} ({run['sha'] or '-'})")
    if run["error"]:
        click.echo(f"  error: {run['error']}")
    for h in run["hosts"]:
        click.echo(f"  {h['host']}: apply={h['apply_status']} changed={h['changed']} "
                   f"verify={h['verify_status']}" + (f" error={h['error']}" if h["error"] else ""))
    for c in run["checks"]:
        if c["status"] != "pass":
            click.echo(f"  ✗ {c['host']} {c['service']}/{c['check']}: {c['message'][:200]}")


def _fail(exc: GitopsError, as_json: bool) -> None:
    if as_json:
        _emit({"result": "error", "error": str(exc)})
    else:
        click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(exc.exit_code)


def _conclude(outcome: pipeline.Outcome, as_json: bool) -> None:
    """Print a run's outcome (JSON or text) and exit with its code."""
    if as_json:
        _emit(outcome.as_dict())
    else:
        _print_outcome(outcome)
    _finish(outcome, as_json)


def _finish(outcome: pipeline.Outcome, as_json: bool) -> None:
    if outcome.error is not None and not as_json:
        click.secho(f"error: {outcome.error}" if not isinstance(outcome.error, InvalidDeclaration)
                    else str(outcome.error), fg="red", err=True)
    elif not as_json and outcome.result != "succeeded":
        click.secho(f"{outcome.result}", fg="red", err=True)
    sys.exit(outcome.exit_code)


# -- the daemon and operator controls ------------------------------------------------------


def _operator() -> str:
    import os

    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown"


def _ask_daemon(s: Settings, environment: str, action: str,
                body: dict[str, Any]) -> dict[str, Any] | None:
    """POST to the running daemon's API; None when no daemon answers on ``s.listen``."""
    import http.client

    from gitops.server import parse_listen

    host, port = parse_listen(s.listen)
    headers = {"Content-Type": "application/json"}
    if s.api_token is not None:
        headers["Authorization"] = f"Bearer {s.api_token.reveal()}"
    conn = http.client.HTTPConnection(host if host not in ("0.0.0.0", "::") else "127.0.0.1",
                                      port, timeout=10)
    try:
        conn.request("POST", f"/api/environments/{environment}/{action}",
                     body=json.dumps({**body, "actor": _operator()}), headers=headers)
        response = conn.getresponse()
        data = json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return None
    finally:
        conn.close()
    if response.status == 404 and "unknown environment" in str(data.get("error", "")):
        return None  # the daemon does not watch this environment: act here
    if response.status >= 400:
        raise click.ClickException(f"daemon: {data.get('error', response.status)}")
    return data  # type: ignore[no-any-return]


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True),
              help="Settings file (TOML) [GITOPS_CONFIG; ./gitops.toml; /etc/gitops/gitops.toml]")
def run(config: Path | None) -> None:
    """Run the daemon: watch the configured environments and reconcile them continuously.

    Serves webhooks, the operator API and /healthz on the ``listen`` address. SIGTERM or
    Ctrl-C: the batch in progress finishes, the run is recorded as interrupted, then exit.
    """
    import logging
    import os
    import signal
    import time

    from gitops import metrics, page, server
    from gitops.loop import Daemon

    if config is not None:
        os.environ["GITOPS_CONFIG"] = str(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = _settings()
    try:
        daemon = Daemon(s)
        authorize = server.make_authorize(s)
        app = server.create_app(daemon, s, extra_routes=[
            *metrics.routes(s.state_dir, authorize), *page.routes(s.state_dir, authorize)])
        http, thread = server.start_in_thread(app, s.listen)
    except GitopsError as exc:
        _fail(exc, False)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)  # only a flag: locks are not safe in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    click.echo(f"gitops daemon: watching {', '.join(e.name for e in s.environments)}; "
               f"http://{s.listen}/healthz", err=True)
    while not stopping:
        time.sleep(0.2)
    click.echo("gitops daemon: stopping (the batch in progress finishes)", err=True)
    daemon.stop()
    server.stop(http, thread)


def _control(action: str, environment: str | None, state_dir: Path | None, as_json: bool,
             **body: Any) -> None:
    from gitops import control

    s = _settings(environment=environment, state_dir=state_dir)
    answer = _ask_daemon(s, s.environment, action, body)
    if answer is None:  # no daemon: the store is the shared record
        store = Store(s.state_dir)
        try:
            if action == "suspend":
                answer = control.suspend(store, s.environment, actor=_operator(),
                                         reason=body["reason"])
            else:
                answer = control.resume(store, s.environment, actor=_operator(),
                                        reason=body.get("reason", ""))
        except GitopsError as exc:
            _fail(exc, as_json)
        finally:
            store.close()
    assert answer is not None
    if as_json:
        _emit(answer)
    elif action == "suspend":
        click.echo(f"{s.environment}: suspended by {answer.get('actor')}: "
                   f"{answer.get('reason')}")
    else:
        click.echo(f"{s.environment}: resumed")


env_option = click.option("--environment", "--inventory", "-e", "environment",
                          help="Environment [GITOPS_ENVIRONMENT; lab]")
state_option = click.option("--state-dir", type=click.Path(path_type=Path))


@main.command()
@env_option
@state_option
@click.option("--reason", required=True, help="Why (shown in status and history).")
@json_option
def suspend(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Stop all applies to an environment until ``gitops resume``."""
    _control("suspend", environment, state_dir, as_json, reason=reason)


@main.command()
@env_option
@state_option
@click.option("--reason", default="")
@json_option
def resume(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Resume applies (and release a rollback hold): the branch head is reconciled again."""
    _control("resume", environment, state_dir, as_json, reason=reason)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.argument("revision", required=False)
@click.option("--reason", default="")
@json_option
def rollback(revision: str | None, reason: str, as_json: bool, **opts: Any) -> None:
    """Apply an earlier verified revision (default: the one before the current) and hold it
    until ``gitops resume`` or a newer commit."""
    from gitops import control

    s = _settings(**opts)
    answer = _ask_daemon(s, s.environment, "rollback", {"revision": revision, "reason": reason})
    if answer is not None:
        _emit(answer) if as_json else click.echo(
            f"{s.environment}: the daemon holds {str(answer.get('held_sha'))[:10]}")
        return
    target = _target(s)
    with Store(s.state_dir) as store:
        try:
            held = control.hold_rollback(
                store, s.environment, repo=s.repo, branch=s.branch, state_dir=s.state_dir,
                revision=revision, actor=_operator(), reason=reason)
        except GitopsError as exc:
            _fail(exc, as_json)
            return
    sha = str(held["held_sha"])
    outcome = pipeline.run(target, pipeline.Request(
        kind="rollback", revision=sha, reason=reason or f"rollback to {sha[:10]}",
        actor=_operator()), _progress(as_json))
    if not as_json:
        click.echo(f"{s.environment} holds {sha[:10]} until `gitops resume` or a newer commit",
                   err=True)
    _conclude(outcome, as_json)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--failed", is_flag=True, required=True,
              help="Retry the hosts that failed in the latest run (required).")
@json_option
def retry(failed: bool, as_json: bool, **opts: Any) -> None:
    """Run the latest revision again on the hosts that failed, only those."""
    from gitops import control

    s = _settings(**opts)
    answer = _ask_daemon(s, s.environment, "retry", {})
    if answer is not None:
        _emit(answer) if as_json else click.echo(
            f"{s.environment}: the daemon retries {', '.join(answer.get('retrying', []))}")
        return
    with Store(s.state_dir) as store:
        hosts = control.failed_hosts(store, s.environment)
        last = next((r for r in store.history(s.environment, 50)
                     if r["kind"] in ("reconcile", "rollback", "retry")), None)
    if not hosts or last is None:
        raise click.UsageError(f"{s.environment}: no failed hosts to retry")
    outcome = pipeline.run(_target(s), pipeline.Request(
        kind="retry", revision=last["sha"], hosts=frozenset(hosts),
        reason=f"retry of {', '.join(hosts)}", actor=_operator()), _progress(as_json))
    _conclude(outcome, as_json)


@main.command()
@env_option
@state_option
@click.option("--days", default=90.0, show_default=True, help="The window, in days.")
@json_option
def metrics(environment: str | None, state_dir: Path | None, days: float, as_json: bool) -> None:
    """Delivery metrics from the recorded history: deployment frequency, lead time for
    changes, change failure rate and time to restore (the DORA four keys)."""
    from gitops.delivery import delivery_metrics

    s = _settings(state_dir=state_dir)
    with Store(s.state_dir) as store:
        result = delivery_metrics(store, environment=environment, days=days)
    if as_json:
        _emit({name: m.as_dict() for name, m in result.items()})
        return
    if not result:
        click.echo("no runs recorded yet")
    for name, m in result.items():
        d = m.as_dict()
        rate = d["change_failure_rate"]
        click.echo(f"{name} (last {days:g} days)")
        click.echo(f"  deployment frequency  {d['deployment_frequency_per_day']:.2f}/day "
                   f"({d['deployments']} verified rollouts)")
        click.echo(f"  lead time for changes median {_duration(d['lead_time_median_s'])}, "
                   f"p90 {_duration(d['lead_time_p90_s'])}")
        click.echo("  change failure rate   "
                   + (f"{rate:.0%} ({d['failed_rollouts']} of {d['rollouts']} rollouts)"
                      if rate is not None else "-"))
        click.echo(f"  time to restore       median {_duration(d['time_to_restore_median_s'])}"
                   + (f"; unrestored since {d['unrestored_since']}"
                      if d["unrestored_since"] else ""))


@main.command()
@env_option
@state_option
@click.option("--write", "folder", type=click.Path(path_type=Path),
              help="Also write one Markdown report per incident into this folder.")
@json_option
def incidents(environment: str | None, state_dir: Path | None, folder: Path | None,
              as_json: bool) -> None:
    """Incidents (failed rollouts, rollbacks, drift corrections) with their timelines."""
    from gitops import incidents as incidents_

    s = _settings(state_dir=state_dir)
    with Store(s.state_dir) as store:
        found = incidents_.incidents(store, environment)
        if folder is not None:
            incidents_.write_reports(store, folder)
    if as_json:
        _emit([i.as_dict() for i in found])
        return
    if not found:
        click.echo("no incidents")
    for i in found:
        d = i.as_dict()
        click.echo(f"{d['id']:<16} {d['status']:<7} {d['cause']:<17} "
                   f"{(d['commit'].get('sha') or '')[:10]:<10} opened {d['opened_at'][:19]} "
                   f"{'restored after ' + _duration(d['duration_s']) if d['closed_at'] else ''}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
