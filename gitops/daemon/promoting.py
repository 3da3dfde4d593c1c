"""The daemon's side of promotion (``promote_from``): what ``policy.promotion`` allows an
environment at a cycle, and the ``WaitingForPromotion`` condition while a revision waits
upstream. Logs as the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
from typing import Any

from gitops.daemon import policy, promotion
from gitops.daemon.envstate import EnvState, set_condition
from gitops.daemon.policy import EnvStatus
from gitops.errors import GitopsError
from gitops.pipeline import source
from gitops.record.store import ENVIRONMENT, Condition, Store

__all__ = ["allowed", "show_waiting_upstream"]

log = logging.getLogger("gitops.daemon.loop")


def allowed(env: EnvState, upstream: EnvState, store: Store, head: str, history: list[Any],
            status: EnvStatus | None) -> policy.Promotion:
    """What ``policy.promotion`` allows ``env`` now, promoting from ``upstream``. The
    branch's commits are read from the mirror once per head (fetched then)."""
    cfg = env.config
    assert cfg.promote_from is not None
    lineage = env.lineage[1] if env.lineage is not None and env.lineage[0] == head else None
    if lineage is None:
        try:  # another environment's run may be fetching the same mirror right now
            source.fetch(cfg.repo, cfg.branch, env.target.state_dir)
        except GitopsError as exc:
            log.warning("%s: %s; the promotion is decided again at the next cycle",
                        cfg.name, exc)
        lineage = source.lineage(cfg.repo, env.target.state_dir, head)
        if lineage and lineage[-1] == head:
            env.lineage = (head, lineage)
    return policy.promotion(policy.PromotionInput(
        upstream=cfg.promote_from, lineage=lineage,
        verified=frozenset(v.sha for v in store.verified_revisions(
            upstream.target.environment)),
        quarantined=frozenset(q.sha for q in store.quarantined(upstream.target.environment)),
        applied=status.applied if status is not None else None,
        by_hand=policy.pending_promotion(history)))


def show_waiting_upstream(store: Store, env: str, waiting: str | None) -> None:
    """Show ``Reconciling=False WaitingForPromotion`` while a revision waits for the
    upstream environment; clear it once none does."""
    row = store.environment_status(env)
    shown = row.condition("Reconciling") if row is not None else None
    if waiting is not None:
        if shown is None or shown.message != waiting:
            set_condition(store, env, Condition(
                "Reconciling", "False", promotion.WAITING, waiting))
    elif row is not None and shown is not None and shown.reason == promotion.WAITING:
        store.set_status(env, ENVIRONMENT,
                         [c for c in row.conditions if c.type != "Reconciling"])
