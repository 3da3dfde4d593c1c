"""A run in a few log lines: its last line (``outcome_summary``, what the CLI prints after a
run and the daemon logs after each), and why a run that did not succeed failed.

The progress lines say what a run does (``batch 1/1: 0 change(s), failed: lab-1``); these
say why it failed, so the log alone is enough to act on: an invalid revision's problems (file
and line), each failed operation with the last lines of its stderr, each host's failed checks
by name, an unreachable host's reason. Secrets are already blanked out by the workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gitops import freetext
from gitops.errors import InvalidDeclaration
from gitops.records import ApplyReport, VerifyReport

if TYPE_CHECKING:
    from gitops.pipeline.runs import Outcome

__all__ = ["STDERR_LINES", "failure_lines", "outcome_summary", "problem_lines", "run_summary"]

STDERR_LINES = 3
"""Last lines of a failed operation's stderr logged (``gitops history --run N`` has them all)."""


def problem_lines(error: InvalidDeclaration, ref: str | None) -> list[str]:
    """``<ref> is invalid (N problem(s)), nothing applied:`` and each problem, one a line."""
    count = len(error.problems)
    head = f"{ref or 'the revision'} is invalid ({count} problem(s)), nothing applied:"
    return [head, *(f"  {p}" for p in error.problems)]


def _apply_lines(apply: ApplyReport) -> list[str]:
    out = []
    for h in apply.hosts:
        failed = [op for op in h.ops if op.status == "failed"]
        for op in failed:
            tail = [line.strip() for line in op.stderr.strip().splitlines()[-STDERR_LINES:]]
            out.append(f"{h.host}: {op.service or '-'}: {op.name} failed"
                       + (f": {' | '.join(tail)}" if tail else ""))
        if h.status != "ok" and h.error and not failed:
            out.append(f"{h.host}: {h.status}: {h.error}")
    return out


def _verify_lines(verify: VerifyReport) -> list[str]:
    out = []
    by_host: dict[str, list[str]] = {}
    for r in verify.failed:
        first = r.message.strip().splitlines()[0] if r.message.strip() else ""
        by_host.setdefault(r.host, []).append(
            f"{r.service}/{r.check} ({r.status}{': ' + first if first else ''})")
    for host, checks in by_host.items():
        out.append(f"{host}: checks failed: {'; '.join(checks)}")
    out += [f"{host}: not verified: {why}" for host, why in verify.host_errors.items()]
    return out


def failure_lines(*, result: str, ref: str | None, error: Exception | None,
                  apply: ApplyReport | None, verify: VerifyReport | None) -> list[str]:
    """Why a run ended ``result`` (nothing for a success)."""
    if result == "succeeded":
        return []
    if isinstance(error, InvalidDeclaration):
        return problem_lines(error, ref)
    out = [f"error: {line}" for line in str(error).splitlines()[:1]] if error else []
    out += _apply_lines(apply) if apply is not None else []
    out += _verify_lines(verify) if verify is not None else []
    return out


def run_summary(run_id: int | None, result: str, changed: int, passed: int, failed: int,
             unreachable: int = 0) -> str:
    """``run #12: succeeded, 3 changed, 42 checks passed`` (failures and hosts when any)."""
    parts = [f"{changed} changed", f"{passed} checks passed"]
    if failed:
        parts.append(f"{failed} failed")
    if unreachable:
        parts.append(f"{unreachable} host(s) unreachable")
    return f"run #{run_id if run_id is not None else '-'}: {result}, {', '.join(parts)}"


def outcome_summary(outcome: Outcome) -> str:
    """The run's last line: ``run_summary`` and the hosts it could not reach, apply or check."""
    v = outcome.verify
    if v is None and outcome.apply is None:
        return f"run #{outcome.run_id}: {outcome.result}, nothing applied"
    unchecked = v.not_verified(outcome.apply) if v else []
    hosts = outcome.apply.hosts if outcome.apply else ()
    unreachable = sorted(set(v.host_errors if v else ())
                         | {h.host for h in hosts if h.status == "unreachable"})
    not_applied = [h.host for h in hosts if h.status == "skipped"]
    return run_summary(outcome.run_id, outcome.result,
                    outcome.apply.changed if outcome.apply else 0,
                    sum(1 for r in v.results if r.status == "pass") if v else 0,
                    len(v.failed) if v else 0, len(unreachable)) + (
        f" ({freetext.some(unreachable)})" if unreachable else "") + (
        f"; not applied on {freetext.some(not_applied)}: the rollout stopped first"
        if not_applied else "") + (
        f"; applied, not verified on {freetext.some(unchecked)}: no check ran there"
        if unchecked else "")
