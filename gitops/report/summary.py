"""What a finished run amounts to: which hosts broke, which were unreachable, and which only
fell short of the checks while nothing changed on them. Pure values and rules, shared by the
daemon's decisions (``gitops.daemon.policy``) and the delivery metrics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gitops import records
from gitops.records import RunResult

if TYPE_CHECKING:
    from gitops.pipeline.reconcile import Outcome

__all__ = ["RunSummary", "checks_only", "short_of_checks"]


@dataclass(frozen=True)
class RunSummary:
    """What ``after_run`` needs of a finished run."""

    result: RunResult
    permanent: bool = False
    revision: str | None = None
    broken: frozenset[str] = frozenset()
    """Hosts that failed to apply or verify (reachable ones)."""
    unreachable: frozenset[str] = frozenset()
    recovering: frozenset[str] = frozenset()
    """Hosts whose previous apply was cut by a crash of the controller (``journal``)."""
    apply_failed: frozenset[str] = frozenset()
    """Of ``broken``: the hosts whose apply failed (the others failed their checks)."""
    unchanged: frozenset[str] = frozenset()
    """Hosts whose apply succeeded and changed nothing (or that were not applied)."""

    @classmethod
    def of(cls, outcome: Outcome) -> RunSummary:
        from gitops.errors import PermanentError

        unreachable = set(outcome.verify.host_errors) if outcome.verify else set()
        if outcome.apply:
            unreachable |= {h.host for h in outcome.apply.hosts if h.status == "unreachable"}
        broken = set(outcome.verify.failed_hosts if outcome.verify else []) | set(
            outcome.apply.failed_hosts if outcome.apply else [])
        applied = outcome.apply.hosts if outcome.apply else ()
        return cls(result=outcome.result, permanent=isinstance(outcome.error, PermanentError),
                   revision=outcome.revision.sha if outcome.revision else None,
                   broken=frozenset(broken - unreachable), unreachable=frozenset(unreachable),
                   recovering=outcome.recovering,
                   apply_failed=frozenset(set(outcome.apply.failed_hosts if outcome.apply
                                              else []) - unreachable),
                   unchanged=frozenset(h.host for h in applied
                                       if h.status == "ok" and h.changed == 0))


    @classmethod
    def from_hosts(cls, result: RunResult, hosts: Iterable[records.HostRow]) -> RunSummary:
        """The summary of a recorded run, from its hosts' rows (``Store.host_results``)."""
        rows = list(hosts)
        unreachable = {h.host for h in rows if h.apply_status == "unreachable"}
        apply_failed = {h.host for h in rows
                        if h.apply_status not in (None, "ok", "unreachable")}
        broken = apply_failed | {h.host for h in rows if h.verify_status == "fail"}
        return cls(result=result, broken=frozenset(broken - unreachable),
                   unreachable=frozenset(unreachable), apply_failed=frozenset(apply_failed),
                   unchanged=frozenset(h.host for h in rows
                                       if h.apply_status == "ok" and h.changed == 0))


def short_of_checks(s: RunSummary) -> frozenset[str]:
    """The failed hosts whose apply succeeded and changed nothing: the commit did not change
    them, so their failed checks are not its change's (a stricter check found the hosts
    short of it, or they drifted); rolling the commit back would not change them either."""
    return (s.broken - s.apply_failed - s.recovering) & s.unchanged


def checks_only(s: RunSummary) -> bool:
    """Whether a failed run failed only because hosts fell short of the checks: every failed
    host is ``short_of_checks`` (nothing changed on it), none unreachable. Not a failed
    change: delivery metrics count it apart (``gitops.report.delivery``)."""
    return (s.result == "failed" and bool(s.broken) and not s.unreachable
            and short_of_checks(s) == s.broken)
