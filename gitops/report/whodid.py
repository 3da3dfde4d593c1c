"""Who did what about an incident: the audit trail's entries (``Store.audit_trail``, the one
record ``gitops audit`` and ``GET /api/audit`` read) that concern it, for the status page.

An entry concerns an incident when it names it (a post-mortem edit: ``target`` is the
incident's id, in either form, ``canonical_id``), or when it is an action on the incident's
environment (suspend, resume, rollback, retry, reconcile, promote, unquarantine) taken while
the incident was open: from ``LEAD`` before it opened (a rollback asked for before its run
started opens the incident after the request) to its close (or now). Refusals (``refused
401``, ``refused 403``) are left out: nobody did anything. Pure: no store, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

__all__ = ["ENVIRONMENT_ACTIONS", "LEAD", "about"]

ENVIRONMENT_ACTIONS = frozenset({"suspend", "resume", "rollback", "retry", "reconcile",
                                 "promote", "unquarantine"})
"""Audited actions on an environment that belong to an incident open there at the time."""

LEAD = timedelta(minutes=10)
"""How long before an incident opened an action on its environment still concerns it."""


def _canonical(incident_id: str) -> str:
    text = incident_id.strip()
    return "INC-" + (text[4:] if text.upper().startswith("INC-") else text)


def about(incident: Mapping[str, Any], entries: Iterable[Any],
          now: datetime) -> list[dict[str, Any]]:
    """The entries (``AuditRow``-like: ``at``, ``actor``, ``role``, ``action``,
    ``environment``, ``target``, ``reason``, ``outcome``) concerning ``incident`` (its
    ``as_dict()``: ``id``, ``environment``, ``opened_at``, ``closed_at``), oldest first,
    as ``{"at", "actor", "role", "action", "target", "reason", "outcome"}``."""
    wanted = _canonical(str(incident["id"]))
    opened = datetime.fromisoformat(incident["opened_at"]) - LEAD
    closed = (datetime.fromisoformat(incident["closed_at"]) if incident.get("closed_at")
              else now)
    found = []
    for entry in entries:
        if entry.outcome.startswith("refused"):
            continue
        named = bool(entry.target) and _canonical(entry.target) == wanted
        during = (entry.environment == incident["environment"]
                  and entry.action in ENVIRONMENT_ACTIONS and opened <= entry.at <= closed)
        if named or during:
            found.append(entry)
    found.sort(key=lambda e: (e.at, e.id))
    return [{"at": e.at.isoformat(), "actor": e.actor, "role": e.role, "action": e.action,
             "target": e.target, "reason": e.reason, "outcome": e.outcome} for e in found]
