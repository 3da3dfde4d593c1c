"""The typed values that cross stages: Revision, Plan, ApplyReport, VerifyReport, RunRecord.

Stages take one of these and return one; workers hand them back as JSON. They are pydantic
models so that the worker boundary, the store, ``--json`` output and the API share one shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


OpStatus = Literal["changed", "unchanged", "failed", "skipped"]
HostStatus = Literal["ok", "failed", "unreachable", "skipped"]
CheckStatus = Literal["pass", "fail", "error"]


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

    @property
    def changes(self) -> int:
        """Operations the apply would change, conditional ones whose condition would hold
        included."""
        return sum(1 for op in self.ops if op.would_change)


class Plan(_Record):
    hosts: tuple[HostPlan, ...]

    @property
    def changes(self) -> int:
        return sum(h.changes for h in self.hosts)


class OpResult(_Record):
    name: str
    service: str | None
    status: OpStatus
    stderr: str = ""
    """Last lines of output of a failed operation (secrets are never passed as op args)."""


class HostApply(_Record):
    host: str
    status: HostStatus
    error: str | None = None
    ops: tuple[OpResult, ...] = ()
    duration_s: float = 0.0
    unchanged_services: tuple[str, ...] = ()
    """Services not applied: unchanged since the host's last apply that verified."""

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


class WorkerResult(_Record):
    """What the pyinfra worker hands back: the plan and, unless dry, the apply report."""

    plan: Plan
    apply: ApplyReport | None = None


RunKind = Literal["reconcile", "verify", "plan", "rollback", "retry"]
RunResult = Literal["succeeded", "failed", "invalid", "interrupted", "error"]
