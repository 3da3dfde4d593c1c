"""The notifiers' kinds: which events each hears (``wants``), the one short message every
kind carries (``short_message``), and one event sent to one notifier (``send``).

Every kind says the same thing in a few lines: what happened, where (environment, hosts),
which commit by whom, what failed (its first lines; the full check output stays on the page),
and the link to the page (the settings' ``page_url``). Requests, by ``type``:

- ``webhook``: ``POST <url>``, JSON ``gitops.notification/v1`` (``notify_formats``) with
  ``severity``, ``text`` and ``page_url`` added; header ``X-Gitops-Event: <kind>``. With
  ``hmac_key``: ``X-Gitops-Signature: sha256=<hex HMAC-SHA256 of the raw body with the key>``
  (as Flux's ``generic-hmac`` provider; compare it in constant time).
- ``slack``: its incoming-webhook blocks (``notify_formats.slack_payload``).
- ``apprise``: the title and text through Apprise (``gitops.apprise_urls``).
- ``alertmanager``: ``POST <url>/api/v2/alerts`` with one alert (Alertmanager's OpenAPI
  ``postableAlerts``): ``failure`` fires it, ``recovery`` or ``success`` sends the same labels
  with ``endsAt`` now, which resolves it (a resolved alert that never fired notifies
  nobody); other kinds are not sent. Labels ``alertname =
  GitopsRolloutFailed``, ``environment``, ``severity = critical``, ``source = gitops``.
- ``grafana``: ``POST <url>/api/annotations`` (Grafana's HTTP API, "Create Annotation"),
  ``Authorization: Bearer <token>``, body ``{"time": <ms>, "tags": ["gitops", <environment>,
  <kind>], "text": <title and text>}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC
from typing import Any

from gitops.daemon.notify_formats import USER_AGENT, Event, slack_payload
from gitops.daemon.notify_http import Answer, Scrubber, Sleep, backoff_delay, send_json
from gitops.settings import EventKind, NotifierConfig, Severity

__all__ = ["ALERT_NAME", "SEVERITY", "SIGNATURE_HEADER", "send", "short_message", "sign",
           "wants"]

SEVERITY: dict[EventKind, Severity] = {
    "failure": "critical", "rollback": "critical", "drift": "warning",
    "quarantine": "warning", "approval": "warning", "recovery": "info", "success": "info",
    "digest": "info",
}
SIGNATURE_HEADER = "X-Gitops-Signature"
ALERT_NAME = "GitopsRolloutFailed"
_WHAT: dict[EventKind, str] = {
    "failure": "Rollout failed", "recovery": "Recovered", "drift": "Drift detected",
    "rollback": "Rolled back", "quarantine": "Revision quarantined",
    "success": "Rolled out", "approval": "Approval wanted", "digest": "Digest",
}
_LINES = 3
"""Lines of what failed a message carries; the rest stays on the page."""
_LINE_MAX = 200


def wants(config: NotifierConfig, kind: EventKind, environment: str,
          team: str | None) -> bool:
    """Whether ``config`` hears ``kind`` in ``environment`` (owned by ``team``)."""
    if kind not in config.events or SEVERITY[kind] not in config.severities:
        return False
    if config.environments and environment not in config.environments:
        return False
    return not config.teams or team in config.teams


def short_message(event: Event, page_url: str | None) -> tuple[str, str]:
    """The title and the few lines of text every notifier gets for ``event``."""
    title = f"{_WHAT[event.kind]} in {event.environment}"
    if event.failed_hosts:
        title += " on " + ", ".join(sorted(event.failed_hosts))
    lines = []
    if event.sha:
        commit = f"commit {event.sha[:10]}"
        if event.message:
            commit += f" \u201c{event.message[:_LINE_MAX]}\u201d"
        if event.author:
            commit += f" by {event.author}"
        lines.append(commit)
    summary = [s.strip()[:_LINE_MAX] for s in event.summary.splitlines() if s.strip()]
    lines += summary[:_LINES]
    if len(summary) > _LINES:
        lines.append(f"(and {len(summary) - _LINES} more lines on the page)")
    if page_url:
        link = page_url.rstrip("/") + "/"
        lines.append(f"{link}#run-{event.run_id}" if event.run_id is not None else link)
    return title, "\n".join(lines)


def sign(key: str, body: bytes) -> str:
    """The ``X-Gitops-Signature`` value of ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def send(config: NotifierConfig, event: Event, *, page_url: str | None, timeout: float,
         retries: int, sleep: Sleep, backoff: float, max_delay: float) -> Answer | None:
    """Send ``event`` to one notifier; None when its kind does not take this event (an
    Alertmanager hears failures, recoveries and successes only). Raises only on a secret
    not found."""
    url = config.url.reveal()
    secrets = [url]
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    title, text = short_message(event, page_url)
    options: dict[str, Any] = {"timeout": timeout, "retries": retries, "sleep": sleep,
                               "backoff": backoff, "max_delay": max_delay}
    if config.type == "apprise":
        return _apprise(url, title, text, event.kind, Scrubber(secrets), **options)
    body: dict[str, Any] | list[Any] | bytes
    if config.type == "webhook":
        document = {**event.as_json(), "severity": SEVERITY[event.kind], "text": text,
                    "page_url": page_url}
        body = json.dumps(document).encode()
        headers["X-Gitops-Event"] = event.kind
        if config.hmac_key is not None:
            key = config.hmac_key.reveal()
            secrets.append(key)
            headers[SIGNATURE_HEADER] = sign(key, body)
    elif config.type == "slack":
        body = slack_payload(event)
        if page_url:
            body["blocks"].append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"<{text.splitlines()[-1]}|the page>"}]})
    elif config.type == "alertmanager":
        if event.kind not in ("failure", "recovery", "success"):
            return None
        body = [_alert(event, title, text, page_url)]
        url = url.rstrip("/") + "/api/v2/alerts"
    else:  # grafana
        token = config.token.reveal() if config.token else ""
        secrets.append(token)
        headers["Authorization"] = f"Bearer {token}"
        body = {"time": int(event.timestamp.timestamp() * 1000),
                "tags": ["gitops", event.environment, event.kind],
                "text": f"{title}\n{text}".strip()}
        url = url.rstrip("/") + "/api/annotations"
    if config.type == "alertmanager" and config.token is not None:
        token = config.token.reveal()
        secrets.append(token)
        headers["Authorization"] = f"Bearer {token}"
    return send_json(url, headers, body, scrub=Scrubber(secrets), **options)


def _alert(event: Event, title: str, text: str, page_url: str | None) -> dict[str, Any]:
    """One ``postableAlert``: the same labels firing and resolved, so they are one alert."""
    at = event.timestamp.astimezone(UTC).isoformat()
    alert: dict[str, Any] = {
        "labels": {"alertname": ALERT_NAME, "environment": event.environment,
                   "severity": "critical", "source": "gitops"},
        "annotations": {"summary": title, "description": text},
    }
    if page_url:
        alert["generatorURL"] = page_url
    if event.kind != "failure":
        alert["endsAt"] = at
    else:
        alert["startsAt"] = at
    return alert


def _apprise(url: str, title: str, text: str, kind: EventKind, scrub: Scrubber, *,
             timeout: float, retries: int, sleep: Sleep, backoff: float,
             max_delay: float) -> Answer:
    """Through Apprise, retried as ``send_json`` retries: no answer or a 5xx (or 429)
    again with backoff, another 4xx never."""
    from gitops.apprise_urls import send as apprise_send

    attempts = 0
    while True:
        attempts += 1
        sent = apprise_send(url, title, text, failure=SEVERITY[kind] == "critical")
        if sent.ok:
            return Answer(True, sent.status, attempts, None, scrub(sent.detail))
        error = scrub(sent.detail)
        final = sent.status is not None and 400 <= sent.status < 500 and sent.status != 429
        if final or attempts > retries:
            return Answer(False, sent.status, attempts, error)
        sleep(backoff_delay(attempts, backoff, max_delay))
