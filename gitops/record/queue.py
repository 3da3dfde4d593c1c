"""The task queue's schema: procrastinate's tables, functions and triggers, applied in
PostgreSQL by the record's migrations; the queue itself runs in ``gitops.daemon.fanout``.
"""

from __future__ import annotations

__all__ = ["queue_schema"]


def queue_schema() -> str:
    """procrastinate's schema (its tables, functions, triggers), one SQL script."""
    from procrastinate.schema import SchemaManager

    return str(SchemaManager.get_schema())
