"""The daemon (``gitops run``): watch environments and reconcile them continuously.

One thread per environment waits for a trigger (a poll interval with jitter, a webhook, a
commit to a watched local repository, an operator) and coalesces them: at most one pending
reconcile per environment. A cycle with no new commit asks ``git ls-remote`` one question and
opens no SSH connection. New commits roll out in the inventory's batches; a failed rollout
rolls the failed hosts back to the revision last verified on them and quarantines the bad
commit until a newer one arrives (``repair``); unreachable hosts are retried with backoff; a
bad declaration or an unsigned commit stalls the environment until a new commit. Drift checks
run the checks on an interval and, by policy, re-apply; verifies keep each host's SSH
connection open until the daemon stops (``verify.SshConnections``). What to run, what follows
a run, the waits, rollback targets, drift, maintenance windows (``windows``, an injected wall
clock ``now``), promotion from another environment (``promote_from``, ``promoting``: only
what it verified on every host; a run that verifies a revision wakes the environments
promoting from it) and notifications are decided by the pure functions of ``policy``: this
module keeps the daemon's lifecycle and its cycle, which gather their inputs and carry their
decisions out through the daemon's jobs: commit statuses (``statuses``), what people are told
after a run (``reporting``), the pruning of the state folder (``pruning``), the digest
(``digest_timer``) and the watcher of local repositories (``watcher``). With the record in
PostgreSQL, several daemons share the environments: each runs only those it holds the lease
of (``leasing``), takes one over when its holder's lease expires (runs left unfinished
recorded interrupted, then a cycle from the record), and passes requests for the others to
their holder through the database. This process never imports pyinfra or testinfra: the
stages run them in worker processes. Called by ``cli run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from gitops.daemon import (
    approval,
    approving,
    control,
    fanout,
    notify,
    policy,
    promoting,
    promotion,
)
from gitops.daemon.digest_timer import DigestTimer
from gitops.daemon.envstate import EnvState, reconciling_again, set_condition
from gitops.daemon.leasing import LeaseHolder
from gitops.daemon.policy import After, CycleInput, EnvStatus, LastRun, RunSummary, Trigger
from gitops.daemon.preview import Previews
from gitops.daemon.pruning import Pruner
from gitops.daemon.repair import Repairs
from gitops.daemon.reporting import Reporter
from gitops.daemon.statuses import CommitStatuses
from gitops.daemon.watcher import watch
from gitops.daemon.windows import WAITING, declared_windows, show_waiting, window_state
from gitops.errors import GitopsError, LockHeld, Suspended, UsageError
from gitops.lab.hostsource import LAB
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import source, warm
from gitops.pipeline import verify as verify_stage
from gitops.pipeline.reconcile import Request, Target, recover_unfinished, run
from gitops.record import lease
from gitops.record.store import ENVIRONMENT, Condition, Database, NoStore, Store, open_store
from gitops.settings import EnvironmentConfig, Settings
from gitops.settings import promotion_problems as settings_promotion_problems

log = logging.getLogger("gitops.daemon.loop")

__all__ = ["WAITING", "Daemon", "EnvState", "declared_windows"]


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
        self.envs: dict[str, EnvState] = {}
        problems = settings_promotion_problems(settings.environments)
        if problems:
            raise UsageError("; ".join(f"{'.'.join(map(str, loc))}: {why}"
                                       for loc, why in problems))
        self.chain = promotion.links(settings.environments)
        upstreams = {link.name: link.upstream_environment for link in self.chain}
        for cfg in settings.environments:
            if cfg.name in self.envs:
                raise UsageError(f"environment {cfg.name!r} is listed twice")
            self.envs[cfg.name] = EnvState(cfg, Target(
                repo=cfg.repo, branch=cfg.branch, environment=cfg.environment,
                state_dir=settings.state_dir, actor=policy.DAEMON,
                connections=self.connections.path,
                keep_snapshots=settings.retention.snapshots, sops=settings.sops,
                database=Database.of(settings), prune=cfg.prune,
                upstream=upstreams.get(cfg.name), lab=LAB))
        self.threads: list[threading.Thread] = []
        self.observers: list[Any] = []
        self.previews = Previews(settings)
        """Pull/merge request previews on disposable hosts (fed by the HTTP server)."""
        self.digests = (DigestTimer(settings, self._store)
                        if settings.digest.schedule is not None else None)
        """When the next digest is due and its sending, with a schedule set."""
        self.controller = lease.controller_id(settings.controller_name)
        self.leases = (lease.Leases(Database.of(settings), self.controller, settings.lease_ttl,
                                    clock=clock) if settings.database else None)
        """The environments' leases when several controllers may share the record."""
        self.statuses = CommitStatuses(self._store)
        """The commit statuses of the runs (``commit_status``)."""
        self.reporter = Reporter(settings, self._store)
        """The log, notifications and incident reports after a run."""
        self.repairs = Repairs(self._store, self.reporter, now)
        """Rollbacks and drift checks."""
        self.pruner = Pruner(settings, self.envs, clock=clock, open_store=self._store,
                             reporter=self.reporter)
        """The pruning of the state folder after runs, at most once an hour."""
        self.holder = LeaseHolder(self.leases, self.envs, controller=self.controller,
                                  lease_ttl=settings.lease_ttl, clock=clock,
                                  open_store=self._store, statuses=self.statuses,
                                  wake=self._wake)
        """Where requests go, and taking and giving up the environments' leases."""
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
        window = None if trigger.look_only else window_state(env, self.now, read=False)
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
        return self.holder.route(env, trigger)

    def _wake(self, env: EnvState, trigger: Trigger) -> bool:
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
                result = self.repairs.hold(store, env, revision, actor=actor, reason=reason)
            elif action == "unquarantine":
                result = control.unquarantine(store, env.target.environment, revision or "",
                                              actor=actor, reason=reason)
                log.warning("%s: %s released %s from quarantine: %s", environment, actor,
                            str(result["sha"])[:10], reason)
                # a "look now": the cycle applies it if it is still the head (the release
                # is in the history, so it is theirs and in full)
                self.holder.route(env, Trigger(f"unquarantine by {actor}", "watch:unquarantine"))
                return result
            elif action == "retry":
                hosts = control.failed_hosts(store, env.target.environment)
                if not hosts:
                    raise UsageError(f"{environment}: no failed hosts to retry")
                self.holder.route(env, Trigger(f"{action} by {actor}", actor), retry=hosts)
                return {"retrying": hosts}
            else:
                raise UsageError(f"unknown action {action!r}")
        self.holder.route(env, Trigger(f"{action} by {actor}", actor))
        return result

    def rollback_plan(self, environment: str, *, revision: str | None = None) -> dict[str, Any]:
        """What a rollback of ``environment`` would change (``rollback_plan.plan``): from Git
        and the record, no host touched."""
        from gitops.daemon import rollback_plan

        env = self._env(environment)
        with open_store(self.settings, readonly=True) as store:
            return rollback_plan.plan(store, env.target, revision)

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
        self.holder.route(env, Trigger(f"promote by {actor}", actor))
        return result

    def approve(self, environment: str, *, revision: str, actor: str, role: str,
                reason: str) -> dict[str, Any]:
        """Record ``actor``'s approval of the revision waiting in ``environment`` and wake it
        to apply it; ``approving.ApprovalRefused`` for another revision, ``UsageError`` for
        a malformed request (``approving.approve``)."""
        env = self._env(environment)
        with self._store() as store:
            result = approving.approve(store, env.config, revision, actor=actor, role=role,
                                       reason=reason)
        self.holder.route(env, Trigger(f"approval by {actor}", "watch:approval"))
        return result

    def _team(self, store: Store, env: EnvState) -> str:
        """The team owning ``env``: the settings', else its inventory's (the record's)."""
        from gitops.report.teams import environment_teams

        return env.config.team or environment_teams(store).get(env.target.environment, "")

    def pipeline(self) -> list[dict[str, Any]]:
        """Which revision is where and what waits for which environment (``promotion``)."""
        try:
            reader = open_store(self.settings, readonly=True)
        except NoStore:
            return promotion.pipeline(None, self.chain)
        with reader as store:
            return promotion.pipeline(store, self.chain)

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
                    row["waiting_for_approval"] = approving.waiting(
                        store, row["environment"], [c["reason"] for c in row["conditions"]])
            return rows

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start one thread per environment (and the local-repository watchers)."""
        warm.prestart([apply_stage.WORKER, verify_stage.WORKER])  # runs pay no worker start
        for gone in verify_stage.SshConnections.prune():
            log.info("removed the SSH connection folder of a stopped daemon: %s", gone)
        owed: list[tuple[EnvState, str, notify.CommitState, str]] = []
        with self._store() as store:
            for env in self.envs.values():  # the settings' owner wins over the inventory's
                store.set_owners(env.target.environment, "settings", env.config.team)
            if self.leases is None:  # with leases, each environment recovers when taken
                for env in self.envs.values():
                    owed += [(env, sha, *end)
                             for sha, end in self.statuses.owed(env, store).items()]
        for env, sha, state, description in owed:  # "pending" must not stay its last word
            self.statuses.send(env, sha, state, description, retries=1)
        if self.fanout is not None:
            self.fanout.start()
        if self.leases is not None:
            self.leases.start(on_lost=self.holder.lost, on_request=self.holder.requested,
                              on_surplus=self.holder.surplus, environments=len(self.envs))
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
                self.observers.append(watch(
                    env.config.repo, env.config.branch,
                    partial(self.trigger, env.config.name,
                            reason="commit to the watched repository", actor="watch")))
        if self.digests is not None:
            self.digest_tick(self.now())  # learns when the first one is due
            thread = threading.Thread(target=self.digests.run, args=(self.stop_event, self.now),
                                      daemon=True, name="gitops-digest")
            thread.start()
            self.threads.append(thread)

    def digest_tick(self, now: datetime) -> list[Any] | None:
        """Send the digest if its schedule is due at ``now`` (the deliveries), else None."""
        return self.digests.tick(now) if self.digests is not None else None

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

    def _loop(self, env: EnvState) -> None:
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
                if self.holder.shed(env):
                    continue
            if self.leases is not None and not self.holder.holding(env):
                continue
            with env.lock:
                pending, env.pending = env.pending, None
            now = self.clock()
            env.target = dataclasses.replace(env.target, spread=self._spread(env))
            try:
                if pending is not None or now >= env.next_poll:
                    delay = self.cycle(env, pending)
                    env.next_poll = self.clock() + delay
                if self.clock() >= env.next_drift and not self.stop_event.is_set():
                    self.repairs.drift(env)
                    env.next_drift = self.clock() + self._jitter(env.config.drift_interval,
                                                                 env.config)
            except Exception:  # a bug must not kill the environment's loop
                log.exception("%s: cycle failed", env.config.name)
                env.failures += 1
                env.next_poll = self.clock() + policy.backoff(
                    env.failures, env.config.retry_base, env.config.retry_max, self.rand())
            finally:
                env.running = None

    def _spread(self, env: EnvState) -> fanout.Spread | None:
        """The fan-out of ``env``'s batches across the controllers' workers, else None."""
        if self.fanout is None or self.leases is None:
            return None
        name = env.target.environment
        return self.fanout.spread(name, partial(self.leases.token, name))

    def cycle(self, env: EnvState, pending: Trigger | None) -> float:
        """One poll: gather the inputs, let ``policy.next_run`` decide, carry it out; returns
        the seconds until the next poll."""
        cfg, name = env.config, env.target.environment
        try:
            head = source.head(cfg.repo, cfg.branch)
        except GitopsError as exc:
            with self._store() as store:
                set_condition(store, name, Condition("Reconciling", "False", "ArtifactFailed",
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
                promotion=(promoting.allowed(env, self.envs[cfg.promote_from], store, head,
                                             history, status) if cfg.promote_from else None),
                released=policy.Release.from_history(
                    store.since_last_apply(name, "unquarantine")))
            decision = policy.next_run(inputs)
        wanted = decision.run  # what would run inside the window: approved before it opens
        if decision.run is not None and not (pending and pending.force):
            window = window_state(env, self.now, head)  # only read when something would run
            if window is not None:
                inputs = dataclasses.replace(inputs, window=window)
                decision = policy.next_run(inputs)
        with self._store() as store:
            team = self._team(store, env) if cfg.require_approval else ""
            gated = approving.gated(store, env, decision, wanted, team)
            decision = gated.cycle
            if decision.release_hold:
                control.release_hold(store, name, head=head)
            show_waiting(store, name, None if gated.waiting else decision.waiting)
            if decision.waiting is None and cfg.promote_from and gated.waiting is None:
                promoting.show_waiting_upstream(store, name, decision.waiting_for)
            asked = cfg.require_approval and approving.show_waiting_approval(
                store, name, gated.waiting, team)
        if asked and gated.waiting is not None:  # the team hears it once per revision
            self.reporter.notify(env, notify.Event(
                kind="approval", environment=name, sha=gated.waiting,
                summary=approval.waiting_message(gated.waiting, team)))
        order = decision.run
        if order is None:
            if retry is not None and (inputs.controls.suspended or decision.waiting):
                with env.lock:  # kept for after the resume or the window's opening
                    env.retry_hosts = (env.retry_hosts or frozenset()) | retry
            log.log(logging.INFO if decision.waiting else logging.DEBUG,
                    "%s: nothing to run: %s", cfg.name, decision.why)
            return policy.until_window(policy.jitter(cfg.interval, cfg.jitter, self.rand()),
                                       decision.waiting, self.now())
        self.statuses.resend(env)
        reason = order.reason
        if order.previous:
            source.fetch(cfg.repo, cfg.branch, env.target.state_dir)
            if order.previous != order.revision and source.rewrites_history(
                    cfg.repo, env.target.state_dir, order.previous, order.revision):
                reason += (f" (force-push: {order.previous[:10]} is not an ancestor of "
                           f"{order.revision[:10]})")
        env.running = f"{order.kind} {order.revision[:10]}"
        self.statuses.send(env, order.revision, "pending", f"{order.kind} started", retries=1)
        self.statuses.owe_end(env, order.revision)
        try:
            outcome = run(env.target, Request(
                kind=order.kind, reason=reason, revision=order.revision, hosts=order.hosts,
                signing=cfg.verify_commits, stop=env.fence, actor=order.actor,
                changed_only=order.changed_only,
            ), progress=lambda line: log.info("%s: %s", cfg.name, line))
        except Exception:  # the record failed (a full disk): the commit still gets its end
            with contextlib.suppress(Exception):
                self.statuses.send(env, order.revision, "error",
                                    "reconciler error: the run could not be recorded")
            raise
        state, description = notify.commit_state_for(outcome)
        self.statuses.send(env, order.revision, state, description)
        if outcome.result == "succeeded":
            self._wake_downstream(env, order.revision)
        was_ready = inputs.status is None or inputs.status.ready
        self.reporter.report(env, outcome,
                             kind=policy.event_kind(outcome.result, was_ready=was_ready))
        after = policy.after_run(RunSummary.of(outcome), cfg, env.failures, self.rand())
        delay = self._carry_out(env, after, order.revision)
        self.pruner.prune()
        return delay

    def _recover(self, env: EnvState, store: Store) -> bool:
        """Record interrupted the runs left unfinished while no run holds the lock (a record
        a full disk refused to finish, a killed CLI run), so their commit is reconciled
        again; False when a run (a CLI's) is in progress."""
        try:
            return bool(recover_unfinished(store, env.target, reconciling_again(env)))
        except LockHeld:
            return False

    def _carry_out(self, env: EnvState, after: After, sha: str) -> float:
        """Do what ``policy.after_run`` decided; returns the seconds until the next poll."""
        env.failures = after.failures
        if after.short:
            log.warning("%s: the checks found %s short of the checks of %s (nothing changed "
                        "there in this run): not rolled back", env.config.name,
                        ", ".join(sorted(after.short)), sha[:10])
        if after.rollback:
            self.repairs.rollback(env, sha, sorted(after.rollback), after.quarantine)
        if after.retry:
            with env.lock:  # with any retry an operator asked for meanwhile
                env.retry_hosts = (env.retry_hosts or frozenset()) | after.retry
        return after.delay_s

    def _wake_downstream(self, env: EnvState, sha: str) -> None:
        """A run verified ``sha`` here: the environments promoting from this one look now
        (so a promotion waits for no poll interval)."""
        for other in self.envs.values():
            if other.config.promote_from == env.config.name:
                self._wake(other, Trigger(f"{env.config.name} verified {sha[:10]}",
                                          "watch:promotion"))

    # -- helpers ---------------------------------------------------------------------------

    def _jitter(self, seconds: float, cfg: EnvironmentConfig) -> float:
        return policy.jitter(seconds, cfg.jitter, self.rand())

    def _env(self, name: str) -> EnvState:
        if name not in self.envs:
            raise UsageError(f"unknown environment {name!r}")
        return self.envs[name]

    def _store(self) -> Store:
        return open_store(self.settings)
