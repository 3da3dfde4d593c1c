"""The operator controls: ``gitops suspend``, ``resume``, ``rollback``, ``promote``,
``retry``, ``forget`` and ``unquarantine``; through the running daemon when one watches the
environment, else here, in the record."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from gitops import freetext
from gitops.cli.client import DaemonClient
from gitops.cli.context import api_name, load_settings, open_reader, pipeline_target
from gitops.cli.local import guard, leased_run, run_here
from gitops.cli.options import (
    EXIT_CODES,
    config_option,
    env_option,
    json_option,
    one_line,
    state_option,
    target_options,
    with_force,
)
from gitops.cli.output import conclude, emit, fail
from gitops.cli.people import local_audit
from gitops.cli.progress import live_progress
from gitops.cli.remote import daemon_answer, through_daemon
from gitops.daemon import control
from gitops.errors import EXIT_INVALID, GitopsError, UsageError
from gitops.record.store import NoStore, open_store
from gitops.records import APPLY_KINDS

__all__ = ["forget", "promote", "resume", "retry", "rollback", "suspend", "unquarantine"]


def _control(action: str, environment: str | None, state_dir: Path | None, as_json: bool,
             **body: Any) -> None:
    s = load_settings(environment=environment, state_dir=state_dir)
    answer = DaemonClient(s).ask(api_name(s), action, body)
    if answer is None:  # no daemon: the store is the shared record
        store = open_store(s)
        try:
            if action == "suspend":
                answer = control.suspend(store, s.environment, actor=control.who(),
                                         reason=body["reason"]).as_dict()
            else:
                answer = control.resume(store, s.environment, actor=control.who(),
                                        reason=body.get("reason", "")).as_dict()
        except GitopsError as exc:
            fail(exc, as_json)
        finally:
            store.close()
        local_audit(s, action, s.environment, reason=body.get("reason", ""))
    assert answer is not None
    event = f" (recorded as run #{answer['event']})" if answer.get("event") else ""
    if as_json:
        emit(answer)
    elif action == "suspend":
        click.echo(f"{s.environment}: suspended by {freetext.shown(answer.get('actor'))}: "
                   f"{freetext.shown(answer.get('reason'))}{event}")
    else:
        click.echo(f"{s.environment}: resumed{event}")


@click.command(epilog=EXIT_CODES)
@env_option
@state_option
@config_option
@click.option("--reason", callback=one_line, required=True,
              help="Why (shown in status and history).")
@json_option
def suspend(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Stop all applies to an environment until gitops resume (reconcile --once, retry and
    rollback refuse it too, unless --force --reason)."""
    _control("suspend", environment, state_dir, as_json, reason=reason)


@click.command(epilog=EXIT_CODES)
@env_option
@state_option
@config_option
@click.option("--reason", callback=one_line, default="", help="Why (shown in history).")
@json_option
def resume(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Resume applies (and release a rollback hold): the branch head is reconciled again."""
    _control("resume", environment, state_dir, as_json, reason=reason)


@click.command(epilog=EXIT_CODES)
@target_options
@click.argument("revision", required=False)
@click.option("--reason", callback=one_line, default="", help="Why: recorded in history.")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@with_force
@json_option
def rollback(revision: str | None, reason: str, no_wait: bool, force: bool, as_json: bool,
             **opts: Any) -> None:
    """Apply an earlier verified revision (default: the one before the current) and hold it
    until gitops resume or a newer commit."""
    from gitops.pipeline import reconcile as pipeline

    s = load_settings(**opts)
    forced = guard(s, "rollback", force, reason)
    if not forced and through_daemon(s, "rollback", {"revision": revision, "reason": reason},
                                      wait=not no_wait, as_json=as_json):
        return
    target = pipeline_target(s)
    with open_store(s) as store:
        try:
            held = control.hold_rollback(
                store, s.environment, repo=s.repo, branch=s.branch, state_dir=s.state_dir,
                revision=revision, actor=control.who(), reason=reason)
        except GitopsError as exc:
            fail(exc, as_json)
            return
    sha = str(held.held_sha)
    local_audit(s, "rollback", s.environment, target=sha, reason=reason)
    progress = live_progress(as_json)
    outcome = leased_run(s, target, pipeline.Request(
        kind="rollback", revision=sha, reason=reason or f"rollback to {sha[:10]}",
        actor=control.who()), progress)
    progress.done()
    if not as_json:
        click.echo(f"{s.environment} holds {sha[:10]} until `gitops resume` or a newer commit",
                   err=True)
    conclude(outcome, as_json)


@click.command(epilog=EXIT_CODES)
@click.option("--environment", "-e", "environment", required=True,
              help="The environment to promote to: an [[environments]] entry with promote_from.")
@click.option("--revision", required=True, help="The commit (SHA) to promote.")
@click.option("--reason", callback=one_line, required=True,
              help="Why: recorded in history with who.")
@click.option("--force", is_flag=True, help="Promote a revision that is not verified on "
              "every host of the upstream environment (recorded as forced).")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@state_option
@config_option
@json_option
def promote(environment: str, revision: str, reason: str, force: bool, no_wait: bool,
            state_dir: Path | None, as_json: bool) -> None:
    """Promote one revision to an environment by hand (one verified on every host of the
    environment it promotes from, unless --force); through the running daemon, else here."""
    from gitops.daemon import promotion
    from gitops.pipeline import reconcile as pipeline

    s = load_settings(environment=environment, state_dir=state_dir)
    link = next((x for x in promotion.links(s.environments)
                 if environment in (x.name, x.environment)), None)
    if link is None:
        raise UsageError(f"no [[environments]] entry named {environment!r} in the settings")
    if link.upstream is None:
        raise UsageError(f"{link.name} does not promote from another environment (set "
                         "promote_from in its [[environments]] entry)")
    if not reason.strip():
        raise UsageError("--reason is empty: who promoted what, and why, is recorded")
    body: dict[str, Any] = {"revision": revision, "reason": reason,
                            **({"force": True} if force else {})}
    if through_daemon(s, "promote", body, wait=not no_wait, as_json=as_json):
        return
    with open_store(s) as store:
        try:
            answer = promotion.promote(store, link, repo=s.repo, branch=s.branch,
                                       state_dir=s.state_dir, revision=revision,
                                       actor=control.who(), reason=reason, force=force)
        except GitopsError as exc:
            fail(exc, as_json)
            return
    local_audit(s, "promote", link.name, target=str(answer["sha"]), reason=reason)
    if not as_json:
        click.echo(daemon_answer(link.name, "promote", answer).replace(
            ": promoted", ": promoting", 1), err=True)
    target = dataclasses.replace(pipeline_target(s), upstream=link.upstream_environment)
    progress = live_progress(as_json)
    outcome = leased_run(s, target, pipeline.Request(
        kind="reconcile", revision=answer["sha"], actor=control.who(),
        reason=f"promoted by {control.who()}: {answer['reason']}"), progress)
    progress.done()
    conclude(outcome, as_json)


@click.command(epilog=EXIT_CODES)
@target_options
@click.option("--failed", is_flag=True, required=True,
              help="Retry the hosts that failed in the latest run (required).")
@click.option("--reason", callback=one_line, default="",
              help="Why: recorded in history (needed with --force).")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@with_force
@json_option
def retry(failed: bool, reason: str, no_wait: bool, force: bool, as_json: bool,
          **opts: Any) -> None:
    """Run the latest revision again on the hosts that failed, only those."""
    from gitops.pipeline import reconcile as pipeline

    s = load_settings(**opts)
    forced = guard(s, "retry", force, reason)
    if not forced and through_daemon(s, "retry", {"reason": reason}, wait=not no_wait,
                                      as_json=as_json):
        return
    with open_store(s) as store:
        hosts = control.failed_hosts(store, s.environment)
        last = next((r for r in store.history(s.environment, 50)
                     if r.kind in APPLY_KINDS), None)
    if not hosts or last is None:
        raise UsageError(f"{s.environment}: no failed hosts to retry")
    local_audit(s, "retry", s.environment, target=", ".join(sorted(hosts)), reason=reason)
    run_here(s, pipeline.Request(
        kind="retry", revision=last.sha, hosts=frozenset(hosts),
        reason=reason or f"retry of {', '.join(hosts)}", actor=control.who()), as_json)


@click.command(epilog=EXIT_CODES)
@click.argument("environment")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")
@click.option("--reason", callback=one_line, default="", help="Why: recorded in history with who.")
@config_option
@json_option
def forget(environment: str, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Remove ENVIRONMENT's status record, controls and quarantine (e.g. one made by a typo);
    its runs stay in history, with a `forget` entry saying who."""
    s = load_settings(state_dir=state_dir)
    store = open_reader(s, environment, as_json)
    if store is None:
        sys.exit(EXIT_INVALID)
    store.close()
    with open_store(s) as store:
        removed = store.forget(environment, actor=control.who(), reason=reason)
    local_audit(s, "forget", environment, reason=reason)
    if as_json:
        emit({"environment": environment, "removed": {k: v for k, v in removed.items()
                                                       if k != "runs"},
               "runs_kept": removed["runs"]})
        return
    click.echo(f"{environment}: status, controls and quarantine removed; its "
               f"{removed['runs']} run(s) stay in history (gitops history -e {environment})")


@click.command(epilog=EXIT_CODES)
@click.argument("environment")
@click.argument("sha")
@click.option("--reason", callback=one_line, required=True,
              help="Why (e.g. a host was down, not the commit's "
              "fault): recorded in history with who.")
@state_option
@config_option
@json_option
def unquarantine(environment: str, sha: str, reason: str, state_dir: Path | None,
                 as_json: bool) -> None:
    """Release one quarantined revision of ENVIRONMENT (SHA: a unique prefix of 7 or more
    hex digits) whose rollout failed for a reason not the commit's; the daemon applies it
    again at its next cycle if it is still the branch head. Through a running daemon, else
    in the store."""
    if not reason.strip():
        fail(UsageError("--reason is empty: who released what, and why, is recorded"),
              as_json)
    try:
        control.sha_prefix(sha)  # before asking anyone
    except GitopsError as exc:
        fail(exc, as_json)
    s = load_settings(environment=environment, state_dir=state_dir)
    try:
        answer = DaemonClient(s).ask(api_name(s), "unquarantine",
                                     {"revision": sha, "reason": reason})
    except GitopsError as exc:
        fail(exc, as_json)
    if answer is None:  # no daemon watches it: the store is the shared record
        try:
            with open_store(s, readonly=True) as reader:
                known = reader.environments()
        except NoStore:
            known = []
        except GitopsError as exc:
            fail(exc, as_json)
        if s.environment not in known:
            fail(UsageError(f"unknown environment {s.environment!r}; known: "
                             f"{', '.join(known) or 'none recorded yet'}"), as_json)
        with open_store(s) as store:
            try:
                answer = control.unquarantine(store, s.environment, sha,
                                              actor=control.who(), reason=reason)
            except GitopsError as exc:
                fail(exc, as_json)
        local_audit(s, "unquarantine", s.environment, target=sha, reason=reason)
    assert answer is not None
    if as_json:
        emit(answer)
        return
    click.echo(f"{s.environment}: {str(answer['sha'])[:10]} released from quarantine by "
               f"{freetext.shown(answer.get('actor'))}: {freetext.shown(answer.get('reason'))} "
               "(recorded as run "
               f"#{answer.get('event')}); applied again at the daemon's next cycle if it is "
               "still the branch head")
