"""The task queue (procrastinate, in the record's PostgreSQL): its schema, applied by the
record's migrations, and the apps and errors ``gitops.daemon.fanout`` runs the queue with.
The only module that imports procrastinate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["deferrer", "queue_errors", "queue_schema", "worker_app"]


def queue_schema() -> str:
    """procrastinate's schema (its tables, functions, triggers), one SQL script."""
    from procrastinate.schema import SchemaManager

    return str(SchemaManager.get_schema())


def worker_app(connection: dict[str, Any], *, pool: int, task: str, queue: str,
               body: Callable[..., None]) -> Any:
    """A procrastinate app over ``connection`` (``pool`` connections at most) whose task
    ``task`` on ``queue`` runs ``body``: the queue's worker side (run it async)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        **connection, min_size=1, max_size=pool))
    app.task(name=task, queue=queue)(body)
    return app


def deferrer(connection: dict[str, Any]) -> Any:
    """An opened synchronous procrastinate app over ``connection``: the queue's sending side
    (``configure_task(...).defer``, ``job_manager``); close it when done."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(
        **connection, min_size=1, max_size=2))
    return app.open()


def queue_errors() -> tuple[type[Exception], ...]:
    """What a call into the queue may raise of its own."""
    from procrastinate.exceptions import ProcrastinateException

    return (ProcrastinateException,)
