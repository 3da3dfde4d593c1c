"""The testinfra worker: runs every service's ``checks.py`` on every host that runs it.

Started by ``gitops.pipeline.verify`` as ``python -m gitops.workers.verify_worker`` (one process per
verify, since testinfra and pytest keep process-global state). Reads a ``DeclaredState`` as
JSON on stdin, writes one ``VerifyReport`` as JSON on stdout and one ``progress:`` line per
finished host on stderr.

A check is a function ``test_*(host, params)`` in ``deploys/<service>/checks.py``; its
asserts are rewritten the way pytest does, so a failure says what the values were. Hosts run
in parallel (``settings.parallel``), the checks of one host in order, every command of a
host in one long-lived remote shell over one SSH connection (see ``ShellBackend``), whose
ssh client is ended with the host's checks. The ssh_config is written to a private
temporary folder. Given a connection folder (the daemon keeps one, see
``gitops.pipeline.verify.SshConnections``), each host's connection is an OpenSSH control master
that outlives this worker, so the next verify (a drift check) opens a session on it instead
of a new SSH connection.

Its parts: ``verify_checks`` loads and runs the checks, ``verify_shell`` is the remote shell,
``verify_ssh`` writes the ssh_config.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra.host
from pydantic import BaseModel

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import depends
from gitops.pipeline.worker import PROGRESS_PREFIX, die_with_parent
from gitops.records import CheckResult, VerifyReport
from gitops.workers import secrets as worker_secrets
from gitops.workers.verify_checks import (
    CHECKS_FILE,
    Suite,
    describe,
    install_assertion_explanations,
    load_suites,
    run_check,
)
from gitops.workers.verify_shell import ShellBackend
from gitops.workers.verify_ssh import ssh_alias, ssh_config_text, unsafe_field

__all__ = ["HostOutcome", "Job", "Opener", "check_host", "connect", "main", "run", "run_over",
           "summary", "verify_host"]


class Job(BaseModel):
    """What the parent asks for."""

    state: DeclaredState
    control_dir: str | None = None
    """Keep each host's SSH connection here as a control master for later verifies."""


@dataclass(frozen=True)
class HostOutcome:
    host: str
    results: tuple[CheckResult, ...]
    error: str | None
    duration_s: float


def connect(alias: str, ssh_config: Path, connect_timeout: int) -> Any:
    """A testinfra Host for ``alias`` whose commands all run in one remote shell."""
    backend = ShellBackend(alias, ssh_config=str(ssh_config), timeout=connect_timeout)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


def verify_host(
    declared: DeclaredHost, alias: str, ssh_config: Path, suites: Mapping[str, Suite],
    requires: Mapping[str, Sequence[str]] | None = None,
) -> HostOutcome:
    """``check_host`` over an SSH connection of its own (``alias`` in ``ssh_config``)."""
    return check_host(declared, lambda: connect(alias, ssh_config, declared.ssh.connect_timeout),
                      suites, requires)


Opener = Callable[[], Any]
"""Gives a testinfra Host for one host (its backend's ``close`` ends what it opened)."""


def check_host(
    declared: DeclaredHost, open_host: Opener, suites: Mapping[str, Suite],
    requires: Mapping[str, Sequence[str]] | None = None,
) -> HostOutcome:
    """Reach the host once, then run the checks of each of its services in order; the
    checks of a service that ``requires`` one whose checks failed are not run, each such
    service recorded once as ``DependencyNotReady`` with the reason
    (``gitops.pipeline.depends``)."""
    requires = requires or {}
    start = time.monotonic()
    host = open_host()
    try:
        try:
            host.run("true")
        except Exception as exc:
            return HostOutcome(declared.name, (), describe(exc), time.monotonic() - start)
        results: list[CheckResult] = []
        why: dict[str, str] = {}  # service -> why what requires it is not run
        for service, params in declared.services.items():
            suite = suites.get(service)
            if suite is None:
                continue
            blocked = depends.not_ready(declared.name, [service], requires, why)
            if blocked:  # a requirement failed its checks: these are not run
                results += blocked
                why[service] = f"is not ready ({depends.NOT_READY})"
                continue
            first = len(results)
            if suite.error is not None:
                results.append(
                    CheckResult(
                        host=declared.name,
                        service=service,
                        check=CHECKS_FILE,
                        status="error",
                        message=suite.error,
                    )
                )
                why[service] = "failed its checks on this host (checks.py cannot be loaded)"
                continue
            available = {"host": host, "params": params}
            for name, func in suite.checks:
                results.append(run_check(declared.name, suite, name, func, available))
            bad = [f"{r.service}/{r.check}" for r in results[first:] if r.status != "pass"]
            if bad:
                why[service] = f"failed its checks on this host ({', '.join(bad)})"
    finally:
        host.backend.close()
    return HostOutcome(declared.name, tuple(results), None, time.monotonic() - start)


def summary(outcome: HostOutcome) -> str:
    if outcome.error is not None:
        return f"{outcome.host}: unreachable: {outcome.error.splitlines()[0]}"
    counts = {s: sum(1 for r in outcome.results if r.status == s)
              for s in ("pass", "fail", depends.NOT_READY)}
    errors = len(outcome.results) - sum(counts.values())
    waiting = counts[depends.NOT_READY]
    return (
        f"{outcome.host}: {counts['pass']} passed, {counts['fail']} failed, {errors} errors"
        + (f", {waiting} service(s) {depends.NOT_READY}" if waiting else "")
        + f" ({outcome.duration_s:.1f}s)"
    )


def run(
    state: DeclaredState,
    progress: Callable[[str], Any] = lambda _line: None,
    control_dir: str | None = None,
) -> VerifyReport:
    """Verify every host of ``state``; ``progress`` gets one line per finished host."""
    start = time.monotonic()
    aliases = {ssh_alias(h.name, i): h for i, h in enumerate(state.hosts)}
    refused: dict[str, HostOutcome] = {}
    for alias, h in list(aliases.items()):
        field = unsafe_field(h)
        if field is not None:  # never written to the ssh_config, never connected to
            del aliases[alias]
            refused[h.name] = HostOutcome(h.name, (), f"refused: {field} is not safe to "
                                          "write to an ssh_config", 0.0)
            progress(summary(refused[h.name]))
    with tempfile.TemporaryDirectory(prefix="gitops-verify-") as tmp:
        ssh_config = Path(tmp) / "ssh_config"
        ssh_config.write_text(ssh_config_text(aliases, control_dir))

        def opener(alias: str, h: DeclaredHost) -> Opener:
            return lambda: connect(alias, ssh_config, h.ssh.connect_timeout)

        return run_over(state, {h.name: opener(alias, h) for alias, h in aliases.items()},
                        progress, refused, start)


def run_over(
    state: DeclaredState, opens: Mapping[str, Opener],
    progress: Callable[[str], Any] = lambda _line: None,
    outcomes: dict[str, HostOutcome] | None = None, start: float | None = None,
) -> VerifyReport:
    """Verify the hosts of ``state`` that ``opens`` has a way to reach, in parallel
    (``settings.parallel``); ``outcomes``: hosts already settled (refused)."""
    start = time.monotonic() if start is None else start
    install_assertion_explanations()
    suites = load_suites(state)
    outcomes = dict(outcomes or {})
    todo = [h for h in state.hosts if h.name in opens]
    workers = max(1, min(state.settings.parallel, len(todo)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        futures = {pool.submit(check_host, h, opens[h.name], suites, state.requires): h.name
                   for h in todo}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # a bug here must not lose the other hosts' results
                error = f"verify worker failed: {type(exc).__name__}: {exc}"
                outcome = HostOutcome(futures[future], (), error, 0.0)
            outcomes[outcome.host] = outcome
            progress(summary(outcome))
    ordered = [outcomes[h.name] for h in state.hosts if h.name in outcomes]
    return VerifyReport(
        results=tuple(r for o in ordered for r in o.results),
        host_errors={o.host: o.error for o in ordered if o.error is not None},
        duration_s=round(time.monotonic() - start, 3),
    )


def main() -> int:
    die_with_parent()
    job = Job.model_validate_json(sys.stdin.buffer.read())
    sys.stderr = worker_secrets.RedactingStream(sys.stderr, job.state.redact)

    def progress(line: str) -> None:
        print(f"{PROGRESS_PREFIX}{line}", file=sys.stderr, flush=True)

    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # a print() in a checks file must not
        report = run(job.state, progress, job.control_dir)  # corrupt the JSON on stdout
    out.write(worker_secrets.redact(report, job.state.redact).model_dump_json())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
