"""Promotion between environments: an operator's ``promote`` and the pipeline's view.

An environment with ``promote_from = "staging"`` applies only revisions that staging applied
and verified on every host (``Store.verified_revisions``, written by ``reconcile``), in commit
order; the decision is ``policy.promotion``, carried out by the daemon (``loop``). Here: the
operator's promotion of one revision by hand (recorded as a ``promote`` event with who and
why; refused for a commit not on the branch, and for one not verified upstream unless
forced with a reason), and the pipeline as ``gitops status``, the API (``GET /api/pipeline``)
and the page show it: which revision is where, and what waits for which environment. Called
by ``cli``, ``loop`` and ``page``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops.daemon import approval, policy
from gitops.errors import GitopsError
from gitops.pipeline import source, targets
from gitops.record.store import Store

__all__ = ["WAITING", "Link", "PromotionRefused", "links", "pipeline", "promote"]

WAITING = "WaitingForPromotion"
"""The reason of the ``Reconciling=False`` condition of an environment waiting upstream."""


class PromotionRefused(GitopsError):
    """A promotion the record does not allow (not verified upstream, quarantined here).

    Exit 2 (a usage the environment's state refuses); HTTP 409."""


@dataclass(frozen=True)
class Link:
    """One environment of the pipeline: its daemon name, its store name, its upstream."""

    name: str
    environment: str
    """The store's name (the inventory)."""
    upstream: str | None = None
    """The upstream's daemon name (``promote_from``)."""
    upstream_environment: str | None = None
    """The upstream's store name."""


def links(environments: Sequence[Any]) -> list[Link]:
    """The pipeline of the settings' ``[[environments]]`` (``EnvironmentConfig``s), in order."""
    by_name = {e.name: e for e in environments}
    out = []
    for e in environments:
        up = by_name.get(e.promote_from) if e.promote_from else None
        out.append(Link(e.name, e.environment, up.name if up else None,
                        up.environment if up else None))
    return out


def promote(store: Store, link: Link, *, repo: str, branch: str, state_dir: Path,
            revision: str, actor: str, reason: str, force: bool = False) -> dict[str, Any]:
    """Record ``actor``'s promotion of ``revision`` (resolved to a full SHA on ``branch``)
    to ``link``'s environment, for the daemon (or the caller) to apply; raises
    ``PromotionRefused`` (``policy.promotion_refusal``; a commit off ``branch``, even
    forced) or ``RevisionNotFound`` (unknown, or a short sha of several commits)."""
    if link.upstream is None or link.upstream_environment is None:
        raise PromotionRefused(f"{link.name} does not promote from another environment "
                               "(set promote_from in its [[environments]] entry)")
    source.fetch(repo, branch, state_dir)
    found = targets.branch_commit(repo, branch, revision, state_dir)
    if found is None:  # a pull request's ref, a commit off the branch: --force cannot
        raise PromotionRefused(f"{link.name}: {revision[:60]!r} is not a commit of branch "
                               f"{branch!r}: only the branch's commits are promoted")
    sha = found.sha
    verified = frozenset(v.sha for v in store.verified_revisions(link.upstream_environment))
    quarantined = frozenset(q.sha for q in store.quarantined(link.environment))
    refused = policy.promotion_refusal(link.name, link.upstream, sha, verified=verified,
                                       quarantined_here=quarantined, force=force,
                                       reason=reason)
    if refused is not None:
        raise PromotionRefused(f"{link.name}: {refused}")
    forced = sha not in verified
    why = (f"forced: not verified on every host of {link.upstream}: {reason}" if forced
           else reason)
    event = store.record_event(link.environment, "promote", actor=actor, reason=why, sha=sha)
    return {"environment": link.name, "sha": sha, "promote_from": link.upstream,
            "forced": forced, "actor": actor, "reason": why, "event": event}


def pipeline(store: Store | None, chain: Sequence[Link]) -> list[dict[str, Any]]:
    """Per environment: what it applied, the newest revision verified on every host there,
    where it promotes from, and what waits (the ``WaitingForPromotion`` condition, or the
    ``WaitingForApproval`` one: "waiting for approval of <sha>")."""
    out = []
    for link in chain:
        row = store.environment_status(link.environment) if store is not None else None
        verified = store.verified_revisions(link.environment) if store is not None else []
        newest = verified[-1] if verified else None
        shown = row.condition("Reconciling") if row is not None else None
        out.append({
            "environment": link.name,
            "promote_from": link.upstream,
            "applied": row.last_applied.sha if row is not None and row.last_applied else None,
            "verified": newest.sha if newest else None,
            "verified_at": newest.verified_at.isoformat() if newest else None,
            "waiting": shown.message if shown is not None
            and shown.reason in (WAITING, approval.WAITING) else None,
        })
    return out
