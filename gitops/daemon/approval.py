"""Approvals as pure decisions (``policy``'s style): may a revision apply to an environment
that requires a person's sign-off (``require_approval``), and what a cycle does when it may
not. Table tests: ``tests/test_approval.py``.

- ``needs_approval``: a revision needs one when the environment requires approvals and it
  was neither approved, nor verified on every host here, nor is it the revision applied
  now. So a rollback (always to a revision verified here: ``targets.rollback_target``), an
  automatic rollback, a drift correction and a retry of the applied revision need none: none
  of them brings a revision the environment has not run.
- ``gate``: a cycle's decision with its run withheld ("waiting for approval of <sha>"), or
  let through with who approved it in the run's reason.
- ``approval_refusal``: why an approval request is refused before the record is asked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gitops.daemon.policy import Cycle, RunOrder

__all__ = ["WAITING", "Approval", "ApprovalInput", "Gated", "approval_refusal", "gate",
           "needs_approval", "waiting_message"]

WAITING = "WaitingForApproval"
"""The reason of the ``Reconciling=False`` condition of a revision waiting for approval."""

_SHA = re.compile(r"[0-9a-f]{7,64}")


@dataclass(frozen=True)
class Approval:
    """A person's approval of one revision: who, why."""

    actor: str
    reason: str


@dataclass(frozen=True)
class ApprovalInput:
    """What the decision needs about the environment."""

    required: bool
    """``require_approval`` of the environment."""
    approved: Mapping[str, Approval]
    """Revisions (full shas) approved here."""
    verified: frozenset[str] = frozenset()
    """Revisions verified on every host here."""
    applied: str | None = None
    """The revision applied here now."""
    team: str = ""
    """The owning team (for the message); "" for none."""


@dataclass(frozen=True)
class Gated:
    """A cycle's decision after the approval gate; ``waiting``: the revision withheld."""

    cycle: Cycle
    waiting: str | None = None


def needs_approval(sha: str, i: ApprovalInput) -> bool:
    """Whether ``sha`` may not apply yet: the environment requires approvals and ``sha`` is
    new to it (not approved, not verified here, not the applied revision)."""
    return (i.required and sha not in i.approved and sha not in i.verified
            and sha != i.applied)


def waiting_message(sha: str, team: str) -> str:
    """What the status says of a revision waiting for approval."""
    who = f"an operator of team {team}" if team else "an operator"
    return (f"waiting for approval of {sha[:10]} by {who} (gitops approve -e ENV {sha[:10]} "
            "--reason WHY)")


def gate(cycle: Cycle, wanted: RunOrder | None, i: ApprovalInput) -> Gated:
    """The cycle's decision once approvals are asked. ``wanted`` is the run the cycle would
    start inside its maintenance window (``policy.next_run`` without the window): a revision
    is approved before its window opens, so it applies as the window opens. Withheld: no
    run, "waiting for approval of <sha>" (a window's wait gives way to it); approved: the
    run goes on, its reason naming who approved it."""
    if wanted is None:
        return Gated(cycle)
    if needs_approval(wanted.revision, i):
        return Gated(Cycle(None, why=waiting_message(wanted.revision, i.team),
                           release_hold=cycle.release_hold, waiting_for=cycle.waiting_for),
                     waiting=wanted.revision)
    approval = i.approved.get(wanted.revision) if i.required else None
    if cycle.run is None or approval is None:
        return Gated(cycle)
    said = f"approved by {approval.actor}" + (f": {approval.reason}" if approval.reason else "")
    return Gated(dataclasses.replace(cycle, run=dataclasses.replace(
        cycle.run, reason=f"{cycle.run.reason}; {said}")))


def approval_refusal(sha: str, reason: str, *, required: bool, environment: str) -> str | None:
    """Why an approval of ``sha`` is refused before the record is asked, or None: the
    environment does not require approvals, ``sha`` is not a commit sha (7 to 64 hex digits),
    or no reason is given (who approved what, and why, is recorded)."""
    if not required:
        return f"{environment} does not require approval (require_approval)"
    if not _SHA.fullmatch(sha):
        return f"{sha[:60]!r} is not a commit sha: 7 to 64 lower-case hex digits"
    if not reason.strip():
        return "an approval needs a reason: who approved what, and why, is recorded"
    return None
