"""The record: the store (SQLite or PostgreSQL), its schema and migrations, and leases between
controllers."""

__all__: list[str] = []
