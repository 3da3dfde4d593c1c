"""Previews in the daemon: its queue of pull/merge request previews (``Previews``), their
runners on the preview lab slots, their record, commit statuses and comments. One preview's
run is ``preview_run``, its comment ``preview_comment``.

``gitops.daemon.loop`` owns one queue, ``gitops.web.server`` feeds it: at most ``max_labs``
previews at once, the rest waiting (a newer push of the same pull request replaces its
waiting one, ``admit``), each with a time limit; it records them in the store, sets the
commit status ``gitops/preview/<env>`` and keeps one comment per pull request, edited in
place (``render_comment``, ``gitops.daemon.notify.upsert_comment``). Labs are named
``<prefix><slot>`` and held by a lock per slot, so a daemon that crashed finds its labs by
name at its next start (``Previews.recover``) and takes them down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gitops import lab as lab_api
from gitops.daemon import notify
from gitops.daemon.preview_comment import marker, render_comment
from gitops.daemon.preview_run import (
    MAX_SLOTS,
    PreviewRequest,
    cli_slot,
    lab_prefix,
    pick_hosts,
    run_preview,
    slot_lock,
)
from gitops.errors import GitopsError
from gitops.lab.common import lab_parent, missing_prerequisites
from gitops.pipeline.source import pull_ref
from gitops.record.store import Database
from gitops.records import PreviewReport
from gitops.settings import CommitStatusConfig, EnvironmentConfig, Settings

__all__ = ["PreviewRequest", "Previews", "QueueFull", "admit", "cli_slot", "lab_prefix", "marker",
           "pick_hosts", "pull_ref", "render_comment", "run_preview", "slot_lock",
           "waits_for_approval"]

log = logging.getLogger("gitops.daemon.preview")


Admission = Literal["queued", "replaced", "full"]


def waits_for_approval(config: EnvironmentConfig) -> str:
    """What a preview says of an environment with ``require_approval``."""
    who = f"an operator of team {config.team}" if config.team else "an operator of its team"
    return (f"Once merged into `{config.branch}`, this change waits for approval on "
            f"`{config.name}` by {who} (`gitops approve`) before it is applied there.")


def admit(waiting: list[tuple[str, str, int | None]], key: tuple[str, str, int | None],
          max_queued: int) -> Admission:
    """What a new preview request does to the queue: ``replaced`` (a waiting one of the same
    pull request gives way: only the newest push is worth a lab), ``queued`` at the end, or
    ``full`` (refused). A CLI preview (no number) never replaces another."""
    if key[2] is not None and key in waiting:
        return "replaced"
    return "full" if len(waiting) >= max_queued else "queued"


class QueueFull(GitopsError):
    """Too many previews are waiting."""


@dataclass
class _Job:
    id: int
    request: PreviewRequest
    config: EnvironmentConfig

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.request.environment, self.request.provider, self.request.number)


_STATE: dict[str, notify.CommitState] = {"success": "success", "failure": "failure",
                                         "error": "error"}


class Previews:
    """The daemon's previews: a queue, ``max_labs`` runners (one lab slot each), the record,
    the commit statuses and comments. ``request`` is called from the HTTP server's threads."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        self.settings = settings
        self.sleep = sleep
        self.prefix = lab_prefix(settings)
        self.can_lab = not missing_prerequisites()
        self.waiting: list[_Job] = []
        self.running: dict[int, _Job] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.stopped = threading.Event()
        """Set by ``stop``: a running preview ends before its next stage."""
        self.threads: list[threading.Thread] = []
        self.database = Database.of(settings)

    def slot_name(self, slot: int) -> str:
        return f"{self.prefix}{slot}"

    def recover(self) -> list[str]:
        """At start-up: previews a crash cut short are marked interrupted, and every preview
        lab of this prefix no live process holds is taken down; returns the labs removed."""
        with self.database.open() as store:
            for row in store.interrupt_previews():
                log.warning("preview %d of %s was interrupted by a stop of the daemon",
                            row.id, row.branch)
        removed: list[str] = []
        if not self.can_lab:
            return removed
        for slot in range(MAX_SLOTS):
            name = self.slot_name(slot)
            if not (lab_parent() / name).is_dir():  # never used
                continue
            with slot_lock(name) as mine:
                if not mine:
                    continue
                state = lab_parent() / name  # ``lab.up`` makes pids/ first, ``down`` removes it
                if (state / "pids").is_dir() or (state / "lab.json").exists():
                    lab_api.down(name)
                    removed.append(name)
                    log.warning("preview lab %s was left by a stopped daemon: taken down", name)
        return removed

    def start(self) -> None:
        for slot in range(self.settings.preview.max_labs):
            thread = threading.Thread(target=self._runner, args=(slot,), daemon=True,
                                      name=f"gitops-preview-{slot}")
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking previews; a running one ends at its next stage (its lab goes)."""
        with self.cond:
            self.stopping = True
            self.stopped.set()
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(timeout)

    def request(self, config: EnvironmentConfig, *, provider: str, number: int,
                branch: str, base: str, head_sha: str | None) -> dict[str, Any]:
        """Queue a preview of pull request ``number``; raises ``QueueFull``."""
        request = PreviewRequest(environment=config.name, inventory=config.environment,
                                 repo=config.repo, branch=branch, base=base,
                                 head_sha=head_sha, provider=provider, number=number,
                                 signing=config.verify_commits)
        key = (config.name, provider, number)
        with self.cond:
            decision = admit([j.key for j in self.waiting], key,
                             self.settings.preview.max_queued)
            if decision == "full":
                raise QueueFull(f"{len(self.waiting)} previews are waiting already")
            with self.database.open() as store:
                preview_id = store.start_preview(config.name, provider=provider, number=number,
                                                 branch=branch, base=base, head_sha=head_sha)
                if decision == "replaced":
                    old = next(j for j in self.waiting if j.key == key)
                    self.waiting.remove(old)
                    store.finish_preview(old.id, None, state="superseded",
                                         summary=f"superseded by preview {preview_id}")
            self.waiting.append(_Job(preview_id, request, config))
            position = len(self.waiting)
            self.cond.notify()
        log.info("preview %d of %s #%d (%s) queued (%s, position %d)", preview_id, provider,
                 number, branch, decision, position)
        if head_sha:
            self._statuses(config, provider, head_sha, "pending",
                           "preview queued" if self.can_lab else "dry run queued")
        return {"preview": preview_id, "position": position, "decision": decision}

    def refuse(self, config: EnvironmentConfig, *, provider: str, head_sha: str | None,
               reason: str) -> None:
        """A pull request not previewed (``gitops.web.webhooks.why_untrusted``): its commit's
        ``gitops/preview/<env>`` status says why, in one line."""
        if head_sha:
            self._statuses(config, provider, head_sha, "error",
                           f"not previewed: {reason}")

    def _runner(self, slot: int) -> None:
        name = self.slot_name(slot)
        while True:
            with self.cond:
                while not self.waiting and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                job = self.waiting.pop(0)
                self.running[job.id] = job
            try:
                self._run(job, name)
            except Exception:  # never lose the runner: the preview is recorded as an error
                log.exception("preview %d failed unexpectedly", job.id)
            finally:
                with self.cond:
                    self.running.pop(job.id, None)

    def _run(self, job: _Job, name: str) -> None:
        lab_name: str | None = None
        with contextlib.ExitStack() as stack:
            if self.can_lab and stack.enter_context(slot_lock(name, wait=True)):
                lab_name = name
            with self.database.open() as store:
                store.preview_running(job.id, lab_name)
            if job.request.head_sha:
                self._statuses(job.config, job.request.provider, job.request.head_sha,
                               "pending", "preview running on a disposable lab" if lab_name
                               else "dry run: plan only")
            report = run_preview(job.request, self.settings, lab_name=lab_name,
                                 say=lambda line: log.info("preview %d: %s", job.id, line),
                                 stop=self.stopped)
        if job.config.require_approval:
            report = report.model_copy(update={"approval": waits_for_approval(job.config)})
        with self.database.open() as store:
            store.finish_preview(job.id, report)
        log.info("preview %d: %s (%s)", job.id, report.result, report.summary)
        self._deliver(job, report)

    def report_url(self, preview_id: int) -> str:
        base = self.settings.preview.page_url or f"http://{self.settings.listen}"
        return f"{base.rstrip('/')}/previews/{preview_id}"

    def _configs(self, config: EnvironmentConfig, provider: str) -> list[
            tuple[int, CommitStatusConfig]]:
        return [(i, c) for i, c in enumerate(config.commit_status) if c.provider == provider]

    def _statuses(self, config: EnvironmentConfig, provider: str, sha: str,
                  state: notify.CommitState, description: str) -> None:
        for index, status in self._configs(config, provider):
            context = status.model_copy(update={"context": f"gitops/preview/{config.name}"})
            notify.set_commit_status(context, sha, state, description, index=index,
                                     environment=config.name, sleep=self.sleep)

    def _deliver(self, job: _Job, report: PreviewReport) -> None:
        dry = " (dry run)" if report.mode == "dry-run" else ""
        if report.head_sha:
            self._statuses(job.config, job.request.provider, report.head_sha,
                           _STATE[report.result], f"{report.summary}{dry}")
        if job.request.number is None:
            return
        mark = marker(job.config.name)
        for index, config in self._configs(job.config, job.request.provider):
            body = render_comment(report, mark=mark, report_url=self.report_url(job.id),
                                  limit=notify.COMMENT_LIMITS[config.provider])
            notify.upsert_comment(config, job.request.number, body, mark, index=index,
                                  sleep=self.sleep)

