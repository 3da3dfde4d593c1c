"""The commit statuses of the daemon's runs: "pending" when a run starts, its end after,
kept and sent again until delivered, and those a crash or a lost lease left owed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from gitops.daemon import notify
from gitops.daemon.envstate import EnvState, reconciling_again
from gitops.pipeline.reconcile import Outcome, recover_unfinished
from gitops.record.store import Store

__all__ = ["CUT", "STATUS_KINDS", "CommitStatuses"]

STATUS_KINDS = frozenset({"reconcile", "retry"})
"""The runs of a new commit or a retry, whose start reports "pending" on the commit."""
CUT = "interrupted: the reconciler stopped"
"""The end a commit gets when its run (or the daemon) stopped before reporting one."""


class CommitStatuses:
    """Reports the commit statuses of an environment's runs (``commit_status``), keeping in
    the record those every retry failed to deliver and those a run still owes."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self.open_store = open_store

    def send(self, env: EnvState, sha: str, state: notify.CommitState,
             description: str, retries: int = 4) -> None:
        """Report a commit status; one that every retry failed to deliver is kept and sent
        again at the next cycle, so a failure is never dropped."""
        if not env.config.commit_status:
            return
        deliveries = notify.set_commit_statuses(
            env.config.commit_status, sha, state, description,
            environment=env.config.name, retries=retries)
        with self.open_store() as store:
            for d in deliveries:
                if d.ok:
                    store.delivered(env.target.environment, d.index, sha)
                elif state != "pending":
                    store.keep_undelivered(env.target.environment, d.index, sha, state,
                                           description)

    def owe_end(self, env: EnvState, sha: str) -> None:
        """Keep, until the run's end is delivered, that ``sha`` is owed one: a crash before
        (a kill -9 during the run, or after its record is finished) leaves it for the next
        start (``owed``), which sends the end of the run, or ``error``."""
        if not env.config.commit_status:
            return
        with self.open_store() as store:
            for index in range(len(env.config.commit_status)):
                store.keep_undelivered(env.target.environment, index, sha, "error", CUT)

    def resend(self, env: EnvState) -> None:
        """Send again the statuses of ``env`` kept undelivered (one attempt each)."""
        if not env.config.commit_status:
            return
        with self.open_store() as store:
            waiting = store.undelivered(env.target.environment)
        for item in waiting:
            if item.receiver >= len(env.config.commit_status):
                continue
            d = notify.set_commit_status(
                env.config.commit_status[item.receiver], item.sha,
                cast(notify.CommitState, item.state), item.description,
                environment=env.config.name, index=item.receiver,
                retries=1)
            if d.ok:
                with self.open_store() as store:
                    store.delivered(env.target.environment, item.receiver, item.sha)

    @staticmethod
    def owed(env: EnvState, store: Store,
             taken_from: str = "") -> dict[str, tuple[notify.CommitState, str]]:
        """Record the runs of ``env`` left unfinished as interrupted (by a crash: under the
        environment lock; or by the controller its lease was ``taken_from``: the lease keeps
        every other run away); the commit statuses they (and a cycle a crash stopped before
        it sent its commit's end) still owe: by commit, the state to send."""
        cuts = recover_unfinished(store, env.target, reconciling_again(env),
                                  held=bool(taken_from), by=taken_from)
        owed: dict[str, tuple[notify.CommitState, str]] = {
            c.sha: ("error", CUT) for c in cuts if c.sha and c.kind in STATUS_KINDS}
        ends = {}  # the newest finished status-setting run of each commit: its end
        for r in reversed(store.history(env.target.environment, limit=50)):
            if r.sha and r.kind in STATUS_KINDS and r.result and not r.event:
                ends[r.sha] = notify.commit_state_for(Outcome(cast(Any, r.result)))
        for item in store.undelivered(env.target.environment):
            if item.description == CUT and item.sha not in owed:
                owed[item.sha] = ends.get(item.sha, ("error", CUT))
        return owed
