"""The typed values that cross the pipeline's stages: Revision, Plan, ApplyReport,
VerifyReport, WorkerResult and a preview's report. Pydantic models, frozen, so that the
worker boundary, the store, ``--json`` output and the API share one shape."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "NO_CHANGE_BY_FINGERPRINT",
    "ApplyReport",
    "CheckResult",
    "CheckStatus",
    "HostApply",
    "HostGuard",
    "HostPlan",
    "HostStatus",
    "OpPlan",
    "OpResult",
    "OpStatus",
    "Plan",
    "PreviewMode",
    "PreviewReport",
    "PreviewResult",
    "Removal",
    "RemovalAction",
    "Revision",
    "RunKind",
    "RunResult",
    "Snapshot",
    "VerifyReport",
    "WorkerResult",
]


class _Record(BaseModel):
    # defer_build: each schema is built at its first validation, not by every command's import
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Revision(_Record):
    """One commit of the state repository, as a run carries it."""

    sha: str
    branch: str
    author: str
    committed_at: datetime
    message: str

    @property
    def ref(self) -> str:
        """Flux's revision notation: ``main@sha1:<sha>``."""
        return f"{self.branch}@sha1:{self.sha}"

    @property
    def short(self) -> str:
        return self.sha[:10]


class Snapshot(_Record):
    """A revision materialized in a folder the reconciler owns (never the user's work tree)."""

    revision: Revision
    path: str


NO_CHANGE_BY_FINGERPRINT = "no change, by fingerprint"
"""A host's ``fingerprint`` when its operations were not run: its services' fingerprints and
every fact its last apply read are unchanged (``gitops.pipeline.factskip``)."""

OpStatus = Literal["changed", "unchanged", "failed", "skipped"]
HostStatus = Literal["ok", "failed", "unreachable", "skipped"]
CheckStatus = Literal["pass", "fail", "error", "DependencyNotReady"]
"""``DependencyNotReady``: not run, a service it requires is not ready
(``gitops.pipeline.depends``)."""


class OpPlan(_Record):
    name: str
    service: str | None
    would_change: bool
    """Whether the apply would change it; for a conditional operation, whether its
    condition would hold given the plan's other operations."""
    conditional: bool = False
    """It runs only when its ``_if=`` condition holds (a handler: restart if X changed)."""
    depends_on: tuple[str, ...] = ()
    """The planned changes that make a conditional operation run."""
    diff: str | None = None


class HostPlan(_Record):
    host: str
    ops: tuple[OpPlan, ...] = ()
    error: str | None = None
    guard_restores: tuple[str, ...] = ()
    """What a revert would restore on this host (``gitops.pipeline.guard``): the files and units the
    guarded services' changing operations write or restart, in order."""
    fingerprint: str = ""
    """``no change, by fingerprint`` (its operations were not run: ``gitops.pipeline.factskip``)
    or why the host had a full plan; empty when fingerprint skipping was not asked for."""

    @property
    def changes(self) -> int:
        """Operations the apply would change, conditional ones whose condition would hold
        included."""
        return sum(1 for op in self.ops if op.would_change)


RemovalAction = Literal["remove", "left in place", "not pruned"]
"""What a reconcile does with a service the record has on a host that the revision no
longer declares there (``gitops.pipeline.prune``): run its ``remove.py``; nothing, as the service
has
no ``remove.py`` (reported); nothing, as the environment's ``prune`` is off (reported)."""


class Removal(_Record):
    """One service taken off (or, reported, left on) one host (``gitops.pipeline.prune``)."""

    host: str
    service: str
    action: RemovalAction
    revision: str = ""
    """The revision that last applied the service on the host (``main@sha1:...``)."""

    @property
    def note(self) -> str:
        """How the CLI, the status and the page say it."""
        return {"remove": f"{self.service}: removed with its remove.py",
                "left in place": f"{self.service}: left in place (no remove.py)",
                "not pruned": f"{self.service}: not removed (prune is off)"}[self.action]


class Plan(_Record):
    hosts: tuple[HostPlan, ...]
    removals: tuple[Removal, ...] = ()
    """Services the record has on a host that this revision no longer declares there."""
    guarded: tuple[str, ...] = ()
    """The services whose applies are guarded (``gitops.pipeline.guard``)."""
    confirm_timeout: int | None = None
    """Seconds a guarded host waits for the controller before it reverts by itself."""

    @property
    def changes(self) -> int:
        return sum(h.changes for h in self.hosts)


class OpResult(_Record):
    name: str
    service: str | None
    status: OpStatus
    stderr: str = ""
    """Last lines of output of a failed operation (secrets are never passed as op args)."""


class HostGuard(_Record):
    """A guarded apply on one host (``gitops.pipeline.guard``)."""

    token: str = ""
    """The armed revert's token; empty: nothing changed, nothing was armed."""
    saved: tuple[str, ...] = ()
    """Files saved on the host before they changed."""
    units: tuple[str, ...] = ()
    """Units the apply restarted or reloaded (the revert restarts them)."""
    last_contact: str = ""
    """When the apply last talked to the host (UTC, ISO 8601)."""
    earlier: str = ""
    """What a revert left by an earlier run had restored (run at this apply's start, or
    fired by itself), recorded once."""
    result: str = ""
    """``Confirmed``, ``RevertedByHost``, ``Unreachable`` or ``Lost``; empty: not armed."""
    detail: str = ""
    """One line: what was restored, or when the host was last reached."""
    services: tuple[str, ...] = ()
    """The guarded services applied on the host."""


class HostApply(_Record):
    host: str
    status: HostStatus
    error: str | None = None
    ops: tuple[OpResult, ...] = ()
    duration_s: float = 0.0
    unchanged_services: tuple[str, ...] = ()
    """Services not applied: unchanged since the host's last apply that verified."""
    guard: HostGuard | None = None
    """The host's guarded apply, if a guarded service was applied there."""
    fingerprint: str = ""
    """``no change, by fingerprint`` (its operations were not run: ``gitops.pipeline.factskip``)
    or why the host had a full apply; empty when fingerprint skipping was not asked for."""

    @property
    def changed(self) -> int:
        return sum(1 for op in self.ops if op.status == "changed")


class ApplyReport(_Record):
    hosts: tuple[HostApply, ...]
    stopped: str | None = None
    """Why the rollout stopped early (fail percentage exceeded), if it did."""
    duration_s: float = 0.0

    @property
    def failed_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if h.status in ("failed", "unreachable")]

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts)

    @property
    def reverted_hosts(self) -> list[str]:
        """Hosts that reverted a guarded apply by themselves (``RevertedByHost``)."""
        return [h.host for h in self.hosts if h.guard and h.guard.result == "RevertedByHost"]

    @property
    def guard_lost(self) -> list[str]:
        """Hosts whose guarded apply was not confirmed (reverted, or never reached again):
        the rollout stops, whatever the fail percentage."""
        return [h.host for h in self.hosts
                if h.guard and h.guard.result in ("RevertedByHost", "Unreachable")]


class CheckResult(_Record):
    host: str
    service: str
    check: str
    status: CheckStatus
    message: str = ""
    duration_s: float = 0.0


class VerifyReport(_Record):
    results: tuple[CheckResult, ...]
    host_errors: dict[str, str] = {}
    """Hosts that could not be checked at all, with why."""
    duration_s: float = 0.0

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status != "pass"]

    @property
    def failed_hosts(self) -> list[str]:
        return sorted({r.host for r in self.failed} | set(self.host_errors))

    @property
    def ok(self) -> bool:
        return not self.failed and not self.host_errors

    def not_verified(self, applied: ApplyReport | None) -> list[str]:
        """The hosts ``applied`` without a failure on which no check ran: applied, not
        verified (their services have no ``checks.py``); not those the checks could not reach
        (``host_errors``)."""
        checked = {r.host for r in self.results} | set(self.host_errors)
        return sorted(h.host for h in (applied.hosts if applied else ())
                      if h.status == "ok" and h.host not in checked)


class WorkerResult(_Record):
    """What the pyinfra worker hands back: the plan and, unless dry, the apply report; with
    ``verified``, the checks it ran after the apply on those hosts' own connections."""

    plan: Plan
    apply: ApplyReport | None = None
    verify: VerifyReport | None = None
    verified: tuple[str, ...] = ()
    """The hosts ``verify`` covers (a host whose services have no checks has no result)."""


RunKind = Literal["reconcile", "verify", "plan", "rollback", "retry"]
RunResult = Literal["succeeded", "failed", "invalid", "interrupted", "error"]


PreviewMode = Literal["lab", "dry-run"]
PreviewResult = Literal["success", "failure", "error"]


class PreviewReport(_Record):
    """One preview of a branch (``gitops.daemon.preview``): the change's plan on top of the base,
    per host and operation with file diffs, every check's result; secrets redacted."""

    environment: str
    branch: str
    base: str
    mode: PreviewMode
    result: PreviewResult
    summary: str
    head_sha: str | None = None
    base_sha: str | None = None
    dry_reason: str = ""
    """Why the preview is a dry run (plan only, against the environment's hosts)."""
    hosts: dict[str, str] = {}
    """Environment host -> the preview host standing in for it (``lab-1``)."""
    lab: str | None = None
    unchanged: tuple[str, ...] = ()
    """Services the change leaves as the base has them: not applied again."""
    plan: Plan | None = None
    apply_failed: dict[str, str] = {}
    """Hosts whose apply failed (base or change), with why."""
    verify: VerifyReport | None = None
    problems: tuple[str, ...] = ()
    """An invalid change: every problem with its file and line."""
    stages: dict[str, float] = {}
    """Seconds per stage: lab_up, base, change, verify, teardown."""
    approval: str = ""
    """For an environment with ``require_approval``: that, merged, the change waits there
    for an operator of the owning team to approve it (said in the comment)."""
