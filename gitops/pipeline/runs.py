"""What a run is given and gives back: ``Target``, ``Request`` and ``Outcome``.

A ``Target`` also carries what its caller hands the pipeline: the lab's hosts, the daemon's fan-out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    GitopsError,
    InvalidDeclaration,
    PermanentError,
)
from gitops.model import DeclaredState
from gitops.pipeline.actor import who
from gitops.pipeline.apply import Spread
from gitops.pipeline.hostsource import HostSource
from gitops.record.store import Database
from gitops.records import ApplyReport, Plan, Removal, Revision, RunKind, RunResult, VerifyReport
from gitops.settings import SigningPolicy, SopsSettings

__all__ = ["NOT_VERIFIED", "Outcome", "Progress", "Request", "Target", "journal_folder",
           "not_verified"]

Progress = Callable[[str], None]

NOT_VERIFIED = "AppliedNotVerified"
"""The Ready reason of a host (or environment) applied without a failure on which no check
ran: not verified, so never a rollback target nor promoted (``not_verified``)."""


@dataclass(frozen=True)
class Target:
    """What to reconcile: a repository (URL or path), a branch, an environment."""

    repo: str
    branch: str
    environment: str
    state_dir: Path
    actor: str = field(default_factory=lambda: who())
    vagrant_dir: Path | None = None
    connections: Path | None = None
    """Keep SSH connections of verifies here (the daemon's ``verify.SshConnections``)."""
    keep_snapshots: int = 20
    """Snapshots kept after a run besides those in use (``settings.Retention.snapshots``)."""
    sops: SopsSettings | None = None
    """The keys of the repository's SOPS-encrypted values and files."""
    database: Database | None = None
    """Where the record is (default: SQLite in ``state_dir``)."""
    prune: bool | None = None
    """Run removals (``gitops.pipeline.prune``): the daemon settings' ``prune`` of the
    environment; None: the inventory's ``settings.prune``."""
    upstream: str | None = None
    """The environment this one promotes from (recorded with its verified revisions)."""
    lab: HostSource | None = field(default=None, compare=False)
    """The hosts (and demo key) of ``settings.source: lab`` inventories: the lab's, handed in
    by the cli and the daemon (``gitops.pipeline.hostsource``); None: that source is not
    available."""
    spread: Spread | None = field(default=None, compare=False)
    """The daemon's fan-out of this environment's batches across controllers' workers
    (``gitops.pipeline.apply.Spread``); None: applied by this controller's workers."""

    def prunes(self, state: DeclaredState) -> bool:
        """Whether removals run: the daemon settings' ``prune``, else the inventory's."""
        return self.prune if self.prune is not None else state.settings.prune


def journal_folder(target: Target) -> Path:
    """Where the applies of ``target``'s environment journal their operations."""
    return target.state_dir / "journal" / target.environment


@dataclass(frozen=True)
class Outcome:
    """What a run did; ``exit_code`` is what the CLI exits with."""

    result: RunResult
    run_id: int | None = None
    revision: Revision | None = None
    plan: Plan | None = None
    apply: ApplyReport | None = None
    verify: VerifyReport | None = None
    error: GitopsError | None = None
    stopped_at: str | None = None
    """Why a rollout stopped before its last batch."""
    recovering: frozenset[str] = frozenset()
    """Hosts whose previous apply was cut by a crash of the controller (see ``journal``)."""
    removals: tuple[Removal, ...] = ()
    """Services the record has on a host that the revision no longer declares (``prune``)."""

    @property
    def exit_code(self) -> int:
        if self.result == "succeeded":
            return EXIT_OK
        if self.result == "invalid" or isinstance(self.error, PermanentError):
            return EXIT_INVALID
        return EXIT_FAILED

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "run_id": self.run_id,
            "revision": self.revision.ref if self.revision else None,
            "error": str(self.error) if self.error else None,
            "problems": [str(p) for p in self.error.problems]
            if isinstance(self.error, InvalidDeclaration) else [],
            "plan": self.plan.model_dump(mode="json") if self.plan else None,
            "apply": self.apply.model_dump(mode="json") if self.apply else None,
            "verify": self.verify.model_dump(mode="json") if self.verify else None,
            "stopped": self.stopped_at,
        }


def not_verified(outcome: Outcome) -> list[str]:
    """The hosts the run applied (without a failure) on which no check ran: applied, not
    verified (``VerifyReport.not_verified``)."""
    return outcome.verify.not_verified(outcome.apply) if outcome.verify else []


@dataclass(frozen=True)
class Request:
    """What one run should do beyond "the branch head, every host"."""

    kind: RunKind = "reconcile"
    reason: str = ""
    revision: str | None = None
    """Apply this commit instead of the branch head (rollback)."""
    hosts: frozenset[str] | None = None
    """Only these hosts (retry of the failed ones)."""
    signing: SigningPolicy | None = None
    """Refuse a commit not signed by one of these keys."""
    stop: threading.Event | None = None
    """Set to stop between batches: the run is recorded as interrupted."""
    actor: str | None = None
    changed_only: bool = False
    """Apply on each host only the services that changed since its last apply that verified
    (the daemon, for a new commit); every service is still verified."""
