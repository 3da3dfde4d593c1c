"""The environments this daemon holds when several share the record (``lease``): where a
request goes, taking an environment over (recovering its unfinished runs), giving one up
(lost, or more than a fair share held). Logs as the daemon (``gitops.daemon.loop``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gitops.daemon.envstate import EnvState
from gitops.daemon.policy import Trigger
from gitops.daemon.statuses import CommitStatuses
from gitops.record import lease
from gitops.record.store import Store
from gitops.records import ControllerRequest

__all__ = ["LeaseHolder"]

log = logging.getLogger("gitops.daemon.loop")


class LeaseHolder:
    """Routes requests to the controller holding each environment and keeps this
    controller's own: ``leases`` is None when no other controller may share the record."""

    def __init__(self, leases: lease.Leases | None, envs: dict[str, EnvState], *,
                 controller: str, lease_ttl: float, clock: Callable[[], float],
                 open_store: Callable[[], Store], statuses: CommitStatuses,
                 wake: Callable[[EnvState, Trigger], bool]) -> None:
        self.leases = leases
        self.envs = envs
        self.controller = controller
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.open_store = open_store
        self.statuses = statuses
        self.wake = wake
        """Wakes an environment's thread here (``Daemon``'s coalescing of triggers)."""

    def route(self, env: EnvState, trigger: Trigger, retry: list[str] | None = None) -> bool:
        """Wake ``env`` here when this controller holds it (or is the only one); else leave
        the request in the database for its holder (``lease``): True, queued there."""
        if self.leases is None or self.leases.holds(env.target.environment):
            if retry:
                with env.lock:
                    env.retry_hosts = (env.retry_hosts or frozenset()) | frozenset(retry)
            return self.wake(env, trigger)
        self.leases.post(env.target.environment, "retry" if retry else "trigger",
                         actor=trigger.actor, reason=trigger.reason, force=trigger.force,
                         hosts=retry or ())
        log.info("%s: trigger from %s (%s) left for the controller holding it",
                 env.config.name, trigger.actor, trigger.reason)
        return True

    def requested(self, request: ControllerRequest) -> None:
        """A request another controller left for an environment held here."""
        env = self.by_record.get(request.environment)
        if env is None:
            return
        self.route(env, Trigger(request.reason, request.actor, force=request.force),
                   retry=list(request.hosts) if request.action == "retry" else None)

    def lost(self, environment: str) -> None:
        """The lease of ``environment`` is gone: its run stops before its next batch."""
        env = self.by_record.get(environment)
        if env is not None:
            env.fence.set()
            log.warning("%s: lease lost (not renewed within %.0f s, or taken over): "
                        "stopping its run before the next batch", env.config.name,
                        lease.FENCE * self.lease_ttl)

    def surplus(self, environment: str) -> None:
        """This controller holds more than its fair share: ``environment`` goes at the next
        clean point between its runs (``shed``)."""
        env = self.by_record.get(environment)
        if env is not None:
            env.shed.set()
            env.wake.set()

    def shed(self, env: EnvState) -> bool:
        """Give ``env``'s lease up (no run of it is in progress here) unless a request waits
        for it; try to take it again only after ``lease_ttl``, so another controller does.
        True when it was given up."""
        assert self.leases is not None
        with env.lock:
            if (env.pending is not None or env.retry_hosts
                    or not self.leases.holds(env.target.environment)):
                return False
            self.leases.release(env.target.environment)
        env.next_poll = self.clock() + self.lease_ttl
        env.next_drift = max(env.next_drift, env.next_poll)
        log.info("%s: released for another controller (more than a fair share held here)",
                 env.config.name)
        return True

    @property
    def by_record(self) -> dict[str, EnvState]:
        """The environments by their record's name (the inventory)."""
        return {e.target.environment: e for e in self.envs.values()}

    def take(self, env: EnvState) -> bool:
        """True when this controller may run ``env`` now: it holds the lease, or just took
        it (then runs left unfinished by the last holder are recorded interrupted and a
        cycle starts at once, from the record)."""
        assert self.leases is not None
        name = env.target.environment
        if self.leases.holds(name):
            return True
        token = self.leases.try_acquire(name)
        if token is None:
            return False
        env.fence.clear()
        try:
            with self.open_store() as store:
                owed = self.statuses.owed(env, store, taken_from="the last holder")
        except Exception:
            log.exception("%s: cannot recover after taking the lease", env.config.name)
            return False  # the lease runs out; someone takes it again
        for sha, (state, description) in owed.items():  # "pending" must not stay its last word
            self.statuses.send(env, sha, state, description, retries=1)
        log.info("%s: held by this controller (%s, lease %d)", env.config.name,
                 self.controller, token)
        env.next_poll = self.clock()
        return self.leases.holds(name)  # still valid after the recovery

    def holding(self, env: EnvState) -> bool:
        """``take``, or else: look again in ``retry_s`` (nothing runs meanwhile)."""
        assert self.leases is not None
        try:
            if self.take(env):
                return True
        except Exception:  # a bug must not kill the environment's loop
            log.exception("%s: cannot take the lease", env.config.name)
        env.next_poll = self.clock() + self.leases.retry_s
        env.next_drift = max(env.next_drift, env.next_poll)
        return False
