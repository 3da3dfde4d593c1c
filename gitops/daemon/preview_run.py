"""One preview: a branch proven on disposable hosts before it merges (``gitops preview``,
and each preview of the daemon's queue), on a preview lab slot or, where labs cannot run, as
a dry run.

``run_preview`` brings up a lab shaped like the environment (its groups and services, at most
``hosts_per_group`` hosts per group, ``pick_hosts``), applies the base revision, then the
change, verifies, and takes the lab down on every path; its ``PreviewReport`` is the change's
plan on top of the base (per host and operation, with file diffs) and every check's result,
secrets redacted. Where labs cannot run (not root, no systemd-nspawn) it is a dry run: the
change's plan against the environment's own hosts, and the report says so.

Labs are named ``<prefix><slot>`` and held by a lock per slot (``slot_lock``), so a daemon
that crashed finds its labs by name at its next start and takes them down.

This module never imports pyinfra or testinfra, nor any of the previewed revision's code: a
preview's loads, plans, applies and checks run in worker processes of its sandbox
(``gitops.pipeline.sandbox``: an unprivileged user, a folder of its own, no secret of the daemon),
with the preview's own SOPS keys (``[preview] sops``), never the environment's. The change's
head must be signed as the environment's ``verify_commits`` says, before anything of it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops import lab as lab_api
from gitops.errors import GitopsError, InvalidDeclaration, RevisionNotFound, UsageError
from gitops.lab import locks
from gitops.lab.common import missing_prerequisites, prerequisites_message
from gitops.lab.hostsource import LAB
from gitops.pipeline import apply as apply_stage
from gitops.pipeline import sandbox, source
from gitops.pipeline import verify as verify_stage
from gitops.pipeline.reconcile import fingerprints
from gitops.pipeline.source import pull_ref
from gitops.records import ApplyReport, Plan, PreviewReport, PreviewResult, Revision
from gitops.settings import Settings, SigningPolicy
from gitops.workers.secrets import redact

__all__ = ["MAX_SLOTS", "PreviewRequest", "PreviewTimeout", "Say", "cli_slot", "lab_prefix",
           "pick_hosts", "run_preview", "slot_lock"]

log = logging.getLogger("gitops.daemon.preview")

Say = Callable[[str], None]
MAX_SLOTS = 9


@dataclass(frozen=True)
class PreviewRequest:
    """One preview to make: a branch (at ``head_sha`` if given) on top of ``base``."""

    environment: str
    """The daemon's environment name (the status context's ``<env>``)."""
    inventory: str
    repo: str
    branch: str
    base: str
    head_sha: str | None = None
    provider: str = "cli"
    number: int | None = None
    signing: SigningPolicy | None = None
    """The environment's ``verify_commits``: the head must be signed so to be previewed."""



def pick_hosts(groups: dict[str, list[str]], per_group: int) -> list[str]:
    """The hosts that stand for the environment: the first ``per_group`` of each group,
    in inventory order (a host in two groups counts for both)."""
    counts: dict[str, int] = {}
    picked: list[str] = []
    for host, host_groups in groups.items():
        wanted = [g for g in host_groups if counts.get(g, 0) < per_group]
        if wanted:
            picked.append(host)
            for g in host_groups:
                counts[g] = counts.get(g, 0) + 1
    return picked



def lab_prefix(settings: Settings) -> str:
    """What preview labs are named by: ``<prefix><slot>``."""
    if settings.preview.lab_prefix:
        return settings.preview.lab_prefix
    return lab_api.resolve_name(None)[:5] + "p"



class PreviewTimeout(GitopsError):
    """The preview took longer than its time limit."""


@dataclass
class _Clock:
    deadline: float
    stop: threading.Event | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def left(self, stage: str) -> float:
        """Seconds left for ``stage``; raises when the time is up or the daemon stops."""
        if self.stop is not None and self.stop.is_set():
            raise PreviewTimeout(f"the daemon stopped before {stage}")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise PreviewTimeout(f"the preview's time limit ran out before {stage}")
        return remaining

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0)
                                       + time.monotonic() - started, 2)


@contextlib.contextmanager
def slot_lock(name: str, *, wait: bool = False) -> Iterator[bool]:
    """Hold preview lab ``name`` (True) or learn that another process does (False); the
    lock file goes with the lock (``gitops lab prune`` keeps it while it is held)."""
    with locks.held(locks.slot_lock_path(name), None if wait else 0) as mine:
        yield mine


class _LabHosts:
    """``load``'s ``hosts_from`` for a preview: boots the lab at the first call, shaped like
    what the inventory declares, and maps the picked hosts to it."""

    def __init__(self, name: str, per_group: int, clock: _Clock, say: Say) -> None:
        self.name, self.per_group, self.clock, self.say = name, per_group, clock, say
        self.names: dict[str, str] = {}
        self.info: lab_api.LabInfo | None = None

    def __call__(self, groups: dict[str, list[str]],
                 packages: list[str]) -> dict[str, dict[str, Any]]:
        if self.info is None:
            picked = pick_hosts(groups, self.per_group)
            if not picked:
                return {}
            self.clock.left("the lab's boot")
            with self.clock.stage("lab_up"):
                self.say(f"preview lab {self.name}: booting {len(picked)} host(s)")
                self.info = lab_api.up(hosts=len(picked), name=self.name)
            self.names = {h: f"lab-{i}" for i, h in enumerate(picked, start=1)}
        if packages:
            lab_api.provide_packages(self.name, packages)
        found = lab_api.inventory_hosts(self.name, list(self.names.values()))
        kept: dict[str, dict[str, Any]] = {}
        for host, lab_host in self.names.items():
            if host in groups:
                ssh = found[lab_host]["ssh"]
                assert isinstance(ssh, dict)
                kept[host] = {"address": found[lab_host]["address"], "ssh": {**ssh, "port": 22}}
        return kept


def _fetch_head(request: PreviewRequest, state_dir: Path) -> Revision:
    """The change to preview: the pull request's head as its host publishes it in the base
    repository (``pull_ref``: a pull request from a fork has no branch there, or one of the
    same name that is another line of work); at ``head_sha`` when the request names it.
    A host that does not publish the ref: the branch of that name (the commit the webhook
    named must then be in the base repository: ``RevisionNotFound`` otherwise)."""
    ref = pull_ref(request.provider, request.number)
    head: Revision | None = None
    if ref is not None:
        with contextlib.suppress(RevisionNotFound):
            head = source.fetch_ref(request.repo, ref, request.branch, state_dir)
    if head is None:
        head = source.fetch(request.repo, request.branch, state_dir)
    if request.head_sha and request.head_sha != head.sha:
        head = source.revision(request.repo, request.branch, request.head_sha, state_dir)
    return head


def run_preview(request: PreviewRequest, settings: Settings, *, lab_name: str | None,
                say: Say | None = None, timeout: float | None = None,
                stop: threading.Event | None = None) -> PreviewReport:
    """Preview ``request``: on lab ``lab_name`` (taken down on every path) or, with None,
    as a dry run against the environment's hosts. Never raises a ``GitopsError``: a failure
    is the report's ``error`` result. ``stop`` set: it ends before its next stage."""
    say = say or (lambda _: None)
    clock = _Clock(time.monotonic() + (timeout or settings.preview.timeout), stop)
    dry_reason = ""
    if lab_name is None:
        missing = missing_prerequisites()
        dry_reason = (prerequisites_message(missing).removeprefix("gitops lab: ") if missing
                      else "preview labs are not available here")
    base_fields: dict[str, Any] = {
        "environment": request.environment, "branch": request.branch, "base": request.base,
        "mode": "lab" if lab_name else "dry-run", "dry_reason": dry_reason,
        "head_sha": request.head_sha, "lab": lab_name}
    secrets: tuple[str, ...] = ()
    hosts = (_LabHosts(lab_name, settings.preview.hosts_per_group, clock, say)
             if lab_name else None)
    report: PreviewReport
    try:
        with sandbox.open_sandbox(settings, lab=LAB) as box:
            report, secrets = _preview(request, settings, hosts, clock, say, base_fields, box)
    except InvalidDeclaration as exc:
        report = PreviewReport(**base_fields, result="failure",
                               summary=f"invalid declaration: {len(exc.problems)} problem(s)",
                               problems=tuple(str(p) for p in exc.problems))
    except (GitopsError, lab_api.LabError) as exc:
        report = PreviewReport(**base_fields, result="error", summary=str(exc).splitlines()[0])
    except Exception as exc:  # a bug: said in the log, the preview still ends and reports
        log.exception("preview of %s failed unexpectedly", request.branch)
        report = PreviewReport(**base_fields, result="error",
                               summary=f"unexpected error ({type(exc).__name__}): see the log")
    finally:
        if hosts is not None and hosts.info is not None and lab_name is not None:
            with clock.stage("teardown"):  # (a boot that failed took itself down)
                try:
                    lab_api.down(lab_name)
                except lab_api.LabError as exc:  # said in the log; recover() tries again
                    log.warning("preview lab %s: teardown failed: %s", lab_name, exc)
    report = report.model_copy(update={"stages": dict(clock.timings)})
    return redact(report, secrets) if secrets else report


def _preview(request: PreviewRequest, settings: Settings, hosts: _LabHosts | None,
             clock: _Clock, say: Say, fields: dict[str, Any], box: sandbox.Sandbox
             ) -> tuple[PreviewReport, tuple[str, ...]]:
    """The stages of a preview; the report and the secrets to blank out of it. Every load,
    plan, apply and check runs in ``box``'s workers."""
    state_dir = settings.state_dir
    with clock.stage("fetch"):
        head = _fetch_head(request, state_dir)
        fields.update(head_sha=head.sha)  # also for the caller's errors
        if request.signing is not None:  # before anything of the head is read
            from gitops.pipeline import signatures

            mirror = source.mirror_path(request.repo, state_dir)
            say(f"signed by {signatures.verify_commit(mirror, head.sha, request.signing)}")
        base = source.fetch(request.repo, request.base, state_dir)
        fields.update(base_sha=base.sha)
        head_snap = box.copy(Path(source.snapshot(request.repo, head, state_dir).path), "head")
        base_snap = box.copy(Path(source.snapshot(request.repo, base, state_dir).path), "base")
    say(f"preview of {request.branch} ({head.sha[:10]}) on top of {request.base} "
        f"({base.sha[:10]})")
    confined = box.confined

    def load(snapshot: Path, revision: Revision, stand_ins: dict[str, Any] | None
             ) -> sandbox.Loaded:
        what = "the base's load" if revision is base else "the change's load"
        with clock.stage("load"):
            return box.load(snapshot, request.inventory, revision=revision.ref,
                            hosts=stand_ins, timeout=clock.left(what))

    if hosts is None:  # a dry run: the change's plan against the environment's own hosts
        state = load(head_snap, head, None).state
        with clock.stage("plan"):
            plan = apply_stage.plan(state, timeout=clock.left("the plan"), on_progress=say,
                                    confined=confined)
        failed = [h.host for h in plan.hosts if h.error]
        result: PreviewResult = "failure" if failed else "success"
        summary = (f"plan failed on {', '.join(failed)}" if failed else
                   f"dry run: {plan.changes} operation(s) would change on "
                   f"{sum(1 for h in plan.hosts if h.changes)} host(s); nothing verified")
        return (PreviewReport(**fields, result=result, summary=summary, plan=plan),
                       state.redact)
    # the change is validated first (every host, none kept): an invalid one boots no lab
    head_shape = load(head_snap, head, {})
    try:
        base_shape = load(base_snap, base, {})
        base_state = load(base_snap, base, box.stand_ins(
            hosts(base_shape.groups, base_shape.packages))).state
    except InvalidDeclaration as exc:
        raise UsageError(f"the base {request.base} ({base.sha[:10]}) is invalid "
                         f"({len(exc.problems)} problem(s)): nothing to preview on") from None
    fields["hosts"] = dict(hosts.names)
    with clock.stage("base"):
        say(f"applying the base {base.sha[:10]}")
        _, base_apply = apply_stage.apply(base_state, timeout=clock.left("the base's apply"),
                                          on_progress=say, confined=confined)
    if base_apply.failed_hosts:
        why = {h.host: h.error or "failed" for h in base_apply.hosts if h.status == "failed"}
        return (PreviewReport(
            **fields, result="error", apply_failed=why,
            summary=f"the base {request.base} does not apply on the preview lab "
                    f"({', '.join(sorted(why))}): nothing to preview on"), base_state.redact)
    state = load(head_snap, head, box.stand_ins(
        hosts(head_shape.groups, head_shape.packages))).state
    secrets = tuple(sorted(set(base_state.redact) | set(state.redact)))
    # the hosts hold the base now: only the services the change touches are applied again,
    # as the daemon's changed-only apply of a new commit does (every check still runs)
    key = os.urandom(32)
    before, after = fingerprints(base_state, key), fingerprints(state, key)
    todo = {h.name: {s for s in h.services
                     if before.get(h.name, {}).get(s) != after[h.name][s]}
            for h in state.hosts}
    fields["unchanged"] = tuple(s for s in state.service_order
                                if all(s not in todo[h.name] for h in state.hosts))
    with clock.stage("change"):
        say(f"applying the change {head.sha[:10]}")
        change = state.only_services(todo)
        plan, applied = (apply_stage.apply(change, timeout=clock.left("the change's apply"),
                                           on_progress=say, confined=confined)
                         if any(h.services for h in change.hosts)
                         else (Plan(hosts=()), ApplyReport(hosts=())))
    broken = {h.host: h.error or "failed" for h in applied.hosts if h.status == "failed"}
    if broken:
        return (PreviewReport(
            **fields, result="failure", plan=plan, apply_failed=broken,
            summary=f"apply failed on {', '.join(sorted(broken))}"), secrets)
    with clock.stage("verify"):
        checked = verify_stage.verify(state, timeout=clock.left("the checks"), on_progress=say,
                                      confined=confined)
    passed = sum(1 for r in checked.results if r.status == "pass")
    if checked.ok:
        summary = (f"{plan.changes} operation(s) changed on {len(state.hosts)} host(s), "
                   f"{passed} checks passed")
        outcome: PreviewResult = "success"
    else:
        names = sorted({f"{r.host} {r.service}/{r.check}" for r in checked.failed}
                       | {f"{h} (unreachable)" for h in checked.host_errors})
        summary = f"checks failed: {', '.join(names)}"
        outcome = "failure"
    return (PreviewReport(**fields, result=outcome, summary=summary, plan=plan,
                                 verify=checked), secrets)


@contextlib.contextmanager
def cli_slot(settings: Settings) -> Iterator[str | None]:
    """A free preview lab slot for ``gitops preview`` (held until the block ends), or None
    when labs cannot run here."""
    if missing_prerequisites():
        yield None
        return
    prefix = lab_prefix(settings)
    for slot in range(MAX_SLOTS):
        name = f"{prefix}{slot}"
        with slot_lock(name) as mine:
            if mine:
                if lab_api.current(name) is not None:  # left by a crashed preview
                    lab_api.down(name)
                yield name
                return
    raise UsageError(f"every preview lab {prefix}0..{prefix}{MAX_SLOTS - 1} is busy")
