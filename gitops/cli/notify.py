"""``gitops notify list`` and ``gitops notify test NOTIFIER``: the configured notifiers with
their filters and latest deliveries, and one test message with what the receiver answered."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gitops.cli.context import load_settings
from gitops.cli.options import EXIT_CODES, config_option, json_option
from gitops.cli.output import emit
from gitops.errors import UsageError

__all__ = ["notify"]

_TEST = ("A test message from `gitops notify test`: nothing happened, this notifier is set "
         "up right.")


@click.group(epilog=EXIT_CODES)
def notify() -> None:
    """The notifiers: list them, or send one a test message."""


@notify.command("list", epilog=EXIT_CODES)
@config_option
@json_option
def list_(as_json: bool) -> None:
    """Every notifier (global and per environment) with its type and filters; never its
    URL (it holds a token)."""
    s = load_settings()
    rows: list[dict[str, Any]] = []
    for name, config, environment in s.all_notifiers():
        rows.append({"name": name, "type": config.type, "scope": environment or "global",
                     "events": config.events, "severities": config.severities,
                     "environments": config.environments, "teams": config.teams,
                     "signed": config.hmac_key is not None, "url": config.url.where})
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no notifiers configured")
    for r in rows:
        filters = [f"events={','.join(r['events'])}"]
        filters += [f"{k}={','.join(r[k])}" for k in ("severities", "environments", "teams")
                    if r[k] and not (k == "severities" and len(r[k]) == 3)]
        click.echo(f"{r['name']}  {r['type']}  {r['scope']}  {' '.join(filters)}"
                   f"  (url: {r['url']})")


@notify.command("test", epilog=EXIT_CODES)
@click.argument("notifier")
@config_option
@json_option
def test(notifier: str, as_json: bool) -> None:
    """Send NOTIFIER a test message and print what it answered (exit 1 when it refused
    or did not answer); its filters are not asked, nothing is recorded."""
    from gitops.daemon.notify_formats import Event
    from gitops.daemon.notify_http import Answer, Scrubber
    from gitops.daemon.notify_providers import send

    s = load_settings()
    found = {name: (config, env) for name, config, env in s.all_notifiers()}
    if notifier not in found:
        known = ", ".join(sorted(found)) or "none configured"
        raise UsageError(f"no notifier named {notifier!r} (notifiers: {known})")
    config, environment = found[notifier]
    event = Event(kind="success", environment=environment or "gitops", summary=_TEST)
    url = ""
    try:
        url = config.url.reveal()
        answer = send(config, event, page_url=s.page_url, timeout=10, retries=1,
                      sleep=lambda _: None, backoff=1, max_delay=1)
    except UsageError:
        raise
    except Exception as exc:
        answer = Answer(False, None, 0, Scrubber([url])(f"{type(exc).__name__}: {exc}"))
    assert answer is not None  # a test event every kind takes
    said = answer.data if isinstance(answer.data, str) else (
        json.dumps(answer.data)[:500] if answer.data is not None else "")
    said = Scrubber([url])(said)
    if as_json:
        emit({"notifier": notifier, "type": config.type, "ok": answer.ok,
              "status": answer.status, "answer": said, "error": answer.error})
    elif answer.ok:
        click.echo(f"{notifier} ({config.type}): delivered"
                   + (f", HTTP {answer.status}" if answer.status else "")
                   + (f": {said}" if said else ""))
    else:
        click.echo(f"{notifier} ({config.type}): not delivered: {answer.error}", err=True)
    if not answer.ok:
        sys.exit(1)
