"""The rows the store hands out: status, runs and their detail, controls, quarantine,
previews, post-mortems, leases. Frozen dataclasses with ``as_dict()`` for the JSON shape
``--json`` and the API print."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gitops.stage_values import Plan, PreviewReport, Revision

__all__ = [
    "APPLY_KINDS",
    "ActionItem",
    "CheckRow",
    "Condition",
    "ConditionType",
    "ControllerRequest",
    "Controls",
    "FinishedRun",
    "HostRow",
    "Installed",
    "InstalledState",
    "LatestCheck",
    "Lease",
    "OperationRow",
    "Owner",
    "PostmortemNote",
    "PreviewRow",
    "Quarantined",
    "Ref",
    "RunDetail",
    "RunRow",
    "ShareRow",
    "StatusRow",
    "Undelivered",
    "VerifiedRevision",
]


# -- the rows the store hands out ---------------------------------------------------------
#
# Frozen values read from the store: typed attributes for code (``row.last_applied.sha``),
# and ``as_dict()`` for JSON (the shape ``--json`` and the API print). They also read as that
# mapping (``row["kind"]``, ``row.get(...)``), so code written against the store's old dict
# rows keeps working while it moves to the attributes.


def _iso(stamp: datetime | None) -> str | None:
    return stamp.isoformat() if stamp is not None else None


class _Row:
    """``as_dict()`` plus read-only mapping access to it."""

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)

    def keys(self) -> Iterable[str]:
        return self.as_dict().keys()


@dataclass(frozen=True)
class Ref:
    """A revision as the status record names it: branch and SHA (``main@sha1:<sha>``)."""

    branch: str
    sha: str

    @classmethod
    def parse(cls, text: str) -> Ref:
        """``main@sha1:<sha>`` (or a bare SHA, branch then empty) as a ``Ref``."""
        branch, sep, sha = text.rpartition("@sha1:")
        return cls(branch, sha) if sep else cls("", text)

    @classmethod
    def of(cls, revision: Revision) -> Ref:
        return cls(revision.branch, revision.sha)

    @property
    def ref(self) -> str:
        return f"{self.branch}@sha1:{self.sha}" if self.branch else self.sha

    @property
    def short(self) -> str:
        return self.sha[:10]

    def __str__(self) -> str:
        return self.ref


ConditionType = Literal["Ready", "Reconciling", "Stalled", "Suspended", "Pruned",
                        "NotifierFailing"]


@dataclass(frozen=True)
class Condition:
    """A Flux-style condition: ``type`` is Ready, Reconciling, Stalled or Pruned (stored:
    ``Pruned`` False names services a host keeps that the revision no longer declares, see
    ``gitops.pipeline.prune``), or Suspended (derived by the store from the operator controls, never
    stored), or NotifierFailing (derived from the notifiers' deliveries, never stored)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "status": self.status, "reason": self.reason,
                "message": self.message}


@dataclass(frozen=True)
class Controls(_Row):
    """The operator controls of one environment: suspension and rollback hold (the store
    reads them, ``control.py`` writes them, ``policy``'s decisions take them as they are)."""

    environment: str = ""
    """Empty only in a value made for a decision alone (``tests/test_policy.py``)."""
    suspended: bool = False
    reason: str = ""
    actor: str = ""
    since: datetime | None = None
    held_sha: str | None = None
    held_head: str | None = None
    """A rollback hold: apply ``held_sha`` until a commit newer than ``held_head``."""
    event: int | None = None
    """The history entry of the change just made (set by ``control``'s functions only)."""

    def as_dict(self) -> dict[str, Any]:
        out = {"environment": self.environment, "suspended": int(self.suspended),
               "reason": self.reason, "actor": self.actor, "since": _iso(self.since),
               "held_sha": self.held_sha, "held_head": self.held_head}
        if self.event is not None:
            out["event"] = self.event
        return out


@dataclass(frozen=True)
class Quarantined(_Row):
    """A revision the daemon will not apply again (verification failed)."""

    environment: str
    sha: str
    reason: str
    since: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "sha": self.sha, "reason": self.reason,
                "since": self.since.isoformat()}


@dataclass(frozen=True)
class Undelivered(_Row):
    """A commit status every retry failed to deliver, sent again at the next cycle."""

    id: int
    environment: str
    receiver: int
    sha: str
    state: str
    description: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "receiver": self.receiver,
                "sha": self.sha, "state": self.state, "description": self.description,
                "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class StatusRow(_Row):
    """The status record of one environment (``host`` empty) or one host."""

    environment: str
    host: str
    conditions: tuple[Condition, ...]
    last_applied: Ref | None
    last_attempted: Ref | None
    last_verified: Ref | None
    updated_at: datetime | None
    """None for an environment no run has written yet (only its controls are known)."""
    controls: Controls | None = None
    """Environment rows only: the operator controls."""

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: ConditionType) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"

    @property
    def ready(self) -> bool:
        return self.is_true("Ready")

    @property
    def suspended(self) -> bool:
        return self.controls is not None and self.controls.suspended

    @property
    def held(self) -> bool:
        return self.controls is not None and self.controls.held_sha is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "environment": self.environment, "host": self.host,
            "conditions": [c.as_dict() for c in self.conditions],
            "last_applied_revision": self.last_applied.ref if self.last_applied else None,
            "last_attempted_revision": self.last_attempted.ref if self.last_attempted else None,
            "last_verified_revision": self.last_verified.ref if self.last_verified else None,
            "updated_at": _iso(self.updated_at),
        }
        if not self.host:
            c = self.controls
            out["suspended"] = ({"reason": c.reason, "actor": c.actor, "since": _iso(c.since)}
                                if c is not None and c.suspended else None)
            out["held"] = ({"sha": c.held_sha, "head": c.held_head, "actor": c.actor,
                            "since": _iso(c.since)}
                           if c is not None and c.held_sha else None)
        return out


APPLY_KINDS = frozenset({"reconcile", "rollback", "retry"})
"""Run kinds that apply a revision to hosts."""


@dataclass(frozen=True)
class RunRow(_Row):
    """One recorded run (or operator action, ``event``), without its per-host detail."""

    id: int
    environment: str
    kind: str
    actor: str
    reason: str
    sha: str | None
    branch: str | None
    author: str | None
    committed_at: datetime | None
    message: str | None
    started_at: datetime
    finished_at: datetime | None
    result: str | None
    error: str | None
    failed_hosts: tuple[str, ...]
    duration_s: float | None = None
    changed: int = 0
    stage_s: Mapping[str, float] = field(default_factory=dict)
    event: bool = False
    """An operator action (suspend, resume, rollback hold) recorded by ``record_event``."""

    @property
    def revision(self) -> Revision | None:
        """The commit the run fetched (None for an operator action or a run that fetched
        nothing)."""
        if self.sha is None or self.branch is None or self.committed_at is None:
            return None
        return Revision(sha=self.sha, branch=self.branch, author=self.author or "",
                        committed_at=self.committed_at, message=self.message or "")

    @property
    def real(self) -> bool:
        """A run that fetched a revision (an operator action has none)."""
        return self.branch is not None

    @property
    def request(self) -> bool:
        """An operator's request recorded by ``record_event`` (suspend, resume, rollback)."""
        return self.event

    @property
    def drift_check(self) -> bool:
        return self.kind == "verify" and self.reason == "drift check"

    @property
    def drift_correction(self) -> bool:
        return self.kind == "reconcile" and self.reason == "drift correction"

    @property
    def verified_success(self) -> bool:
        """A succeeded apply run that reached hosts."""
        return self.real and self.kind in APPLY_KINDS and self.result == "succeeded"

    @property
    def at(self) -> datetime:
        return self.finished_at or self.started_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "environment": self.environment, "kind": self.kind,
            "actor": self.actor, "reason": self.reason, "sha": self.sha,
            "branch": self.branch, "author": self.author,
            "committed_at": _iso(self.committed_at), "message": self.message,
            "started_at": self.started_at.isoformat(), "finished_at": _iso(self.finished_at),
            "duration_s": self.duration_s, "result": self.result, "error": self.error,
            "changed": self.changed, "failed_hosts": list(self.failed_hosts),
            "stage_s": dict(self.stage_s), "event": self.event,
        }


@dataclass(frozen=True)
class HostRow(_Row):
    """One host of one run: apply and verify status."""

    host: str
    apply_status: str | None
    changed: int
    error: str | None
    verify_status: str | None
    duration_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "apply_status": self.apply_status, "changed": self.changed,
                "error": self.error, "verify_status": self.verify_status,
                "duration_s": self.duration_s}


@dataclass(frozen=True)
class OperationRow(_Row):
    host: str
    service: str | None
    name: str
    status: str
    stderr: str

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "service": self.service, "name": self.name,
                "status": self.status, "stderr": self.stderr}


@dataclass(frozen=True)
class CheckRow(_Row):
    host: str
    service: str
    check: str
    status: str
    message: str
    duration_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "service": self.service, "check": self.check,
                "status": self.status, "message": self.message, "duration_s": self.duration_s}


@dataclass(frozen=True)
class RunDetail(_Row):
    """One run in full: the run, its plan and its per-host, per-operation, per-check rows."""

    run: RunRow
    plan: Plan | None
    hosts: tuple[HostRow, ...]
    operations: tuple[OperationRow, ...]
    checks: tuple[CheckRow, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**self.run.as_dict(),
                "plan": self.plan.model_dump(mode="json") if self.plan is not None else None,
                "hosts": [h.as_dict() for h in self.hosts],
                "operations": [o.as_dict() for o in self.operations],
                "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True)
class LatestCheck:
    """The newest run that checked one host: what ``gitops_service_ready`` reads."""

    environment: str
    host: str
    run_id: int
    kind: str
    verify_status: str


@dataclass(frozen=True)
class FinishedRun:
    """What the metrics' run totals need of one finished run."""

    id: int
    environment: str
    kind: str
    result: str | None
    event: bool
    stage_s: Mapping[str, float]


InstalledState = Literal["applied", "left in place", "not pruned"]
"""``applied``: declared and applied; ``left in place``: no longer declared, and its folder
has no ``remove.py``; ``not pruned``: no longer declared, and the environment's ``prune`` is
off (see ``gitops.pipeline.prune``)."""


@dataclass(frozen=True)
class Installed:
    """One service the record says a host has: what it was last applied with, from which
    revision (``Store.installed``), so it can be removed when the revision drops it."""

    host: str
    service: str
    revision: str
    params: Mapping[str, Any]
    """Its parameters when last applied, secret values blanked (``<secret>``)."""
    requires: tuple[str, ...] = ()
    """What it required then (removal runs in reverse dependency order)."""
    state: InstalledState = "applied"


@dataclass(frozen=True)
class VerifiedRevision(_Row):
    """A revision applied and verified on every host of an environment: what an environment
    that promotes from it may apply (``policy.promotion``). ``verified_at`` is the first
    time; ``upstream`` the environment it was promoted from, if any (lead time per stage)."""

    environment: str
    sha: str
    branch: str
    committed_at: datetime
    verified_at: datetime
    run_id: int
    upstream: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "sha": self.sha, "branch": self.branch,
                "committed_at": self.committed_at.isoformat(),
                "verified_at": self.verified_at.isoformat(), "run_id": self.run_id,
                "upstream": self.upstream}


@dataclass(frozen=True)
class PreviewRow(_Row):
    """A recorded preview: what was asked, its state, its report once finished."""

    id: int
    environment: str
    provider: str
    number: int | None
    branch: str
    base: str
    head_sha: str | None
    state: str
    """``queued``, ``running``, ``finished`` or ``interrupted``."""
    result: str | None
    mode: str | None
    summary: str
    lab: str | None
    created_at: datetime
    finished_at: datetime | None
    report: PreviewReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "provider": self.provider,
                "number": self.number, "branch": self.branch, "base": self.base,
                "head_sha": self.head_sha, "state": self.state, "result": self.result,
                "mode": self.mode, "summary": self.summary, "lab": self.lab,
                "created_at": self.created_at.isoformat(),
                "finished_at": _iso(self.finished_at),
                "report": self.report.model_dump(mode="json") if self.report else None}


@dataclass(frozen=True)
class Owner(_Row):
    """Who owns an environment (``service`` "") or one of its services there, as declared
    by the inventory (``source`` "inventory") or the daemon settings ("settings")."""

    environment: str
    service: str
    team: str
    source: str
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "service": self.service, "team": self.team,
                "source": self.source, "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True)
class PostmortemNote(_Row):
    """One entry people wrote into an incident's post-mortem (a section's text)."""

    id: int
    incident: str
    section: str
    text: str
    actor: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "incident": self.incident, "section": self.section,
                "text": self.text, "by": self.actor, "at": self.at.isoformat()}


@dataclass(frozen=True)
class ActionItem(_Row):
    """A follow-up action of a post-mortem: what, which team owns it, open or done."""

    id: int
    incident: str
    text: str
    team: str | None
    state: str
    """``open`` or ``done``."""
    created_by: str
    created_at: datetime
    done_by: str | None
    done_at: datetime | None
    team_by: str | None = None
    """Who gave it its current team after it was added (None: its team is the one it was
    added with)."""
    team_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "incident": self.incident, "text": self.text,
                "team": self.team, "state": self.state, "created_by": self.created_by,
                "created_at": self.created_at.isoformat(), "done_by": self.done_by,
                "done_at": _iso(self.done_at), "team_by": self.team_by,
                "team_at": _iso(self.team_at)}


@dataclass(frozen=True)
class Lease:
    """Which controller holds an environment (``gitops.record.lease``): ``expires_in`` seconds by
    the
    database's clock (negative: expired, free to take); ``token`` grows at each takeover."""

    environment: str
    holder: str
    token: int
    acquired_at: datetime
    expires_in: float

    @property
    def live(self) -> bool:
        return self.expires_in > 0

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "holder": self.holder, "token": self.token,
                "acquired_at": self.acquired_at.isoformat(),
                "expires_in": round(self.expires_in, 3), "live": self.live}


@dataclass(frozen=True)
class ControllerRequest:
    """A trigger or retry that reached a controller other than the environment's holder,
    kept in the database until the holder takes it (``gitops.record.lease``)."""

    id: int
    environment: str
    action: str
    """``trigger``, ``retry`` or ``wake`` (after a resume or a rollback hold)."""
    actor: str
    reason: str
    force: bool
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class ShareRow:
    """One share of a batch's hosts applied through another controller's worker
    (``gitops.daemon.fanout``): ``state`` is queued, running (claimed by ``worker``, attempt
    ``attempt``, the claim ``expires_in`` seconds by the database's clock), done (``result``,
    a worker's JSON result) or failed (``error``); ``token`` is the environment's lease token
    of the holder that asked for it."""

    id: int
    environment: str
    token: int
    hosts: tuple[str, ...]
    state: str
    attempt: int
    worker: str | None
    job: int | None
    expires_in: float | None
    age_s: float
    """Seconds since it was queued (or queued again)."""
    result: str | None
    error: str | None
