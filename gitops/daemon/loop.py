"""The daemon (``gitops run``): watch environments and reconcile them continuously.

One thread per environment waits for a trigger (a poll interval with jitter, a webhook, a
commit to a watched local repository, an operator) and coalesces them: at most one pending
reconcile per environment. A cycle with no new commit asks ``git ls-remote`` one question and
opens no SSH connection. New commits roll out in the inventory's batches; a failed rollout
rolls the failed hosts back to the revision last verified on them and quarantines the bad
commit until a newer one arrives; unreachable hosts are retried with backoff; a bad
declaration or an unsigned commit stalls the environment until a new commit. Drift checks run
the checks on an interval and, by policy, re-apply; verifies keep each host's SSH connection
open until the daemon stops (``verify.SshConnections``). What to run, what follows a run,
the waits, rollback targets, drift, maintenance windows (an injected wall clock ``now``),
promotion from another environment (``promote_from``: only what it verified on every host;
a run that verifies a revision wakes the environments promoting from it) and
notifications are decided by the pure functions of
``policy``: this module gathers their inputs and carries their decisions out, and prunes the
state folder after runs (``retention``). With the record in PostgreSQL, several daemons share
the environments: each runs only those it holds the lease of (``lease``), takes one over
when its holder's lease expires (runs left unfinished recorded interrupted, then a cycle from
the record), and passes requests for the others to their holder through the database. This
process never imports pyinfra or testinfra: the stages run them in worker processes. Called
by ``cli run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from gitops import schedule
from gitops.daemon import control, fanout, notify, policy, promotion, retention
from gitops.daemon.policy import After, CycleInput, EnvStatus, LastRun, RunSummary, Trigger
from gitops.daemon.preview import Previews
from gitops.errors import GitopsError, InvalidDeclaration, LockHeld, Suspended, UsageError
from gitops.lab.hostsource import LAB
from gitops.pipeline import source
from gitops.pipeline import verify as verify_stage
from gitops.pipeline.reconcile import Outcome, Request, Target, recover_unfinished, run
from gitops.record import lease
from gitops.record.store import ENVIRONMENT, Condition, Database, NoStore, Store, open_store
from gitops.record.store import now as store_now
from gitops.records import ControllerRequest
from gitops.settings import EnvironmentConfig, Settings
from gitops.settings import promotion_problems as settings_promotion_problems

log = logging.getLogger("gitops.daemon.loop")

__all__ = ["Daemon", "declared_windows"]

_PRUNE_EVERY = 3600.0
_STATUS_KINDS = frozenset({"reconcile", "retry"})
"""The runs of a new commit or a retry, whose start reports "pending" on the commit."""
_CUT = "interrupted: the reconciler stopped"
"""The end a commit gets when its run (or the daemon) stopped before reporting one."""
"""Seconds between prunings of the history and the mirrors."""
WAITING = "WaitingForWindow"
"""The reason of the ``Reconciling=False`` condition of a revision outside its window."""
_DIFF_CACHE = 512
"""Diff summaries kept in memory (incident reports rewrite them after every run)."""


@dataclass
class _Env:
    """What the daemon keeps in memory per environment; everything else is in the store."""

    config: EnvironmentConfig
    target: Target
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Trigger | None = None
    """The reconcile asked for and not yet started."""
    next_poll: float = 0.0
    next_drift: float = 0.0
    failures: int = 0
    """Consecutive temporary failures: the backoff exponent."""
    retry_hosts: frozenset[str] | None = None
    """Hosts to retry at the next cycle (an operator's ``retry``, unreachable hosts)."""
    running: str | None = None
    """What the environment's thread is doing now (for health)."""
    diffs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(old, new) -> ``git diff --stat`` in its repository, for incident reports."""
    windows: tuple[str, tuple[schedule.Window, ...]] | None = None
    """(sha, the inventory's maintenance windows at that commit), read once per commit."""
    lineage: tuple[str, tuple[str, ...]] | None = None
    """(head, the branch's commits oldest first) for promotion, read once per head."""
    fence: threading.Event = field(default_factory=threading.Event)
    """Set to stop a run before its next batch: the daemon stops, or its lease was lost."""
    shed: threading.Event = field(default_factory=threading.Event)
    """Set when this controller holds more than its fair share: give the lease up between
    runs (``lease.surplus``)."""


class Daemon:
    """The reconcile loop. Implements the HTTP server's ``Controller`` protocol."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not settings.environments:
            raise UsageError("no environments to watch: add [[environments]] to the settings")
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.now = now
        """The wall clock (aware) the maintenance windows are read against."""
        self.stop_event = threading.Event()
        self.connections = verify_stage.SshConnections()
        self.envs: dict[str, _Env] = {}
        problems = settings_promotion_problems(settings.environments)
        if problems:
            raise UsageError("; ".join(f"{'.'.join(map(str, loc))}: {why}"
                                       for loc, why in problems))
        self.chain = promotion.links(settings.environments)
        upstreams = {link.name: link.upstream_environment for link in self.chain}
        for cfg in settings.environments:
            if cfg.name in self.envs:
                raise UsageError(f"environment {cfg.name!r} is listed twice")
            self.envs[cfg.name] = _Env(cfg, Target(
                repo=cfg.repo, branch=cfg.branch, environment=cfg.environment,
                state_dir=settings.state_dir, actor=policy.DAEMON,
                connections=self.connections.path,
                keep_snapshots=settings.retention.snapshots, sops=settings.sops,
                database=Database.of(settings), prune=cfg.prune,
                upstream=upstreams.get(cfg.name), lab=LAB))
        self.threads: list[threading.Thread] = []
        self.observers: list[Any] = []
        self.pruned_at: float | None = None
        """When the history was last pruned (``retention``, at most once an hour)."""
        self.prune_lock = threading.Lock()
        self.previews = Previews(settings)
        """Pull/merge request previews on disposable hosts (fed by the HTTP server)."""
        self.digest_schedule: Any = None
        """When the next digest is due (``gitops.daemon.digest.Schedule``), with a schedule set."""
        if settings.digest.schedule is not None:
            from gitops.daemon.digest import Schedule

            self.digest_schedule = Schedule(settings.digest)
        self.controller = lease.controller_id(settings.controller_name)
        self.leases = (lease.Leases(Database.of(settings), self.controller, settings.lease_ttl,
                                    clock=clock) if settings.database else None)
        """The environments' leases when several controllers may share the record."""
        self.fanout = (fanout.Service(settings, self.controller)
                       if settings.fanout.remote and settings.database else None)
        """The batches' shares across controllers' workers (``fanout.remote``)."""

    # -- the Controller protocol (HTTP API) ------------------------------------------------

    def environments(self) -> list[EnvironmentConfig]:
        return [e.config for e in self.envs.values()]

    def trigger(self, environment: str, *, reason: str, actor: str,
                force: bool = False) -> bool:
        """Ask for a reconcile now; False when one is already pending (coalesced).

        Raises ``Suspended`` (who, why, since when) for an operator's trigger of a suspended
        environment, or of one outside its maintenance window unless ``force`` (with a
        reason; recorded as an ``override`` event); a webhook's is accepted and applies
        nothing until resumed or the window opens."""
        env = self._env(environment)
        if force and not reason.strip():
            raise UsageError("force needs a reason: who overrode what, and why, is recorded")
        trigger = Trigger(reason, actor, force=force)
        window = None if trigger.look_only else self._window(env, read=False)
        with self._store() as store:
            controls = store.controls(env.target.environment)
            refused = policy.refusal(environment, controls, trigger, window)
            if refused is not None:
                raise Suspended(refused)
            if force and window is not None and not window.open:
                event = store.record_event(
                    env.target.environment, "override", actor=actor,
                    reason=f"reconcile --force outside the maintenance window "
                           f"({window.describe()}): {reason}")
                log.warning("%s: %s forced a reconcile outside the maintenance window "
                            "(recorded as run #%d)", environment, actor, event)
        return self._route(env, trigger)

    def _wake(self, env: _Env, trigger: Trigger) -> bool:
        environment, reason, actor = env.config.name, trigger.reason, trigger.actor
        with env.lock:
            queued = env.pending is None
            if queued or trigger.force:  # a forced one is never folded into an unforced one
                env.pending = trigger
        env.wake.set()
        log.info("%s: trigger from %s (%s)%s", environment, actor, reason,
                 "" if queued else ", coalesced")
        return queued

    def operate(self, environment: str, action: str, *, actor: str, reason: str = "",
                revision: str | None = None) -> dict[str, Any]:
        env = self._env(environment)
        with self._store() as store:
            if action == "suspend":
                return control.suspend(store, env.target.environment, actor=actor,
                                       reason=reason).as_dict()
            if action == "resume":
                result = control.resume(store, env.target.environment, actor=actor,
                                        reason=reason).as_dict()
            elif action == "rollback":
                result = self._hold(store, env, revision, actor=actor, reason=reason)
            elif action == "unquarantine":
                result = control.unquarantine(store, env.target.environment, revision or "",
                                              actor=actor, reason=reason)
                log.warning("%s: %s released %s from quarantine: %s", environment, actor,
                            str(result["sha"])[:10], reason)
                # a "look now": the cycle applies it if it is still the head (the release
                # is in the history, so it is theirs and in full)
                self._route(env, Trigger(f"unquarantine by {actor}", "watch:unquarantine"))
                return result
            elif action == "retry":
                hosts = control.failed_hosts(store, env.target.environment)
                if not hosts:
                    raise UsageError(f"{environment}: no failed hosts to retry")
                self._route(env, Trigger(f"{action} by {actor}", actor), retry=hosts)
                return {"retrying": hosts}
            else:
                raise UsageError(f"unknown action {action!r}")
        self._route(env, Trigger(f"{action} by {actor}", actor))
        return result

    def promote(self, environment: str, *, revision: str, actor: str, reason: str,
                force: bool = False) -> dict[str, Any]:
        """Record an operator's promotion of ``revision`` to ``environment`` (who, why) and
        wake it to apply it; ``promotion.PromotionRefused`` for one not verified upstream
        (unless ``force``) or quarantined here."""
        env = self._env(environment)
        link = next(link for link in self.chain if link.name == environment)
        with self._store() as store:
            result = promotion.promote(
                store, link, repo=env.config.repo, branch=env.config.branch,
                state_dir=env.target.state_dir, revision=revision, actor=actor,
                reason=reason, force=force)
        log.warning("%s: %s promoted %s by hand%s: %s", environment, actor,
                    result["sha"][:10], " (forced)" if result["forced"] else "", reason)
        self._route(env, Trigger(f"promote by {actor}", actor))
        return result

    def pipeline(self) -> list[dict[str, Any]]:
        """Which revision is where and what waits for which environment (``promotion``)."""
        try:
            reader = open_store(self.settings, readonly=True)
        except NoStore:
            return promotion.pipeline(None, self.chain)
        with reader as store:
            return promotion.pipeline(store, self.chain)
    def _route(self, env: _Env, trigger: Trigger, retry: list[str] | None = None) -> bool:
        """Wake ``env`` here when this controller holds it (or is the only one); else leave
        the request in the database for its holder (``lease``): True, queued there."""
        if self.leases is None or self.leases.holds(env.target.environment):
            if retry:
                with env.lock:
                    env.retry_hosts = (env.retry_hosts or frozenset()) | frozenset(retry)
            return self._wake(env, trigger)
        self.leases.post(env.target.environment, "retry" if retry else "trigger",
                         actor=trigger.actor, reason=trigger.reason, force=trigger.force,
                         hosts=retry or ())
        log.info("%s: trigger from %s (%s) left for the controller holding it",
                 env.config.name, trigger.actor, trigger.reason)
        return True

    def _requested(self, request: ControllerRequest) -> None:
        """A request another controller left for an environment held here."""
        env = self._by_record.get(request.environment)
        if env is None:
            return
        self._route(env, Trigger(request.reason, request.actor, force=request.force),
                    retry=list(request.hosts) if request.action == "retry" else None)

    def _lost(self, environment: str) -> None:
        """The lease of ``environment`` is gone: its run stops before its next batch."""
        env = self._by_record.get(environment)
        if env is not None:
            env.fence.set()
            log.warning("%s: lease lost (not renewed within %.0f s, or taken over): "
                        "stopping its run before the next batch", env.config.name,
                        lease.FENCE * self.settings.lease_ttl)

    def _surplus(self, environment: str) -> None:
        """This controller holds more than its fair share: ``environment`` goes at the next
        clean point between its runs (``_shed``)."""
        env = self._by_record.get(environment)
        if env is not None:
            env.shed.set()
            env.wake.set()

    def _shed(self, env: _Env) -> bool:
        """Give ``env``'s lease up (no run of it is in progress here) unless a request waits
        for it; try to take it again only after ``lease_ttl``, so another controller does.
        True when it was given up."""
        assert self.leases is not None
        with env.lock:
            if (env.pending is not None or env.retry_hosts
                    or not self.leases.holds(env.target.environment)):
                return False
            self.leases.release(env.target.environment)
        env.next_poll = self.clock() + self.settings.lease_ttl
        env.next_drift = max(env.next_drift, env.next_poll)
        log.info("%s: released for another controller (more than a fair share held here)",
                 env.config.name)
        return True

    @property
    def _by_record(self) -> dict[str, _Env]:
        return {e.target.environment: e for e in self.envs.values()}

    def _interrupted(self, env: _Env, store: Store,
                     taken_from: str = "") -> dict[str, tuple[notify.CommitState, str]]:
        """Record the runs of ``env`` left unfinished as interrupted (by a crash: under the
        environment lock; or by the controller its lease was ``taken_from``: the lease keeps
        every other run away); the commit statuses they (and a cycle a crash stopped before
        it sent its commit's end, ``_cycle``) still owe: by commit, the state to send."""
        cuts = recover_unfinished(store, env.target, self._said(env), held=bool(taken_from),
                                  by=taken_from)
        owed: dict[str, tuple[notify.CommitState, str]] = {
            c.sha: ("error", _CUT) for c in cuts if c.sha and c.kind in _STATUS_KINDS}
        ends = {}  # the newest finished status-setting run of each commit: its end
        for r in reversed(store.history(env.target.environment, limit=50)):
            if r.sha and r.kind in _STATUS_KINDS and r.result and not r.event:
                ends[r.sha] = notify.commit_state_for(Outcome(cast(Any, r.result)))
        for item in store.undelivered(env.target.environment):
            if item.description == _CUT and item.sha not in owed:
                owed[item.sha] = ends.get(item.sha, ("error", _CUT))
        return owed

    @staticmethod
    def _said(env: _Env) -> Callable[[str], None]:
        return lambda line: log.warning("%s: %s; reconciling again", env.config.name, line)

    def _take(self, env: _Env) -> bool:
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
            with self._store() as store:
                owed = self._interrupted(env, store, taken_from="the last holder")
        except Exception:
            log.exception("%s: cannot recover after taking the lease", env.config.name)
            return False  # the lease runs out; someone takes it again
        for sha, (state, description) in owed.items():  # "pending" must not stay its last word
            self._commit_status(env, sha, state, description, retries=1)
        log.info("%s: held by this controller (%s, lease %d)", env.config.name,
                 self.controller, token)
        env.next_poll = self.clock()
        return self.leases.holds(name)  # still valid after the recovery

    def _holding(self, env: _Env) -> bool:
        """``_take``, or else: look again in ``retry_s`` (nothing runs meanwhile)."""
        assert self.leases is not None
        try:
            if self._take(env):
                return True
        except Exception:  # a bug must not kill the environment's loop
            log.exception("%s: cannot take the lease", env.config.name)
        env.next_poll = self.clock() + self.leases.retry_s
        env.next_drift = max(env.next_drift, env.next_poll)
        return False

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stop_event.is_set() else "ok",
            "controller": self.controller,
            "holds": self.leases.held() if self.leases is not None else sorted(
                e.target.environment for e in self.envs.values()),
            "environments": {
                name: {"running": env.running, "pending": env.pending is not None,
                       "consecutive_failures": env.failures}
                for name, env in self.envs.items()
            },
        }

    def status(self) -> list[dict[str, Any]]:
        try:
            reader = open_store(self.settings, readonly=True)  # a reader: writes nothing
        except NoStore:
            return []  # nothing recorded yet
        with reader as store:
            rows = [row.as_dict() for row in store.status()]
            holders = ({ls.environment: ls.holder for ls in store.leases() if ls.live}
                       if self.leases is not None else {})
            for row in rows:
                if row["host"] == ENVIRONMENT:
                    row["controller"] = (holders.get(row["environment"])
                                         if self.leases is not None else self.controller)
                    row["controls"] = store.controls(row["environment"]).as_dict()
                    row["quarantined"] = [q.sha for q in store.quarantined(row["environment"])]
            return rows

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start one thread per environment (and the local-repository watchers)."""
        for gone in verify_stage.SshConnections.prune():
            log.info("removed the SSH connection folder of a stopped daemon: %s", gone)
        owed: list[tuple[_Env, str, notify.CommitState, str]] = []
        with self._store() as store:
            for env in self.envs.values():  # the settings' owner wins over the inventory's
                store.set_owners(env.target.environment, "settings", env.config.team)
            if self.leases is None:  # with leases, each environment recovers when taken
                for env in self.envs.values():
                    owed += [(env, sha, *end) for sha, end in self._interrupted(env, store).items()]
        for env, sha, state, description in owed:  # "pending" must not stay its last word
            self._commit_status(env, sha, state, description, retries=1)
        if self.fanout is not None:
            self.fanout.start()
        if self.leases is not None:
            self.leases.start(on_lost=self._lost, on_request=self._requested,
                              on_surplus=self._surplus, environments=len(self.envs))
            log.info("controller %s: sharing %d environment(s) through leases of %g s",
                     self.controller, len(self.envs), self.settings.lease_ttl)
        self.previews.recover()  # labs a crash left behind, found by their names
        self.previews.start()
        for env in self.envs.values():
            thread = threading.Thread(target=self._loop, args=(env,), daemon=True,
                                      name=f"gitops-{env.config.name}")
            thread.start()
            self.threads.append(thread)
            if env.config.watch and Path(env.config.repo).expanduser().is_dir():
                self._watch(env)
        if self.digest_schedule is not None:
            self.digest_tick(self.now())  # learns when the first one is due
            thread = threading.Thread(target=self._digest_loop, daemon=True,
                                      name="gitops-digest")
            thread.start()
            self.threads.append(thread)

    # -- the digest ------------------------------------------------------------------------

    def digest_tick(self, now: datetime) -> list[Any] | None:
        """Send the digest if its schedule is due at ``now`` (the deliveries), else None."""
        if self.digest_schedule is None or not self.digest_schedule.due(now):
            return None
        from gitops.daemon import digest

        try:
            with self._store() as store:
                found = digest.build(store, self.settings, now=now)
        except Exception:  # a digest must never stop the daemon
            log.exception("digest: could not read the record")
            return []
        deliveries = digest.send(found, digest.receivers(self.settings))
        log.info("digest of %s sent to %d receiver(s)", found.title, len(deliveries))
        return deliveries

    def _digest_loop(self) -> None:
        while not self.stop_event.wait(30):
            self.digest_tick(self.now())

    def stop(self, timeout: float | None = None) -> None:
        """Stop: a run in progress finishes its current batch and is recorded interrupted."""
        self.stop_event.set()
        self.previews.stop(timeout)
        for env in self.envs.values():
            env.fence.set()
            env.wake.set()
        for observer in self.observers:
            observer.stop()
        for thread in self.threads:
            thread.join(timeout)
        for observer in self.observers:
            observer.join(5)
        if all(not t.is_alive() for t in self.threads):
            self.connections.close()
        if self.fanout is not None:  # after the runs: their shares are done
            self.fanout.stop(timeout)
        if self.leases is not None:  # released only when no run of them is left
            self.leases.stop(release=all(not t.is_alive() for t in self.threads))

    def _loop(self, env: _Env) -> None:
        env.next_poll = self.clock()
        env.next_drift = self.clock() + self._jitter(env.config.drift_interval, env.config)
        while not self.stop_event.is_set():
            wait = min(env.next_poll, env.next_drift) - self.clock()
            if wait > 0:
                env.wake.wait(wait)
            env.wake.clear()
            if self.stop_event.is_set():
                break
            if env.shed.is_set():  # between runs: a clean point to give the lease up
                env.shed.clear()
                if self._shed(env):
                    continue
            if self.leases is not None and not self._holding(env):
                continue
            with env.lock:
                pending, env.pending = env.pending, None
            now = self.clock()
            env.target = dataclasses.replace(env.target, spread=self._spread(env))
            try:
                if pending is not None or now >= env.next_poll:
                    delay = self._cycle(env, pending)
                    env.next_poll = self.clock() + delay
                if self.clock() >= env.next_drift and not self.stop_event.is_set():
                    self._drift(env)
                    env.next_drift = self.clock() + self._jitter(env.config.drift_interval,
                                                                 env.config)
            except Exception:  # a bug must not kill the environment's loop
                log.exception("%s: cycle failed", env.config.name)
                env.failures += 1
                env.next_poll = self.clock() + policy.backoff(
                    env.failures, env.config.retry_base, env.config.retry_max, self.rand())
            finally:
                env.running = None

    def _spread(self, env: _Env) -> fanout.Spread | None:
        """The fan-out of ``env``'s batches across the controllers' workers, else None: its
        runs' ``Target.spread``."""
        if self.fanout is None or self.leases is None:
            return None
        name = env.target.environment
        return self.fanout.spread(name, partial(self.leases.token, name))

    def _cycle(self, env: _Env, pending: Trigger | None) -> float:
        """One poll: gather the inputs, let ``policy.next_run`` decide, carry it out; returns
        the seconds until the next poll."""
        cfg, name = env.config, env.target.environment
        try:
            head = source.head(cfg.repo, cfg.branch)
        except GitopsError as exc:
            with self._store() as store:
                self._condition(store, name, Condition("Reconciling", "False", "ArtifactFailed",
                                                       f"{exc}; retrying with backoff"))
            log.warning("%s: %s", cfg.name, exc)
            return self._carry_out(env, policy.after_run(
                RunSummary("error"), cfg, env.failures, self.rand()), "")
        with env.lock:  # taken now: a retry asked for during the run is kept for the next
            retry, env.retry_hosts = env.retry_hosts, None
        with self._store() as store:
            history = store.history(name, limit=20)
            if any(r.finished_at is None for r in history) and self._recover(env, store):
                history = store.history(name, limit=20)
            status = EnvStatus.from_row(store.environment_status(name))
            inputs = CycleInput(
                head=head, controls=store.controls(name),
                last=LastRun.from_history(history),
                quarantined=frozenset(q.sha for q in store.quarantined(name)),
                status=status, pending=pending, retry=retry,
                promotion=self._promotion(env, store, head, history, status),
                released=policy.Release.from_history(
                    store.since_last_apply(name, "unquarantine")))
            decision = policy.next_run(inputs)
        if decision.run is not None and not (pending and pending.force):
            window = self._window(env, head)  # only read when something would run
            if window is not None:
                inputs = dataclasses.replace(inputs, window=window)
                decision = policy.next_run(inputs)
        with self._store() as store:
            if decision.release_hold:
                control.release_hold(store, name, head=head)
            self._waiting(store, name, decision.waiting)
            if decision.waiting is None and cfg.promote_from:
                self._waiting_upstream(store, name, decision.waiting_for)
        order = decision.run
        if order is None:
            if retry is not None and (inputs.controls.suspended or decision.waiting):
                with env.lock:  # kept for after the resume or the window's opening
                    env.retry_hosts = (env.retry_hosts or frozenset()) | retry
            log.log(logging.INFO if decision.waiting else logging.DEBUG,
                    "%s: nothing to run: %s", cfg.name, decision.why)
            return policy.until_window(policy.jitter(cfg.interval, cfg.jitter, self.rand()),
                                       decision.waiting, self.now())
        self._resend_statuses(env)
        reason = order.reason
        if order.previous:
            source.fetch(cfg.repo, cfg.branch, env.target.state_dir)
            if order.previous != order.revision and source.rewrites_history(
                    cfg.repo, env.target.state_dir, order.previous, order.revision):
                reason += (f" (force-push: {order.previous[:10]} is not an ancestor of "
                           f"{order.revision[:10]})")
        env.running = f"{order.kind} {order.revision[:10]}"
        self._commit_status(env, order.revision, "pending", f"{order.kind} started", retries=1)
        self._owe_end(env, order.revision)
        try:
            outcome = run(env.target, Request(
                kind=order.kind, reason=reason, revision=order.revision, hosts=order.hosts,
                signing=cfg.verify_commits, stop=env.fence, actor=order.actor,
                changed_only=order.changed_only,
            ), progress=lambda line: log.info("%s: %s", cfg.name, line))
        except Exception:  # the record failed (a full disk): the commit still gets its end
            with contextlib.suppress(Exception):
                self._commit_status(env, order.revision, "error",
                                    "reconciler error: the run could not be recorded")
            raise
        state, description = notify.commit_state_for(outcome)
        self._commit_status(env, order.revision, state, description)
        if outcome.result == "succeeded":
            self._wake_downstream(env, order.revision)
        was_ready = inputs.status is None or inputs.status.ready
        self._report(env, outcome, kind=policy.event_kind(outcome.result, was_ready=was_ready))
        after = policy.after_run(RunSummary.of(outcome), cfg, env.failures, self.rand())
        delay = self._carry_out(env, after, order.revision)
        self._prune()
        return delay

    def _recover(self, env: _Env, store: Store) -> bool:
        """Record interrupted the runs left unfinished while no run holds the lock (a record
        a full disk refused to finish, a killed CLI run), so their commit is reconciled
        again; False when a run (a CLI's) is in progress."""
        try:
            return bool(recover_unfinished(store, env.target, self._said(env)))
        except LockHeld:
            return False

    def _carry_out(self, env: _Env, after: After, sha: str) -> float:
        """Do what ``policy.after_run`` decided; returns the seconds until the next poll."""
        env.failures = after.failures
        if after.short:
            log.warning("%s: the checks found %s short of the checks of %s (nothing changed "
                        "there in this run): not rolled back", env.config.name,
                        ", ".join(sorted(after.short)), sha[:10])
        if after.rollback:
            self._rollback(env, sha, sorted(after.rollback), after.quarantine)
        if after.retry:
            with env.lock:  # with any retry an operator asked for meanwhile
                env.retry_hosts = (env.retry_hosts or frozenset()) | after.retry
        return after.delay_s

    def _prune(self) -> None:
        """Bound the database history, the repository mirrors and the pull requests' refs in
        them (``Settings.retention``), at most once an hour; the snapshots are pruned by
        every run."""
        with self.prune_lock:
            if self.pruned_at is not None and self.clock() - self.pruned_at < _PRUNE_EVERY:
                return
            self.pruned_at = self.clock()
            try:
                with self._store() as store:
                    removed = retention.prune_history(
                        store, self.settings.state_dir, self.settings.retention,
                        repos={name: e.config.repo for name, e in self.envs.items()},
                        now=store_now())
            except OSError as exc:
                log.warning("cannot prune the state folder: %s", exc)
                return
        if removed:
            log.info("pruned %d run(s) older than %g days from the history", removed,
                     self.settings.retention.history_days)
        for env in self.envs.values():
            if removed:
                self._write_incidents(env)  # and remove the reports of the runs gone

    def _rollback(self, env: _Env, bad: str, hosts: list[str], why: str) -> None:
        """Give ``hosts`` the revision last verified on each, and quarantine ``bad`` (``why``:
        ``policy.quarantine_reason``)."""
        name = env.target.environment
        with self._store() as store:
            store.quarantine(name, bad, why)
            targets = policy.rollback_targets(
                bad, hosts, [policy.HostRevision.from_row(r) for r in store.status(name)])
        log.warning("%s: quarantined %s; rolling back %s", env.config.name, bad[:10], hosts)
        self._notify(env, notify.Event(
            kind="quarantine", environment=env.config.name, sha=bad,
            summary=f"{bad[:10]} quarantined: {why}",
            failed_hosts=tuple(hosts)))
        for sha, names in targets.items():
            outcome = run(env.target, Request(
                kind="rollback", revision=sha, hosts=names,
                reason=f"automatic rollback of {bad[:10]}", actor=policy.DAEMON,
                stop=env.fence))
            self._report(env, outcome, kind="rollback")

    def _hold(self, store: Store, env: _Env, revision: str | None, *, actor: str,
              reason: str) -> dict[str, Any]:
        return control.hold_rollback(
            store, env.target.environment, repo=env.config.repo, branch=env.config.branch,
            state_dir=env.target.state_dir, revision=revision, actor=actor,
            reason=reason).as_dict()

    def _drift(self, env: _Env) -> None:
        """Verify the last applied revision; with ``drift: correct``, re-apply it on drift."""
        cfg, name = env.config, env.target.environment
        with self._store() as store:
            if store.controls(name).suspended:
                return
            status = EnvStatus.from_row(store.environment_status(name))
        sha = status.applied if status else None
        if not sha:
            return
        env.running = f"drift check {sha[:10]}"
        outcome = run(env.target, Request(kind="verify", revision=sha, reason="drift check",
                                          actor=policy.DAEMON))
        window = self._window(env, sha) if cfg.drift == "correct" else None
        action = policy.after_drift(
            outcome.result, outcome.verify.failed_hosts if outcome.verify else [], cfg.drift,
            window)
        if action.notify and not action.correct and cfg.drift == "correct":
            log.info("%s: drift not corrected: %s", cfg.name,
                     window.describe() if window else "")
        if action.notify:
            self._report(env, outcome, kind="drift")
        if action.correct:
            corrected = run(env.target, Request(
                kind="reconcile", revision=sha, hosts=action.correct,
                reason="drift correction", actor=policy.DAEMON, stop=env.fence))
            self._report(env, corrected,
                         kind=policy.event_kind(corrected.result, was_ready=False))

    # -- telling people: notifications, commit statuses, incident reports ---------------

    def _report(self, env: _Env, outcome: Outcome, *, kind: notify.EventKind | None) -> None:
        """Log why a run failed (``explain``), notify ``kind`` (``policy.event_kind``; None:
        nobody) and rewrite incident reports."""
        from gitops.report import explain

        for line in explain.failure_lines(
                result=outcome.result, ref=outcome.revision.ref if outcome.revision else None,
                error=outcome.error, apply=outcome.apply, verify=outcome.verify):
            log.warning("%s: %s", env.config.name, line)
        if kind is not None and env.config.notifiers:
            self._notify(env, notify.event_from_outcome(kind, env.config.name, outcome))
        self._write_incidents(env)

    def _notify(self, env: _Env, event: notify.Event) -> None:
        if env.config.notifiers:  # never raises; failures are logged without the URL
            notify.notify(env.config.notifiers, event)

    def _commit_status(self, env: _Env, sha: str, state: notify.CommitState,
                       description: str, retries: int = 4) -> None:
        """Report a commit status; one that every retry failed to deliver is kept and sent
        again at the next cycle, so a failure is never dropped."""
        if not env.config.commit_status:
            return
        deliveries = notify.set_commit_statuses(
            env.config.commit_status, sha, state, description,
            environment=env.config.name, retries=retries)
        with self._store() as store:
            for d in deliveries:
                if d.ok:
                    store.delivered(env.target.environment, d.index, sha)
                elif state != "pending":
                    store.keep_undelivered(env.target.environment, d.index, sha, state,
                                           description)

    def _owe_end(self, env: _Env, sha: str) -> None:
        """Keep, until the run's end is delivered, that ``sha`` is owed one: a crash before
        (a kill -9 during the run, or after its record is finished) leaves it for the next
        start (``_interrupted``), which sends the end of the run, or ``error``."""
        if not env.config.commit_status:
            return
        with self._store() as store:
            for index in range(len(env.config.commit_status)):
                store.keep_undelivered(env.target.environment, index, sha, "error", _CUT)

    def _resend_statuses(self, env: _Env) -> None:
        if not env.config.commit_status:
            return
        with self._store() as store:
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
                with self._store() as store:
                    store.delivered(env.target.environment, item.receiver, item.sha)

    def _write_incidents(self, env: _Env) -> None:
        """Rewrite the incident reports of ``env`` (only its own: no other changed), their
        diff summaries from its own repository's mirror."""
        from gitops.report import incidents

        folder = self.settings.reports_dir or self.settings.state_dir / "reports"
        cfg = env.config

        def diff(old: str, new: str) -> str:
            key = (old, new)
            if key not in env.diffs:  # commits do not change: each pair is asked once
                text = source.diff_summary(cfg.repo, self.settings.state_dir, old, new)
                if not text:
                    return text  # not fetched yet, perhaps: ask again next time
                if len(env.diffs) >= _DIFF_CACHE:
                    env.diffs.pop(next(iter(env.diffs)))
                env.diffs[key] = text
            return env.diffs[key]

        try:
            with self._store() as store:
                written = incidents.write_reports(store, folder, diff_summary=diff,
                                                  environment=env.target.environment)
            retention.prune_reports(folder, env.target.environment, written)
        except OSError as exc:
            log.warning("%s: cannot write incident reports: %s", cfg.name, exc)

    # -- maintenance windows ------------------------------------------------------------

    def _window(self, env: _Env, sha: str | None = None, *,
                read: bool = True) -> schedule.WindowState | None:
        """The environment's window state now; None without windows. The settings' windows
        win; else the inventory's at ``sha`` (the branch head when None), read once per
        commit (not ``read``: those of the commit last read, no Git). A commit whose
        inventory cannot be read has none: its run says why."""
        cfg = env.config
        windows: tuple[schedule.Window, ...] = tuple(cfg.windows)
        if not windows and not read:
            windows = env.windows[1] if env.windows is not None else ()
        elif not windows:
            try:
                sha = sha or source.head(cfg.repo, cfg.branch)
                if env.windows is None or env.windows[0] != sha:
                    env.windows = (sha, tuple(declared_windows(
                        cfg.repo, cfg.branch, env.target.environment, env.target.state_dir,
                        sha)))
                windows = env.windows[1]
            except (GitopsError, OSError, tarfile.TarError) as exc:
                log.warning("%s: cannot read the inventory's maintenance windows: %s",
                            cfg.name, exc)
        return schedule.window_state(windows, self.now()) if windows else None

    # -- promotion ------------------------------------------------------------------------

    def _promotion(self, env: _Env, store: Store, head: str, history: list[Any],
                   status: EnvStatus | None) -> policy.Promotion | None:
        """What ``policy.promotion`` allows ``env`` now; None without ``promote_from``. The
        branch's commits are read from the mirror once per head (fetched then)."""
        cfg = env.config
        if not cfg.promote_from:
            return None
        up = self.envs[cfg.promote_from]
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
                up.target.environment)),
            quarantined=frozenset(q.sha for q in store.quarantined(up.target.environment)),
            applied=status.applied if status is not None else None,
            by_hand=policy.pending_promotion(history)))

    def _wake_downstream(self, env: _Env, sha: str) -> None:
        """A run verified ``sha`` here: the environments promoting from this one look now
        (so a promotion waits for no poll interval)."""
        for other in self.envs.values():
            if other.config.promote_from == env.config.name:
                self._wake(other, Trigger(f"{env.config.name} verified {sha[:10]}",
                                          "watch:promotion"))

    @staticmethod
    def _waiting_upstream(store: Store, env: str, waiting: str | None) -> None:
        """Show ``Reconciling=False WaitingForPromotion`` while a revision waits for the
        upstream environment; clear it once none does."""
        row = store.environment_status(env)
        shown = row.condition("Reconciling") if row is not None else None
        if waiting is not None:
            if shown is None or shown.message != waiting:
                Daemon._condition(store, env, Condition(
                    "Reconciling", "False", promotion.WAITING, waiting))
        elif row is not None and shown is not None and shown.reason == promotion.WAITING:
            store.set_status(env, ENVIRONMENT,
                             [c for c in row.conditions if c.type != "Reconciling"])

    @staticmethod
    def _waiting(store: Store, env: str, waiting: schedule.WindowState | None) -> None:
        """Show ``Reconciling=False WaitingForWindow`` while a revision waits; clear it once
        nothing waits any more (a run replaces it anyway)."""
        row = store.environment_status(env)
        shown = row.condition("Reconciling") if row is not None else None
        if waiting is not None:
            Daemon._condition(store, env, Condition(
                "Reconciling", "False", WAITING, waiting.describe()))
        elif row is not None and shown is not None and shown.reason == WAITING:
            store.set_status(env, ENVIRONMENT,
                             [c for c in row.conditions if c.type != "Reconciling"])

    # -- helpers ---------------------------------------------------------------------------

    def _watch(self, env: _Env) -> None:
        """Trigger within a second of a commit to a local repository (watchdog)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        repo = Path(env.config.repo).expanduser().resolve()
        git_dir = repo / ".git" if (repo / ".git").is_dir() else repo
        ref = f"refs/heads/{env.config.branch}"
        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Writes only: reading the ref (our own ls-remote) must not trigger.
                if event.event_type not in ("created", "modified", "moved", "closed"):
                    return
                path = str(getattr(event, "dest_path", "") or event.src_path)
                if path.endswith(ref) or path.endswith("packed-refs"):
                    daemon.trigger(env.config.name, reason="commit to the watched repository",
                                   actor="watch")

        observer = Observer()
        observer.schedule(Handler(), str(git_dir), recursive=True)
        observer.daemon = True
        observer.start()
        self.observers.append(observer)

    def _jitter(self, seconds: float, cfg: EnvironmentConfig) -> float:
        return policy.jitter(seconds, cfg.jitter, self.rand())

    def _env(self, name: str) -> _Env:
        if name not in self.envs:
            raise UsageError(f"unknown environment {name!r}")
        return self.envs[name]

    def _store(self) -> Store:
        return open_store(self.settings)

    @staticmethod
    def _condition(store: Store, env: str, condition: Condition) -> None:
        """Set one condition of the environment, keeping the others (Ready stays as it was)."""
        row = store.environment_status(env)
        kept = [c for c in (row.conditions if row is not None else ())
                if c.type != condition.type]
        store.set_status(env, ENVIRONMENT, [*kept, condition])


def declared_windows(repo: str, branch: str, environment: str, state_dir: Path,
                     sha: str | None = None) -> list[schedule.Window]:
    """The inventory's ``settings.windows`` at ``sha`` (the fetched branch head when None);
    empty when it declares none or cannot be read (validation reports that at file:line)."""
    from pydantic import TypeAdapter, ValidationError

    from gitops.pipeline.load import read_yaml

    revision = source.fetch(repo, branch, state_dir)
    if sha is not None and sha != revision.sha:
        revision = source.revision(repo, branch, sha, state_dir)
    snap = source.snapshot(repo, revision, state_dir)
    rel = f"inventories/{environment}.yml"
    path = Path(snap.path) / rel
    if "/" in environment or not path.is_file():
        return []
    try:
        data, _ = read_yaml(path, rel, revision.ref)
    except InvalidDeclaration:
        return []
    settings = data.get("settings") if isinstance(data, dict) else None
    raw = settings.get("windows") if isinstance(settings, dict) else None
    if not raw:
        return []
    try:
        return TypeAdapter(list[schedule.Window]).validate_python(raw)
    except ValidationError:
        return []
