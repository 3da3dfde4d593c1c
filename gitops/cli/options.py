"""The click options and parameter types the commands share: ``--config``, the target's
and the store's options, ``--json``, ``--force``, the free-text callbacks, and the epilog
naming the exit codes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gitops import freetext

__all__ = [
    "EXIT_CODES", "ROW_NUMBER", "Finite", "a_note", "config_option", "env_option", "force_options",
    "json_option", "one_line", "state_option", "store_options", "target_options", "with_force",
    "writer_options"
]


EXIT_CODES = ("Exit codes: 0 all good; 1 apply or verify failed, or a temporary failure "
              "(Git remote, SSH, the environment locked by another run or held by another "
              "controller, the daemon gone); "
              "2 invalid declaration, settings or usage, or refused by an operator control "
              "(suspended or held: --force --reason).")


def _use_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        os.environ["GITOPS_CONFIG"] = str(value)
    return value


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` on every command: the settings file, as ``GITOPS_CONFIG`` says."""
    option = click.option(
        "--config", type=click.Path(path_type=Path, exists=True, dir_okay=False),
        expose_value=False, is_eager=True, callback=_use_config,
        help="Settings file (TOML) [GITOPS_CONFIG; ./gitops.toml; /etc/gitops/gitops.toml]")
    return option(func)


ROW_NUMBER = click.IntRange(1, 2**63 - 1)
"""A run id, an item number, a count of rows: 1 or more, and no larger than the database's
integers (a larger one is a usage error, not an overflow)."""


class Finite(click.ParamType[float]):
    """A positive, finite number (``nan``, ``inf``, 0 and negatives are refused)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive number", param, ctx)
        return number


def target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--repo", "-r", help="State repository: URL or local path "
                        "[env GITOPS_REPO; default .]")(func)
    func = click.option("--branch", "-b", help="Branch to reconcile [GITOPS_BRANCH; main]")(func)
    func = click.option("--environment", "--inventory", "-e", "environment",
                        help="Environment: inventories/<NAME>.yml [GITOPS_ENVIRONMENT; lab]")(func)
    func = click.option("--state-dir", type=click.Path(path_type=Path),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    return config_option(func)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def one_line(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: the option's text one clean line (``freetext.line``), else exit 2
    with one line naming the option."""
    return None if value is None else freetext.line(param.opts[0], value)


def a_note(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: a post-mortem text, newlines allowed (``freetext.note``)."""
    return None if value is None else freetext.note(param.opts[0], value)


force_options = [
    click.option("--force", is_flag=True, help="Act although the environment is suspended or "
                 "held by a rollback (needs --reason; recorded with who and why)."),
]


def with_force(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in force_options:
        func = option(func)
    return func


def store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    func = click.option("--environment", "--inventory", "-e", "environment",
                        help="Only this environment (default: all).")(func)
    return config_option(func)


env_option = click.option("--environment", "--inventory", "-e", "environment",
                          help="Environment [GITOPS_ENVIRONMENT; lab]")
state_option = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                            help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")


def writer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    return json_option(config_option(func))
