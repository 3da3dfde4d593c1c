"""Runs made here, by the command itself: refused on an environment an operator control
stops, or outside its maintenance window, unless ``--force --reason`` (recorded as an
override); under the environment's lease when the record is in PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gitops import freetext
from gitops.cli.context import pipeline_target
from gitops.cli.output import conclude, fail
from gitops.cli.progress import live_progress
from gitops.daemon import control, policy
from gitops.errors import GitopsError, UsageError
from gitops.record.store import Database, Store, open_store

if TYPE_CHECKING:
    from gitops.pipeline import reconcile as pipeline
    from gitops.settings import Settings

__all__ = ["guard", "known_environment", "leased_run", "prestart_workers", "run_here",
           "window_guard"]


def run_here(s: Settings, request: pipeline.Request, as_json: bool, *,
              lease_timeout: float = 0) -> None:
    known_environment(s, as_json)
    prestart_workers()
    progress = live_progress(as_json)
    outcome = leased_run(s, pipeline_target(s), request, progress, lease_timeout)
    progress.done()
    conclude(outcome, as_json)


def prestart_workers() -> None:
    """Start the warm worker the run will use now: it imports pyinfra and testinfra on the
    other core while this process fetches and loads (``gitops.pipeline.warm``). Every run
    here (reconcile, verify, plan) uses the apply worker: a reconcile's checks run in it, and
    so does a verify without kept connections (``gitops.pipeline.verify``); the verify
    worker starts only if a guarded apply needs it."""
    from gitops.pipeline import apply, warm

    warm.prestart([apply.WORKER])


def leased_run(s: Settings, target: pipeline.Target, request: pipeline.Request,
                progress: Callable[[str], None], lease_timeout: float = 0) -> pipeline.Outcome:
    """``pipeline.run`` here; with the record in PostgreSQL, under the environment's lease
    (``lease.hold``): refused (``LeaseHeld``, exit 1) while a live daemon holds it, after
    waiting ``lease_timeout`` seconds; a lease lost mid-run stops it before its next batch.
    A verify changes nothing and takes no lease."""
    from gitops.pipeline import reconcile as pipeline

    if s.database is None or request.kind == "verify":
        return pipeline.run(target, request, progress)
    from gitops.record import lease

    holder = lease.controller_id(f"cli:{control.who()}@{socket.gethostname()}:{os.getpid()}")
    with lease.hold(Database.of(s), target.environment, holder, s.lease_ttl,
                    wait=lease_timeout) as lost:
        return pipeline.run(target, dataclasses.replace(request, stop=lost), progress)


def guard(s: Settings, action: str, force: bool, reason: str) -> bool:
    """Refuse ``action`` on a suspended or held environment unless ``force`` (with a reason,
    recorded as an ``override`` event naming who and why): ``policy.override`` decides.
    True when it was overridden."""
    if force and not reason.strip():
        raise UsageError("--force needs --reason: who overrode what, and why, is recorded")
    with open_store(s) as store:
        stopped = policy.override(s.environment, action, store.controls(s.environment),
                                  force=force)
        if stopped is None:
            return False
        if stopped.refused is not None:
            raise UsageError(stopped.refused)
        _override(store, s, action, f"while {stopped.why}", reason)
    return True


def _override(store: Store, s: Settings, action: str, why: str, reason: str) -> None:
    """Record who forced ``action`` over which control (``why``) and their ``reason`` as an
    ``override`` event, and say so on stderr."""
    event = store.record_event(s.environment, "override", actor=control.who(),
                               reason=f"{action} --force {why}: {reason}")
    click.echo(f"{s.environment}: {action} forced by {control.who()} {freetext.shown(why)} "
               f"(recorded as run #{event})", err=True)


def window_guard(s: Settings, force: bool, reason: str) -> None:
    """Refuse a reconcile here outside the environment's maintenance window (the settings'
    ``windows`` of its ``[[environments]]`` entry, else the inventory's) unless ``force``
    (with a reason, recorded as an ``override`` event)."""
    from datetime import UTC

    from gitops.daemon.loop import declared_windows
    from gitops.schedule import window_state

    if force and not reason.strip():
        raise UsageError("--force needs --reason: who overrode what, and why, is recorded")
    entry = next((c for c in s.environments if c.environment == s.environment), None)
    windows = list(entry.windows) if entry is not None else []
    if not windows:
        windows = declared_windows(s.repo, s.branch, s.environment, s.state_dir)
    state = window_state(windows, datetime.now(UTC))
    if state.open:
        return
    why = f"outside its maintenance window: {state.describe()}"
    if not force:
        raise UsageError(f"{s.environment} is {why}; `gitops reconcile --force --reason WHY` "
                         "runs it now")
    with open_store(s) as store:
        _override(store, s, "reconcile", why, reason)


def known_environment(s: Settings, as_json: bool) -> None:
    """``-e typo``: a usage error listing the inventories the branch head declares, before
    anything is recorded (else a run and a Stalled status of "typo" would stay). A source
    that cannot be read is left to the run, which records why."""
    from gitops.pipeline import source
    from gitops.pipeline.load import environments

    try:
        revision = source.fetch(s.repo, s.branch, s.state_dir)
        snap = source.snapshot(s.repo, revision, s.state_dir)
    except GitopsError:
        return
    known = environments(Path(snap.path))
    if s.environment not in known:
        fail(UsageError(f"no inventory inventories/{s.environment}.yml in {revision.ref}; "
                         f"inventories there: {', '.join(known) or 'none'}"), as_json)
