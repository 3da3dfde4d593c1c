"""A batch's hosts applied by several controllers' workers: the host fan-out across controllers.

Within one controller a batch is split across worker processes (``apply.shares``). With the
record in PostgreSQL, ``fanout.remote`` set and more than one controller running, the holder
of an environment's lease splits each batch across every controller's workers: each share is
a job of procrastinate's queue, in the same database; each controller runs one procrastinate
worker (``Service``, a thread of ``gitops run``) that takes shares, its own holder's and the
others', and applies each through the same apply worker process (``worker.run_worker``) as a
local share. With SQLite, one controller, or ``fanout.remote`` off, nothing changes.

Why procrastinate: it is a task queue made of PostgreSQL alone (jobs are rows, taken with
``FOR UPDATE SKIP LOCKED``, workers woken by LISTEN/NOTIFY, heartbeats, retries), so it
needs no broker beside the database the controllers already share (Celery or RQ would need a
Redis or a RabbitMQ), it speaks psycopg 3, which the store already uses, and its schema is
applied by the record's own migrations (``gitops.record.migrations``, from
``gitops.record.queue``, pinned to procrastinate 3.10).

Who decides: the holder. It keeps the lease and its fencing token; it queues the shares
(the ``shares`` table: hosts, the token it holds, state, attempt, claim) and one job each,
waits for their results, and records them only after checking the lease is still its own
with that token (``LeaseLost`` otherwise; nothing of the batch is recorded). A job carries
what a worker needs and nothing secret (``ShareJob``): the environment, the commit (every
controller has the repository: it fetches the same commit into its own snapshot; the
commit is the snapshot folder's name, ``source.snapshot``), the share's hosts and services,
the dry and journal flags, the timeout. The worker decrypts with its own settings' keys; its
result (the apply worker's, secrets already blanked) comes back through the ``shares`` row.

No host applied twice at once, none lost: a worker applies a share only once it has claimed
it (``Store.claim_share``: one attempt wins), and while the lease that asked for it is live.
It renews the claim every ``lease_ttl / 6`` seconds; it acts on it until
``min(FENCE * ttl, lease left - ttl / 3)`` after its last renewal was sent, and then kills
its apply worker (``run_worker(stop=...)``): the same margins as the leases
(``gitops.record.lease``).
A claim that was not renewed for ``lease_ttl`` (its controller died, or was cut off) is taken
back by the holder and its job retried (procrastinate's ``retry_job``); a share that no
worker started within ``fanout.start_timeout`` is applied by the holder itself. A stale
attempt's result is refused (``finish_share`` checks the attempt). The apply journal
(``gitops.pipeline.journal``) of a share is kept by the controller that applied it, so a share cut
by
its controller's death is applied again elsewhere without that journal: what the cut attempt
changed is unknown. Any attempt after the first (``run_claimed``: the job retried, or the
holder applying it itself after another controller's claim lapsed) therefore journals the
share's hosts as cut elsewhere (``journal.cut_elsewhere``): every operation there counts as
changed once for what depends on it (the restart after a configuration change runs; an
operation with nothing to do still does nothing). A first attempt forces nothing.

Used by the daemon (``loop``: ``Service``, and each environment's ``Spread``, which it hands
the pipeline in its ``Target``: ``apply.Spread``). procrastinate itself is behind
``gitops.record.queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from gitops.errors import GitopsError, TemporaryError, WorkerError
from gitops.lab.hostsource import LAB
from gitops.model import DeclaredState
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import journal, reconcile, source
from gitops.pipeline.worker import Progress, run_worker
from gitops.record import queue
from gitops.record.lease import FENCE, POLL
from gitops.record.queue import queue_schema
from gitops.record.store import Database, StoreUnavailable, database_errors
from gitops.records import ShareRow, WorkerResult
from gitops.settings import Settings

log = logging.getLogger("gitops.daemon.fanout")

__all__ = ["QUEUE", "LeaseLost", "Service", "ShareJob", "Spread", "next_steps", "queue_schema"]

QUEUE = "gitops_shares"
TASK = "gitops.daemon.fanout.apply_share"
HEARTBEAT = 5.0
"""Seconds between the queue worker's heartbeats; ``3 *`` that without one: not counted."""
_SHA = re.compile(r"^[0-9a-f]{40}$")

def _errors() -> tuple[type[Exception], ...]:
    """What a database call may raise here (read at the call: psycopg loads on first use)."""
    return (StoreUnavailable, *database_errors())


class LeaseLost(TemporaryError):
    """The holder lost the environment's lease while its shares were applied elsewhere."""


# -- the job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareJob:
    """What a job of the queue carries (its arguments, in the database): no secret."""

    share: int
    environment: str
    """The record's environment (``Target.environment``, the inventory's name)."""
    sha: str
    hosts: tuple[str, ...]
    services: dict[str, tuple[str, ...]]
    """host -> the services to apply there (a changed-only apply leaves some out)."""
    dry: bool = False
    journal: bool = False
    timeout: float = 1800

    @classmethod
    def of(cls, share: int, environment: str, sha: str, part: DeclaredState, *, dry: bool,
           journal: bool, timeout: float) -> ShareJob:
        return cls(share, environment, sha, tuple(h.name for h in part.hosts),
                   {h.name: tuple(h.services) for h in part.hosts}, dry, journal, timeout)

    def args(self) -> dict[str, Any]:
        return {"share": self.share, "environment": self.environment, "sha": self.sha,
                "hosts": list(self.hosts),
                "services": {h: list(s) for h, s in self.services.items()},
                "dry": self.dry, "journal": self.journal, "timeout": self.timeout}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ShareJob:
        return cls(int(args["share"]), str(args["environment"]), str(args["sha"]),
                   tuple(args["hosts"]), {h: tuple(s) for h, s in args["services"].items()},
                   bool(args["dry"]), bool(args["journal"]), float(args["timeout"]))

    def select(self, state: DeclaredState) -> DeclaredState:
        """This share's part of the whole ``state`` of its commit: its hosts, in the state's
        order, each with the services the holder asked for."""
        return state.limit(set(self.hosts)).only_services(
            {h: set(s) for h, s in self.services.items()})


# -- the holder's decisions (pure) -----------------------------------------------------------

Action = Literal["wait", "done", "failed", "requeue", "run here", "lost"]


def next_steps(rows: Sequence[ShareRow], *, holding: bool,
               start_timeout: float) -> list[tuple[ShareRow, Action]]:
    """What the holder does with each of its shares now: ``done``/``failed`` (finished);
    ``requeue`` a claim that expired (its worker died or was cut off: the job is retried);
    ``run here`` one that no worker started within ``start_timeout``; ``lost`` when the
    holder no longer holds the lease (it gives up); else ``wait``."""
    out: list[tuple[ShareRow, Action]] = []
    for row in rows:
        action: Action
        if row.state == "done":
            action = "done"
        elif row.state in ("failed", "abandoned"):
            action = "failed"
        elif not holding:
            action = "lost"
        elif row.state == "running" and row.expires_in is not None and row.expires_in <= 0:
            action = "requeue"
        elif row.state == "queued" and row.age_s >= start_timeout:
            action = "run here"
        else:
            action = "wait"
        out.append((row, action))
    return out


@dataclass
class Spread:
    """One environment's fan-out, for the runs of its holder (``Service.spread``)."""

    service: Service
    environment: str
    token: Callable[[], int | None]
    """The lease's fencing token while this controller holds it, else None."""

    def apply(self, state: DeclaredState, timeout: float, on_progress: Progress | None, *,
              dry: bool, journal: bool) -> list[WorkerResult] | None:
        """Each share's worker result, in share order, applied by the controllers' workers;
        None when this batch stays here (one controller, one share, not holding)."""
        sha = Path(state.root).name
        token = self.token()
        if not _SHA.match(sha) or token is None:
            return None
        service = self.service
        jobs: list[ShareJob] = []
        errors = (*_errors(), *queue.queue_errors())
        try:
            with service.database.open() as store:
                controllers = store.queue_workers(3 * HEARTBEAT)
                if controllers < 2:
                    return None
                parts = apply_stage.shares(state, controllers)
                if len(parts) < 2:
                    return None
                for part in parts:
                    share = store.add_share(self.environment, token,
                                            [h.name for h in part.hosts])
                    jobs.append(ShareJob.of(share, self.environment, sha, part, dry=dry,
                                            journal=journal, timeout=timeout))
                for job in jobs:
                    store.set_share_job(job.share, service.defer(job))
        except errors as exc:
            if not jobs:  # nothing queued: the batch is applied here
                log.warning("%s: no fan-out across controllers (%s): applying here",
                            self.environment, _line(exc))
                return None
            self._abandon([j.share for j in jobs])
            raise WorkerError(f"{self.environment}: the shares could not be queued: "
                              f"{_line(exc)}") from None
        say = on_progress or (lambda _: None)
        say(f"{len(jobs)} shares for {controllers} controllers' workers: "
            + "; ".join(f"share {j.share}: {', '.join(j.hosts)}" for j in jobs))
        try:
            return self._collect(jobs, dict(zip((j.share for j in jobs), parts, strict=True)),
                                 token, timeout, say)
        except errors as exc:
            raise WorkerError(f"{self.environment}: the shares' results could not be read: "
                              f"{_line(exc)}") from None

    def _abandon(self, ids: list[int]) -> None:
        with contextlib.suppress(*_errors()), self.service.database.open() as store:
            store.abandon_shares(ids)

    def _collect(self, jobs: list[ShareJob], parts: dict[int, DeclaredState], token: int,
                 timeout: float, say: Progress) -> list[WorkerResult]:
        service = self.service
        ids = [j.share for j in jobs]
        journaled = any(j.journal and not j.dry for j in jobs)
        deadline = time.monotonic() + timeout + service.settings.fanout.start_timeout
        seen: dict[int, tuple[str, int]] = {}
        noted: set[tuple[int, int]] = set()
        here: list[Future[None]] = []
        finished = False
        pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="share-here")
        try:
            with service.database.open() as store:
                while True:
                    rows = store.shares(ids)
                    steps = next_steps(rows, holding=self.token() == token,
                                       start_timeout=service.settings.fanout.start_timeout)
                    for row, action in steps:
                        if seen.get(row.id) != (row.state, row.attempt):
                            seen[row.id] = (row.state, row.attempt)
                            # said once per attempt after the first, the first time it is
                            # seen running or over (a short one ends between two polls)
                            again = (journaled and row.attempt > 1 and row.state != "queued"
                                     and (row.id, row.attempt) not in noted)
                            if again:
                                noted.add((row.id, row.attempt))
                            say(f"share {row.id}: {row.state}"
                                + (f" by {row.worker}" if row.worker else "")
                                + (f" (attempt {row.attempt})" if row.attempt > 1 else "")
                                + ("; an interrupted apply of it may have changed anything: "
                                   "what depends on any operation runs again" if again else ""))
                        if action == "lost":
                            raise LeaseLost(f"{self.environment}: the lease was lost while its "
                                            "shares were applied; nothing of them is recorded")
                        if action == "requeue" and store.requeue_share(row.id) is not None:
                            service.retry(row, next(j for j in jobs if j.share == row.id))
                        elif action == "run here":
                            attempt = store.requeue_share(row.id, worker=service.controller,
                                                          ttl=service.ttl)
                            if attempt is not None:
                                service.cancel(row.job)
                                job = next(j for j in jobs if j.share == row.id)
                                here.append(pool.submit(service.run_claimed, job, attempt,
                                                        service.ttl, parts[row.id]))
                    if all(action in ("done", "failed") for _, action in steps) and len(
                            steps) == len(ids):
                        break
                    if time.monotonic() > deadline:
                        raise WorkerError(f"{self.environment}: shares not finished within "
                                          f"{timeout:g} s: " + ", ".join(
                                              str(r.id) for r, a in steps if a == "wait"))
                    time.sleep(POLL)
                lease = next((x for x in store.leases() if x.environment == self.environment),
                             None)
                if (lease is None or not lease.live or lease.token != token
                        or lease.holder != service.controller):
                    raise LeaseLost(f"{self.environment}: the lease (token {token}) is no longer "
                                    "this controller's; the shares' results are not recorded")
                finished = True
        finally:
            if not finished:
                self._abandon(ids)
            pool.shutdown(wait=finished)
        failed = [r for r in rows if r.state != "done"]
        if failed:
            raise WorkerError("\n".join(
                f"share {r.id} ({', '.join(r.hosts)}): {r.error or r.state}" for r in failed))
        return [WorkerResult.model_validate_json(r.result or "") for r in rows]


# -- every controller's side: the queue's worker ----------------------------------------------


@dataclass
class Service:
    """This controller's part of the fan-out: the job queue and the worker that applies the
    shares it takes (its own holder's and the other controllers')."""

    settings: Settings
    controller: str
    database: Database = field(init=False)
    ttl: float = field(init=False)
    _app: Any = field(init=False, default=None)
    _deferrer: Any = field(init=False, default=None)
    _thread: threading.Thread | None = field(init=False, default=None)
    _loop: asyncio.AbstractEventLoop | None = field(init=False, default=None)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _started: threading.Event = field(init=False, default_factory=threading.Event)
    _defer_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.database = Database.of(self.settings)
        self.ttl = self.settings.lease_ttl

    def spread(self, environment: str, token: Callable[[], int | None]) -> Spread:
        return Spread(self, environment, token)

    # -- the queue -----------------------------------------------------------------------

    def _connection(self) -> dict[str, Any]:
        assert self.database.url is not None
        password = self.database.password.reveal() if self.database.password else None
        return {"conninfo": self.database.url, "kwargs": {
            "password": password, "application_name": "gitops-fanout",
            "connect_timeout": 10}}

    def _make_app(self) -> Any:
        concurrency = self.settings.fanout.concurrency or os.cpu_count() or 1
        return queue.worker_app(self._connection(), pool=concurrency + 2, task=TASK,
                                queue=QUEUE, body=self._task_body)

    def defer(self, job: ShareJob) -> int:
        """Queue ``job``; its procrastinate job id."""
        with self._defer_lock:
            if self._deferrer is None:
                self._deferrer = queue.deferrer(self._connection())
            return int(self._deferrer.configure_task(TASK, queue=QUEUE).defer(**job.args()))

    def retry(self, row: ShareRow, job: ShareJob) -> None:
        """The job of a share whose claim expired, due again now (a new job if procrastinate
        no longer has it as running)."""
        manager = self._deferrer.job_manager
        try:
            if row.job is not None:
                manager.retry_job_by_id(row.job, retry_at=datetime.now(UTC))
                return
        except Exception as exc:  # the job is no longer "doing": queue a new one
            log.info("share %d: job %s not retried (%s): queued again", row.id, row.job,
                     type(exc).__name__)
        with self.database.open() as store:
            store.set_share_job(row.id, self.defer(job))

    def cancel(self, job: int | None) -> None:
        """Cancel a job no worker took yet (one that a worker takes anyway finds its share
        claimed and does nothing)."""
        if job is not None and self._deferrer is not None:
            with contextlib.suppress(Exception):
                self._deferrer.job_manager.cancel_job_by_id(job)

    # -- the worker ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the queue's worker in a thread of its own (an event loop of its own)."""
        self._app = self._make_app()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="gitops-fanout-worker")
        self._thread.start()
        self._started.wait(30)

    def _serve(self) -> None:
        async def main() -> None:
            async with self._app.open_async():
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()
                self._started.set()
                await self._app.run_worker_async(
                    queues=[QUEUE], name=self.controller, install_signal_handlers=False,
                    concurrency=self.settings.fanout.concurrency or os.cpu_count() or 1,
                    fetch_job_polling_interval=2.0, delete_jobs="successful",
                    update_heartbeat_interval=HEARTBEAT,
                    stalled_worker_timeout=3 * HEARTBEAT)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("fan-out: the queue's worker stopped")
        finally:
            self._started.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker once the shares it applies are done."""
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._deferrer is not None:
            with contextlib.suppress(Exception):
                self._deferrer.close()
            self._deferrer = None

    def _task_body(self, **args: Any) -> None:
        """The queue's task: claim the share, then apply it (once), else nothing."""
        job = ShareJob.from_args(args)
        sent = time.monotonic()
        try:
            with self.database.open() as store:
                claimed = store.claim_share(job.share, self.controller, self.ttl)
        except _errors() as exc:
            log.warning("share %d: cannot claim it: %s", job.share, _line(exc))
            raise  # the job fails; the holder applies the share after start_timeout
        if claimed is None:
            log.info("share %d: taken, finished or no longer wanted: nothing to do", job.share)
            return
        attempt, left = claimed
        self.run_claimed(job, attempt, left, None, sent=sent)

    def run_claimed(self, job: ShareJob, attempt: int, left: float,
                    state: DeclaredState | None, *, sent: float | None = None) -> None:
        """Apply a share this controller claimed (``attempt``), renewing the claim; keep the
        result (or the error) in its row. ``state``: the holder's own part, else loaded.
        After ``attempt`` 1 (an earlier one was cut) its hosts are journaled as cut
        elsewhere (``journal.cut_elsewhere``) before the apply."""
        stop = threading.Event()
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, daemon=True, name="gitops-share-claim",
                                   args=(job.share, attempt, left, sent or time.monotonic(),
                                         stop, done))
        renewer.start()
        result: str | None = None
        error: str | None = None
        try:
            if state is None:
                state, folder = self._load(job)
            else:
                folder = self._journal(job.environment)
            if attempt > 1 and job.journal and not job.dry:
                # an earlier attempt was cut elsewhere, its journal with it: anything may
                # have changed, so what depends on any operation runs again, once
                for host in state.hosts:
                    journal.cut_elsewhere(folder, host.name,
                                          f"attempt {attempt - 1} of share {job.share}")
            out = run_worker(apply_stage.WORKER, apply_stage.job(
                state, dry=job.dry, diff=True, journal=folder if job.journal else None),
                timeout=job.timeout, stop=stop,
                on_progress=lambda line: log.info("%s share %d: %s", job.environment,
                                                  job.share, line))
            WorkerResult.model_validate_json(out)
            result = out
        except (GitopsError, ValidationError) as exc:
            error = str(exc)[:4000]
        except Exception as exc:  # recorded, so that the holder does not retry it forever
            log.exception("share %d failed", job.share)
            error = f"{self.controller}: {type(exc).__name__}: {_line(exc)}"[:4000]
        finally:
            done.set()
            renewer.join()
        try:
            with self.database.open() as store:
                if not store.finish_share(job.share, attempt, result=result, error=error):
                    log.warning("share %d: attempt %d was taken back; its result is dropped",
                                job.share, attempt)
        except _errors() as exc:
            log.warning("share %d: result not kept (%s): the holder applies it again",
                        job.share, _line(exc))

    def _renew(self, share: int, attempt: int, left: float, sent: float,
               stop: threading.Event, done: threading.Event) -> None:
        """Renew the claim every ``ttl / 6`` s; set ``stop`` once it can no longer be acted
        on: not renewed, or past ``min(FENCE * ttl, lease left - ttl / 3)`` after the last
        renewal was sent."""
        valid_until = sent + min(FENCE * self.ttl, left - self.ttl / 3)
        next_renewal = sent + self.ttl / 6
        store = None
        try:
            while not done.wait(POLL / 2):
                now = time.monotonic()
                if now >= valid_until:
                    log.warning("share %d: claim not renewed in time: its apply is stopped",
                                share)
                    stop.set()
                    return
                if now < next_renewal:
                    continue
                next_renewal = now + self.ttl / 6
                try:
                    store = store or self.database.open(timeout=max(1.0, self.ttl / 3))
                    left_now = store.renew_share(share, attempt, self.ttl)
                except _errors() as exc:
                    log.warning("share %d: claim renewal failed: %s", share, _line(exc))
                    with contextlib.suppress(Exception):
                        if store is not None:
                            store.close()
                    store = None
                    continue
                if left_now is None:
                    log.warning("share %d: taken back, or its holder's lease is gone: its "
                                "apply is stopped", share)
                    stop.set()
                    return
                valid_until = now + min(FENCE * self.ttl, left_now - self.ttl / 3)
        finally:
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()

    def _journal(self, environment: str) -> Path:
        return self.settings.state_dir / "journal" / environment

    def _load(self, job: ShareJob) -> tuple[DeclaredState, Path]:
        """The share's state, from this controller's own fetch of the commit, decrypted
        with its own keys; and its journal folder."""
        cfg = next((c for c in self.settings.environments if c.environment == job.environment),
                   None)
        if cfg is None:
            raise WorkerError(f"environment {job.environment!r} is not in the settings of "
                              f"controller {self.controller}")
        target = reconcile.Target(repo=cfg.repo, branch=cfg.branch,
                                  environment=cfg.environment, state_dir=self.settings.state_dir,
                                  sops=self.settings.sops, database=self.database, lab=LAB)
        source.fetch(target.repo, target.branch, target.state_dir)
        revision = source.revision(target.repo, target.branch, job.sha, target.state_dir)
        state = reconcile.load_revision(target, revision, lambda _: None)
        return job.select(state), reconcile.journal_folder(target)


def _line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
