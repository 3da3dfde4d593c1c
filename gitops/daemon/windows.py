"""Maintenance windows in the daemon: the window state of an environment now (the
settings', else its inventory's at a commit, ``declared_windows``), and the
``WaitingForWindow`` condition of a revision waiting for it. Logs as ``gitops.daemon.loop``."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gitops import schedule
from gitops.daemon.envstate import EnvState, set_condition
from gitops.errors import GitopsError, InvalidDeclaration
from gitops.pipeline import source
from gitops.record.store import ENVIRONMENT, Condition, Store

__all__ = ["WAITING", "declared_windows", "show_waiting", "window_state"]

log = logging.getLogger("gitops.daemon.loop")

WAITING = "WaitingForWindow"
"""The reason of the ``Reconciling=False`` condition of a revision outside its window."""


def window_state(env: EnvState, now: Callable[[], datetime], sha: str | None = None, *,
                 read: bool = True) -> schedule.WindowState | None:
    """The environment's window state at ``now()``; None without windows. The settings'
    windows win; else the inventory's at ``sha`` (the branch head when None), read once per
    commit (not ``read``: those of the commit last read, no Git). A commit whose inventory
    cannot be read has none: its run says why."""
    cfg = env.config
    windows: tuple[schedule.Window, ...] = tuple(cfg.windows)
    if not windows and not read:
        windows = env.windows[1] if env.windows is not None else ()
    elif not windows:
        try:
            sha = sha or source.head(cfg.repo, cfg.branch)
            if env.windows is None or env.windows[0] != sha:
                env.windows = (sha, tuple(declared_windows(
                    cfg.repo, cfg.branch, env.target.environment, env.target.state_dir,
                    sha)))
            windows = env.windows[1]
        except (GitopsError, OSError, tarfile.TarError) as exc:
            log.warning("%s: cannot read the inventory's maintenance windows: %s",
                        cfg.name, exc)
    return schedule.window_state(windows, now()) if windows else None


def show_waiting(store: Store, env: str, waiting: schedule.WindowState | None) -> None:
    """Show ``Reconciling=False WaitingForWindow`` while a revision waits; clear it once
    nothing waits any more (a run replaces it anyway)."""
    row = store.environment_status(env)
    shown = row.condition("Reconciling") if row is not None else None
    if waiting is not None:
        set_condition(store, env, Condition(
            "Reconciling", "False", WAITING, waiting.describe()))
    elif row is not None and shown is not None and shown.reason == WAITING:
        store.set_status(env, ENVIRONMENT,
                         [c for c in row.conditions if c.type != "Reconciling"])


def declared_windows(repo: str, branch: str, environment: str, state_dir: Path,
                     sha: str | None = None) -> list[schedule.Window]:
    """The inventory's ``settings.windows`` at ``sha`` (the fetched branch head when None);
    empty when it declares none or cannot be read (validation reports that at file:line)."""
    from pydantic import TypeAdapter, ValidationError

    from gitops.pipeline.load import read_yaml

    revision = source.fetch(repo, branch, state_dir)
    if sha is not None and sha != revision.sha:
        revision = source.revision(repo, branch, sha, state_dir)
    snap = source.snapshot(repo, revision, state_dir)
    rel = f"inventories/{environment}.yml"
    path = Path(snap.path) / rel
    if "/" in environment or not path.is_file():
        return []
    try:
        data, _ = read_yaml(path, rel, revision.ref)
    except InvalidDeclaration:
        return []
    settings = data.get("settings") if isinstance(data, dict) else None
    raw = settings.get("windows") if isinstance(settings, dict) else None
    if not raw:
        return []
    try:
        return TypeAdapter(list[schedule.Window]).validate_python(raw)
    except ValidationError:
        return []
