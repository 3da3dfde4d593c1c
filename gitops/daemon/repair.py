"""Putting an environment right: the automatic rollback of a failed rollout (its commit
quarantined), an operator's rollback held in place, and the drift check that verifies, and
by policy re-applies, the last applied revision. Logs as the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gitops.daemon import control, notify, policy
from gitops.daemon.envstate import EnvState
from gitops.daemon.policy import EnvStatus
from gitops.daemon.reporting import Reporter
from gitops.daemon.windows import window_state
from gitops.pipeline.reconcile import Request, run
from gitops.record.store import Store

__all__ = ["Repairs"]

log = logging.getLogger("gitops.daemon.loop")


class Repairs:
    """Rollbacks and drift checks of the daemon's environments."""

    def __init__(self, open_store: Callable[[], Store], reporter: Reporter,
                 now: Callable[[], datetime]) -> None:
        self.open_store = open_store
        self.reporter = reporter
        self.now = now
        """The wall clock (aware) the maintenance windows are read against."""

    def rollback(self, env: EnvState, bad: str, hosts: list[str], why: str) -> None:
        """Give ``hosts`` the revision last verified on each, and quarantine ``bad`` (``why``:
        ``policy.quarantine_reason``)."""
        name = env.target.environment
        with self.open_store() as store:
            store.quarantine(name, bad, why)
            targets = policy.rollback_targets(
                bad, hosts, [policy.HostRevision.from_row(r) for r in store.status(name)])
        log.warning("%s: quarantined %s; rolling back %s", env.config.name, bad[:10], hosts)
        self.reporter.notify(env, notify.Event(
            kind="quarantine", environment=env.config.name, sha=bad,
            summary=f"{bad[:10]} quarantined: {why}",
            failed_hosts=tuple(hosts)))
        for sha, names in targets.items():
            outcome = run(env.target, Request(
                kind="rollback", revision=sha, hosts=names,
                reason=f"automatic rollback of {bad[:10]}", actor=policy.DAEMON,
                stop=env.fence))
            self.reporter.report(env, outcome, kind="rollback")

    @staticmethod
    def hold(store: Store, env: EnvState, revision: str | None, *, actor: str,
             reason: str) -> dict[str, Any]:
        """An operator's rollback of ``env`` to ``revision`` (the last good one when None),
        held until a newer commit (``control.hold_rollback``)."""
        return control.hold_rollback(
            store, env.target.environment, repo=env.config.repo, branch=env.config.branch,
            state_dir=env.target.state_dir, revision=revision, actor=actor,
            reason=reason).as_dict()

    def drift(self, env: EnvState) -> None:
        """Verify the last applied revision; with ``drift: correct``, re-apply it on drift."""
        cfg, name = env.config, env.target.environment
        with self.open_store() as store:
            if store.controls(name).suspended:
                return
            status = EnvStatus.from_row(store.environment_status(name))
        sha = status.applied if status else None
        if not sha:
            return
        env.running = f"drift check {sha[:10]}"
        outcome = run(env.target, Request(kind="verify", revision=sha, reason="drift check",
                                          actor=policy.DAEMON))
        window = window_state(env, self.now, sha) if cfg.drift == "correct" else None
        action = policy.after_drift(
            outcome.result, outcome.verify.failed_hosts if outcome.verify else [], cfg.drift,
            window)
        if action.notify and not action.correct and cfg.drift == "correct":
            log.info("%s: drift not corrected: %s", cfg.name,
                     window.describe() if window else "")
        if action.notify:
            self.reporter.report(env, outcome, kind="drift")
        if action.correct:
            corrected = run(env.target, Request(
                kind="reconcile", revision=sha, hosts=action.correct,
                reason="drift correction", actor=policy.DAEMON, stop=env.fence))
            self.reporter.report(env, corrected,
                                 kind=policy.event_kind(corrected.result, was_ready=False))
