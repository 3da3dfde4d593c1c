"""One line and the documented exit code for a ``LabError`` in the lab's click commands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from gitops.lab.common import LabError

__all__ = ["call"]

T = TypeVar("T")


def call(fn: Callable[[], T]) -> T:
    """``fn()``; a ``LabError`` prints ``error: ...`` to stderr and exits with its code."""
    try:
        return fn()
    except LabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
