"""The daemon's side of approvals (``require_approval``): the gate of a cycle (what
``approval.gate`` decides, with the waiting revision noted in the record), the
``WaitingForApproval`` condition while one waits, and a person's approval. Logs as the daemon
(``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
from typing import Any

from gitops.daemon import approval
from gitops.daemon.approval import ApprovalInput, Gated
from gitops.daemon.envstate import EnvState, set_condition
from gitops.daemon.policy import Cycle, RunOrder
from gitops.errors import UsageError
from gitops.record.approvals import ApprovalRefused
from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.settings import EnvironmentConfig

__all__ = ["WAITING", "ApprovalRefused", "approve", "gated", "show_waiting_approval", "waiting"]

log = logging.getLogger("gitops.daemon.loop")

WAITING = approval.WAITING


def _inputs(store: Store, env: EnvState, team: str) -> ApprovalInput:
    name = env.target.environment
    row = store.environment_status(name)
    return ApprovalInput(
        required=True,
        approved={a.sha: approval.Approval(a.approved_by or "?", a.reason)
                  for a in store.approvals(name)},
        verified=frozenset(v.sha for v in store.verified_revisions(name)),
        applied=row.last_applied.sha if row is not None and row.last_applied else None,
        team=team)


def gated(store: Store, env: EnvState, cycle: Cycle, wanted: RunOrder | None,
          team: str) -> Gated:
    """``approval.gate`` for ``env`` (the decision as it is when approvals are not
    required); a revision withheld is noted in the record as the one waiting."""
    if not env.config.require_approval or wanted is None:
        return Gated(cycle)
    decided = approval.gate(cycle, wanted, _inputs(store, env, team))
    if decided.waiting is not None and store.request_approval(env.target.environment,
                                                              decided.waiting):
        log.info("%s: %s", env.config.name, decided.cycle.why)
    return decided


def show_waiting_approval(store: Store, environment: str, waiting: str | None,
                          team: str) -> bool:
    """Show ``Reconciling=False WaitingForApproval`` while a revision waits for approval;
    clear it once none does (a run replaces it anyway). True when a revision is shown
    waiting now that was not before (the record's status, so a restart does not say it
    again): the moment to ask the team."""
    row = store.environment_status(environment)
    shown = row.condition("Reconciling") if row is not None else None
    if waiting is not None:
        message = approval.waiting_message(waiting, team)
        if shown is None or shown.message != message:
            set_condition(store, environment, Condition("Reconciling", "False", WAITING,
                                                        message))
            return True
    elif row is not None and shown is not None and shown.reason == WAITING:
        store.set_status(environment, ENVIRONMENT,
                         [c for c in row.conditions if c.type != "Reconciling"])
    return False


def waiting(store: Store, environment: str, reasons: list[str]) -> str | None:
    """The full sha of the revision waiting for approval in ``environment`` while its
    status shows it (``reasons``: its conditions' reasons), else None."""
    if WAITING not in reasons:
        return None
    row = store.pending_approval(environment)
    return row.sha if row is not None else None


def approve(store: Store, config: EnvironmentConfig, sha: str, *, actor: str, role: str,
            reason: str) -> dict[str, Any]:
    """Record ``actor``'s approval of the revision waiting in ``config``'s environment
    (``sha``: it, or a prefix of 7 or more hex digits); ``UsageError`` for a malformed
    request (an environment without ``require_approval``, a bad sha, no reason),
    ``ApprovalRefused`` when ``sha`` is not the revision waiting (or none waits)."""
    sha = sha.strip().lower()
    refused = approval.approval_refusal(sha, reason, required=config.require_approval,
                                        environment=config.name)
    if refused is not None:
        raise UsageError(refused)
    row = store.approve(config.environment, sha, actor=actor, role=role,
                        reason=reason.strip())
    log.warning("%s: %s (%s) approved %s: %s", config.name, actor, role, row.sha[:10],
                row.reason)
    return {**row.as_dict(), "environment": config.name}
