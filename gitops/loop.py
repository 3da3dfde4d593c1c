"""The daemon (``gitops run``): watch environments and reconcile them continuously.

One thread per environment waits for a trigger (a poll interval with jitter, a webhook, a
commit to a watched local repository, an operator) and coalesces them: at most one pending
reconcile per environment. A cycle with no new commit asks ``git ls-remote`` one question and
opens no SSH connection. New commits roll out in the inventory's batches; a failed rollout
rolls the failed hosts back to the revision last verified on them and quarantines the bad
commit until a newer one arrives; unreachable hosts are retried with backoff; a bad
declaration or an unsigned commit stalls the environment until a new commit. Drift checks run
the checks on an interval and, by policy, re-apply; verifies keep each host's SSH connection
open until the daemon stops (``verify.SshConnections``). This process never imports pyinfra or
testinfra: the stages run them in worker processes. Called by ``cli run``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import control, notify, source
from gitops import verify as verify_stage
from gitops.errors import GitopsError, PermanentError, UsageError
from gitops.reconcile import Outcome, Request, Target, environment_lock, run
from gitops.records import RunKind
from gitops.settings import EnvironmentConfig, Settings
from gitops.store import ENVIRONMENT, Condition, Store

log = logging.getLogger("gitops.loop")

__all__ = ["Daemon"]


@dataclass
class _Env:
    """What the daemon keeps in memory per environment; everything else is in the store."""

    config: EnvironmentConfig
    target: Target
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: tuple[str, str] | None = None
    """(reason, actor) of the reconcile asked for and not yet started."""
    next_poll: float = 0.0
    next_drift: float = 0.0
    failures: int = 0
    """Consecutive temporary failures: the backoff exponent."""
    retry_hosts: frozenset[str] | None = None
    running: str | None = None
    """What the environment's thread is doing now (for health)."""


class Daemon:
    """The reconcile loop. Implements the HTTP server's ``Controller`` protocol."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not settings.environments:
            raise UsageError("no environments to watch: add [[environments]] to the settings")
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.stop_event = threading.Event()
        self.connections = verify_stage.SshConnections()
        self.envs: dict[str, _Env] = {}
        for cfg in settings.environments:
            if cfg.name in self.envs:
                raise UsageError(f"environment {cfg.name!r} is listed twice")
            self.envs[cfg.name] = _Env(cfg, Target(
                repo=cfg.repo, branch=cfg.branch, environment=cfg.environment,
                state_dir=settings.state_dir, actor="gitops-daemon",
                connections=self.connections.path, sops=settings.sops))
        self.threads: list[threading.Thread] = []
        self.observers: list[Any] = []

    # -- the Controller protocol (HTTP API) ------------------------------------------------

    def environments(self) -> list[EnvironmentConfig]:
        return [e.config for e in self.envs.values()]

    def trigger(self, environment: str, *, reason: str, actor: str) -> bool:
        """Ask for a reconcile now; False when one is already pending (coalesced)."""
        env = self._env(environment)
        with env.lock:
            queued = env.pending is None
            if queued:
                env.pending = (reason, actor)
        env.wake.set()
        log.info("%s: trigger from %s (%s)%s", environment, actor, reason,
                 "" if queued else ", coalesced")
        return queued

    def operate(self, environment: str, action: str, *, actor: str, reason: str = "",
                revision: str | None = None) -> dict[str, Any]:
        env = self._env(environment)
        with self._store() as store:
            if action == "suspend":
                return control.suspend(store, env.target.environment, actor=actor, reason=reason)
            if action == "resume":
                result = control.resume(store, env.target.environment, actor=actor,
                                        reason=reason)
            elif action == "rollback":
                result = self._hold(store, env, revision, actor=actor, reason=reason)
            elif action == "retry":
                hosts = control.failed_hosts(store, env.target.environment)
                if not hosts:
                    raise UsageError(f"{environment}: no failed hosts to retry")
                env.retry_hosts = frozenset(hosts)
                result = {"retrying": hosts}
            else:
                raise UsageError(f"unknown action {action!r}")
        self.trigger(environment, reason=f"{action} by {actor}", actor=actor)
        return result

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stop_event.is_set() else "ok",
            "environments": {
                name: {"running": env.running, "pending": env.pending is not None,
                       "consecutive_failures": env.failures}
                for name, env in self.envs.items()
            },
        }

    def status(self) -> list[dict[str, Any]]:
        with self._store() as store:
            rows = store.status()
            for row in rows:
                if row["host"] == ENVIRONMENT:
                    row["controls"] = store.controls(row["environment"])
                    row["quarantined"] = [q["sha"] for q in store.quarantined(row["environment"])]
            return rows

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start one thread per environment (and the local-repository watchers)."""
        for gone in verify_stage.SshConnections.prune():
            log.info("removed the SSH connection folder of a stopped daemon: %s", gone)
        with self._store() as store:
            for env in self.envs.values():
                with environment_lock(env.target, "recover"):
                    for run_id in store.recover_unfinished(env.target.environment):
                        log.warning("%s: run %d was interrupted; reconciling again",
                                    env.config.name, run_id)
        for env in self.envs.values():
            thread = threading.Thread(target=self._loop, args=(env,), daemon=True,
                                      name=f"gitops-{env.config.name}")
            thread.start()
            self.threads.append(thread)
            if env.config.watch and Path(env.config.repo).expanduser().is_dir():
                self._watch(env)

    def stop(self, timeout: float | None = None) -> None:
        """Stop: a run in progress finishes its current batch and is recorded interrupted."""
        self.stop_event.set()
        for env in self.envs.values():
            env.wake.set()
        for observer in self.observers:
            observer.stop()
        for thread in self.threads:
            thread.join(timeout)
        for observer in self.observers:
            observer.join(5)
        if all(not t.is_alive() for t in self.threads):
            self.connections.close()

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
            with env.lock:
                pending, env.pending = env.pending, None
            now = self.clock()
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
                env.next_poll = self.clock() + self._backoff(env)
            finally:
                env.running = None

    def _cycle(self, env: _Env, pending: tuple[str, str] | None) -> float:
        """One poll: returns the seconds until the next one."""
        cfg, name = env.config, env.target.environment
        try:
            head = source.head(cfg.repo, cfg.branch)
        except GitopsError as exc:
            with self._store() as store:
                self._condition(store, name, Condition("Reconciling", "False", "ArtifactFailed",
                                                       f"{exc}; retrying with backoff"))
            log.warning("%s: %s", cfg.name, exc)
            return self._backoff(env)
        with self._store() as store:
            controls = store.controls(name)
            if controls["suspended"]:
                return self._jitter(cfg.interval, cfg)
            if controls["held_sha"] and head != controls["held_head"]:
                control.release_hold(store, name, head=head)
                controls = store.controls(name)
            wanted = controls["held_sha"] or head
            last = [r for r in store.history(name, limit=20)
                    if r["kind"] in ("reconcile", "rollback", "retry")][:1]
            quarantined = {q["sha"] for q in store.quarantined(name)}
            env_status = next(iter(store.status(name)), None)
        kind: RunKind = "rollback" if controls["held_sha"] else "reconcile"
        retry = env.retry_hosts
        if wanted in quarantined and not controls["held_sha"]:
            return self._jitter(cfg.interval, cfg)  # the status already says why
        # Webhooks and the repository watcher say "look now"; an operator says "run now".
        forced = pending is not None and not pending[1].startswith(("webhook:", "watch"))
        if not forced and retry is None and not self._needs_run(wanted, last, env_status):
            return self._jitter(cfg.interval, cfg)
        self._resend_statuses(env)
        reason, actor = pending or (f"new commit {wanted[:10]}", "gitops-daemon")
        previous = (env_status or {}).get("last_applied_revision")
        if previous and not controls["held_sha"]:
            source.fetch(cfg.repo, cfg.branch, env.target.state_dir)
            old = previous.rsplit(":", 1)[-1]
            if old != wanted and source.rewrites_history(cfg.repo, env.target.state_dir, old,
                                                         wanted):
                reason += f" (force-push: {old[:10]} is not an ancestor of {wanted[:10]})"
        env.running = f"{kind} {wanted[:10]}"
        self._commit_status(env, wanted, "pending", f"{kind} started", retries=1)
        outcome = run(env.target, Request(
            kind="retry" if retry is not None else kind, reason=reason, revision=wanted,
            hosts=retry, signing=cfg.verify_commits, stop=self.stop_event, actor=actor,
            # a new commit: apply what changed; an operator's run or a retry: everything
            changed_only=kind == "reconcile" and retry is None and not forced,
        ), progress=lambda line: log.info("%s: %s", cfg.name, line))
        env.retry_hosts = None
        state, description = notify.commit_state_for(outcome)
        self._commit_status(env, wanted, state, description)
        self._report(env, outcome, was_ready=self._was_ready(env_status))
        return self._after(env, outcome, wanted)

    @staticmethod
    def _needs_run(wanted: str, last: list[dict[str, Any]],
                   env_status: dict[str, Any] | None) -> bool:
        """Whether the wanted commit still has to be reconciled (no SSH is needed to know)."""
        attempted = (env_status or {}).get("last_attempted_revision") or ""
        if env_status is not None and attempted.rsplit(":", 1)[-1] == wanted:
            stalled = any(c["type"] == "Stalled" and c["status"] == "True"
                          for c in env_status["conditions"])
            if stalled:
                return False  # permanent failure: wait for a new commit
        if not last:
            return True
        newest = last[0]
        if newest["sha"] != wanted:
            return True
        return bool(newest["result"] == "interrupted")

    def _after(self, env: _Env, outcome: Outcome, sha: str) -> float:
        """Decide what follows a run: done, rollback and quarantine, retry, or backoff."""
        cfg = env.config
        if outcome.result == "succeeded":
            env.failures = 0
            return self._jitter(cfg.interval, cfg)
        if outcome.result == "invalid" or isinstance(outcome.error, PermanentError):
            env.failures = 0
            return self._jitter(cfg.interval, cfg)  # Stalled until a new commit
        if outcome.result in ("error", "interrupted"):
            return self._backoff(env)
        unreachable = set(outcome.verify.host_errors) if outcome.verify else set()
        if outcome.apply:
            unreachable |= {h.host for h in outcome.apply.hosts if h.status == "unreachable"}
        broken = set(outcome.verify.failed_hosts if outcome.verify else []) | set(
            outcome.apply.failed_hosts if outcome.apply else [])
        broken -= unreachable
        if broken and cfg.auto_rollback and outcome.revision is not None:
            self._rollback(env, sha, sorted(broken))
        if unreachable:
            env.retry_hosts = frozenset(unreachable)
            return self._backoff(env)
        env.failures = 0
        return self._jitter(cfg.interval, cfg)

    def _rollback(self, env: _Env, bad: str, hosts: list[str]) -> None:
        """Give ``hosts`` the revision last verified on each, and quarantine ``bad``."""
        name = env.target.environment
        with self._store() as store:
            store.quarantine(name, bad, f"verification failed on {', '.join(hosts)}")
            by_revision: dict[str, list[str]] = {}
            for row in store.status(name):
                if row["host"] in hosts and row["last_verified_revision"]:
                    sha = row["last_verified_revision"].rsplit(":", 1)[-1]
                    if sha != bad:
                        by_revision.setdefault(sha, []).append(row["host"])
        log.warning("%s: quarantined %s; rolling back %s", env.config.name, bad[:10], hosts)
        self._notify(env, notify.Event(
            kind="quarantine", environment=env.config.name, sha=bad,
            summary=f"{bad[:10]} quarantined: verification failed on {', '.join(hosts)}",
            failed_hosts=tuple(hosts)))
        for sha, names in by_revision.items():
            outcome = run(env.target, Request(
                kind="rollback", revision=sha, hosts=frozenset(names),
                reason=f"automatic rollback of {bad[:10]}", actor="gitops-daemon",
                stop=self.stop_event))
            self._report(env, outcome, kind="rollback")

    def _hold(self, store: Store, env: _Env, revision: str | None, *, actor: str,
              reason: str) -> dict[str, Any]:
        return control.hold_rollback(
            store, env.target.environment, repo=env.config.repo, branch=env.config.branch,
            state_dir=env.target.state_dir, revision=revision, actor=actor, reason=reason)

    def _drift(self, env: _Env) -> None:
        """Verify the last applied revision; with ``drift: correct``, re-apply it on drift."""
        cfg, name = env.config, env.target.environment
        with self._store() as store:
            if store.controls(name)["suspended"]:
                return
            current = store.environment_status(name)
        applied = (current or {}).get("last_applied_revision")
        if not applied:
            return
        sha = applied.rsplit(":", 1)[-1]
        env.running = f"drift check {sha[:10]}"
        outcome = run(env.target, Request(kind="verify", revision=sha, reason="drift check",
                                          actor="gitops-daemon"))
        if outcome.result == "failed":
            self._report(env, outcome, kind="drift")
        if outcome.result == "failed" and cfg.drift == "correct":
            drifted = outcome.verify.failed_hosts if outcome.verify else []
            corrected = run(env.target, Request(
                kind="reconcile", revision=sha, hosts=frozenset(drifted),
                reason="drift correction", actor="gitops-daemon", stop=self.stop_event))
            self._report(env, corrected, was_ready=False)

    # -- telling people: notifications, commit statuses, incident reports ---------------

    def _report(self, env: _Env, outcome: Outcome, *, kind: notify.EventKind | None = None,
                was_ready: bool = True) -> None:
        """Notify (failure, recovery, rollback, drift, success) and rewrite incident reports."""
        if kind is None:
            if outcome.result == "succeeded":
                kind = "success" if was_ready else "recovery"
            elif outcome.result in ("failed", "invalid", "error"):
                kind = "failure"
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

    def _resend_statuses(self, env: _Env) -> None:
        if not env.config.commit_status:
            return
        with self._store() as store:
            waiting = store.undelivered(env.target.environment)
        for item in waiting:
            if item["receiver"] >= len(env.config.commit_status):
                continue
            d = notify.set_commit_status(
                env.config.commit_status[item["receiver"]], item["sha"], item["state"],
                item["description"], environment=env.config.name, index=item["receiver"],
                retries=1)
            if d.ok:
                with self._store() as store:
                    store.delivered(env.target.environment, item["receiver"], item["sha"])

    def _write_incidents(self, env: _Env) -> None:
        from gitops import incidents

        folder = self.settings.reports_dir or self.settings.state_dir / "reports"
        cfg = env.config

        def diff(old: str, new: str) -> str:
            return source.diff_summary(cfg.repo, self.settings.state_dir, old, new)

        try:
            with self._store() as store:
                incidents.write_reports(store, folder, diff_summary=diff)
        except OSError as exc:
            log.warning("%s: cannot write incident reports: %s", cfg.name, exc)

    @staticmethod
    def _was_ready(env_status: dict[str, Any] | None) -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (env_status or {}).get("conditions", [])) or env_status is None

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
        return float(seconds * (1 + cfg.jitter * (2 * self.rand() - 1)))

    def _backoff(self, env: _Env) -> float:
        """Exponential backoff with full jitter, capped: base * 2^n, then a random share."""
        env.failures += 1
        cap = min(env.config.retry_max, env.config.retry_base * 2 ** (env.failures - 1))
        return float(max(env.config.retry_base / 2, cap * self.rand()))

    def _env(self, name: str) -> _Env:
        if name not in self.envs:
            raise UsageError(f"unknown environment {name!r}")
        return self.envs[name]

    def _store(self) -> Store:
        return Store(self.settings.state_dir)

    @staticmethod
    def _condition(store: Store, env: str, condition: Condition) -> None:
        """Set one condition of the environment, keeping the others (Ready stays as it was)."""
        row = store.environment_status(env)
        kept = [Condition(**c) for c in (row or {}).get("conditions", [])
                if c["type"] != condition.type]
        store.set_status(env, ENVIRONMENT, [*kept, condition])
