"""``gitops approve``: approve the revision waiting in an environment that requires approval
(``require_approval``); through the running daemon (as the caller its token names), else in
the record, which the daemon reads at its next cycle."""

from __future__ import annotations

from pathlib import Path

import click

from gitops import freetext
from gitops.cli.client import DaemonClient
from gitops.cli.context import api_name, load_settings
from gitops.cli.options import EXIT_CODES, config_option, json_option, one_line, state_option
from gitops.cli.output import emit, fail
from gitops.cli.people import local_audit
from gitops.daemon import approval
from gitops.errors import GitopsError, UsageError

__all__ = ["approve"]


@click.command(epilog=EXIT_CODES)
@click.option("--environment", "-e", "environment", required=True,
              help="The environment: an [[environments]] entry with require_approval.")
@click.argument("sha")
@click.option("--reason", callback=one_line, required=True,
              help="Why: recorded with who approved, in the approvals and the audit trail.")
@state_option
@config_option
@json_option
def approve(environment: str, sha: str, reason: str, state_dir: Path | None,
            as_json: bool) -> None:
    """Approve the revision waiting for approval in ENVIRONMENT (SHA: it, or a prefix of 7
    or more hex digits); the daemon applies it then. A newer revision waits for its own."""
    from gitops.daemon import approving
    from gitops.record.store import open_store

    s = load_settings(environment=environment, state_dir=state_dir)
    config = next((c for c in s.environments if environment in (c.name, c.environment)), None)
    if config is None:
        fail(UsageError(f"no [[environments]] entry named {environment!r} in the settings"),
             as_json)
        return
    sha = sha.strip().lower()
    refused = approval.approval_refusal(sha, reason, required=config.require_approval,
                                        environment=config.name)
    if refused is not None:
        fail(UsageError(refused), as_json)
    try:
        answer = DaemonClient(s).ask(api_name(s), "approve",
                                     {"revision": sha, "reason": reason})
        if answer is None:  # no daemon watches it: the record is shared
            from gitops.daemon.control import who

            with open_store(s) as store:
                answer = approving.approve(store, config, sha, actor=who(), role="local",
                                           reason=reason)
            local_audit(s, "approve", config.name, target=str(answer["sha"]), reason=reason)
    except GitopsError as exc:
        fail(exc, as_json)
        return
    if as_json:
        emit(answer)
        return
    click.echo(f"{config.name}: {str(answer['sha'])[:10]} approved by "
               f"{freetext.shown(answer.get('approved_by'))}: "
               f"{freetext.shown(answer.get('reason'))}; the daemon applies it now")
