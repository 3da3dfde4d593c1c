"""``gitops preview``: a branch tried on disposable hosts shaped like the environment;
its report is printed and recorded."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gitops.cli.context import api_name, load_settings
from gitops.cli.options import EXIT_CODES, config_option, json_option
from gitops.cli.output import emit
from gitops.cli.progress import live_progress
from gitops.errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from gitops.record.store import open_store

__all__ = ["preview"]


@click.command(epilog=EXIT_CODES)
@click.option("--branch", "-b", required=True, help="The branch to preview.")
@click.option("--base", help="The branch it would merge into [the environment's branch].")
@click.option("--repo", "-r", help="State repository: URL or local path [GITOPS_REPO; .]")
@click.option("--environment", "--inventory", "-e", "environment",
              help="Environment whose shape the preview lab takes [GITOPS_ENVIRONMENT; lab]")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")
@config_option
@json_option
def preview(as_json: bool, branch: str, base: str | None, **opts: Any) -> None:
    """Preview a branch on disposable hosts: a lab shaped like the environment (at most
    settings.preview.hosts_per_group hosts per group) gets the base, then the change, then
    the checks; it is taken down afterwards. Without root or systemd-nspawn: a dry run (the
    change's plan against the environment's hosts). Prints the report (Markdown) and
    records it."""
    from gitops.daemon import preview as preview_

    s = load_settings(**opts)
    signing = next((e.verify_commits for e in s.environments if e.name == api_name(s)), None)
    request = preview_.PreviewRequest(
        environment=api_name(s), inventory=s.environment, repo=s.repo, branch=branch,
        base=base or s.branch, signing=signing)
    progress = live_progress(as_json)
    with open_store(s) as store:
        preview_id = store.start_preview(request.environment, provider="cli", number=None,
                                         branch=branch, base=request.base, head_sha=None)
    with preview_.cli_slot(s) as lab_name:
        with open_store(s) as store:
            store.preview_running(preview_id, lab_name)
        report = preview_.run_preview(request, s, lab_name=lab_name, say=progress)
    progress.done()
    with open_store(s) as store:
        store.finish_preview(preview_id, report)
    if as_json:
        emit({"id": preview_id, **report.model_dump(mode="json")})
    else:
        click.echo(preview_.render_comment(report, mark=preview_.marker(request.environment)))
        click.echo(f"preview #{preview_id}: {report.result}: {report.summary}")
    sys.exit(EXIT_OK if report.result == "success" else
             EXIT_INVALID if report.problems else EXIT_FAILED)
