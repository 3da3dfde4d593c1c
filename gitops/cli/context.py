"""What a command works on: its settings (``-e NAME`` may name one of the daemon's
``[[environments]]``), the pipeline's target, and the record opened read-only for a command
that only reads it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from gitops.cli.output import emit, fail
from gitops.daemon import control
from gitops.errors import GitopsError, UsageError
from gitops.record.store import Database, NoStore, Store, open_store

if TYPE_CHECKING:
    from gitops.pipeline import reconcile as pipeline
    from gitops.settings import EnvironmentConfig, Settings

__all__ = ["api_name", "load_settings", "open_reader", "pipeline_target", "store_environment"]


def load_settings(**overrides: Any) -> Settings:
    """The settings (``overrides``: the command line's); ``-e NAME`` naming one of the
    daemon's ``[[environments]]`` (by name or inventory) takes its repository, branch and
    inventory as defaults; with one entry and no environment named anywhere, that one."""
    from gitops import settings as settings_

    s = settings_.load(**overrides)
    entry = _entry(s, overrides.get("environment"))
    if entry is None:
        return s
    update: dict[str, Any] = {"environment": entry.environment}
    for name, value in (("repo", entry.repo), ("branch", entry.branch)):
        if overrides.get(name) is None and not os.environ.get(f"GITOPS_{name.upper()}"):
            update[name] = value
    return s.model_copy(update=update)


def _entry(s: Settings, given: str | None) -> EnvironmentConfig | None:
    name = given or s.environment
    for cfg in s.environments:
        if cfg.name == name:
            return cfg
    for cfg in s.environments:
        if cfg.environment == name:
            return cfg
    if given is None and "environment" not in s.model_fields_set and len(s.environments) == 1:
        return s.environments[0]
    return None


def api_name(s: Settings) -> str:
    """The daemon's name for the environment ``s`` targets (its ``[[environments]]`` name)."""
    return next((c.name for c in s.environments if c.environment == s.environment),
                s.environment)


def pipeline_target(s: Settings) -> pipeline.Target:
    from gitops.lab.hostsource import LAB
    from gitops.pipeline import reconcile as pipeline

    return pipeline.Target(repo=s.repo, branch=s.branch, environment=s.environment,
                           state_dir=s.state_dir, vagrant_dir=s.vagrant_dir,
                           actor=control.who(), sops=s.sops, database=Database.of(s), lab=LAB)


def store_environment(s: Settings, environment: str | None) -> str | None:
    """The store's name (inventory) of ``-e NAME``, which may name a daemon's entry."""
    if environment is None:
        return None
    entry = _entry(s, environment)
    return entry.environment if entry is not None else environment


def open_reader(s: Settings, environment: str | None, as_json: bool,
            empty: Any = ()) -> Store | None:
    """The store opened read-only for a read command (creates nothing); None when the
    state folder holds no database yet ("no runs recorded yet" is printed). A missing state
    folder, or an environment the store does not know, is a usage error (exit 2)."""
    try:
        store = open_store(s, readonly=True)
    except NoStore as exc:
        if not exc.folder_exists:
            fail(exc, as_json)
        if as_json:
            emit(list(empty) if isinstance(empty, tuple) else empty)
        else:
            click.echo("no runs recorded yet")
        return None
    except GitopsError as exc:
        fail(exc, as_json)
    if environment is not None:
        known = store.environments()
        if environment not in known:
            store.close()
            fail(UsageError(f"unknown environment {environment!r}; known: "
                             f"{', '.join(known) or 'none recorded yet'}"), as_json)
    return store
