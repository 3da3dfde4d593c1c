"""Notifications and commit statuses: what leaves the reconciler for receivers and Git host
APIs (their requests' forms in ``notify_formats``, their sending in ``notify_http``).

Two things leave the reconciler here, over HTTPS with the standard library (and Apprise):

- ``notify(configs, event)``: on failure, recovery, drift, rollback, quarantine (and, if a
  receiver asks for it, success), one message per notifier whose filters take the event, in
  its kind's form (``notify_providers``: webhook, Slack, Apprise, Alertmanager, Grafana).
- ``set_commit_status(config, sha, state, description)``: a commit status on the Git host
  (GitHub, GitLab or Gitea): ``pending`` when a run starts, ``success`` / ``failure`` /
  ``error`` when it ends.

Neither raises. Each returns ``Delivery`` values saying what happened per receiver; a failure is
logged on one line that names the receiver by index and type, never by URL. Webhook URLs and
API tokens are secrets (``SecretRef``): they are revealed only to build the request, and every
error text is scrubbed of them before it is logged or returned.

A failed commit status comes back as ``Delivery(ok=False)`` with its ``sha`` and ``state``: the
caller keeps it and sends it again at the next cycle, so a failure status is never dropped.
Pull/merge request comments (``upsert_comment``, a preview's report) are edited in place.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gitops.daemon import notify_providers as providers
from gitops.daemon.notify_formats import (
    COMMIT_STATES,
    SLACK_TEXT_MAX,
    USER_AGENT,
    CommitState,
    Event,
    api_headers,
    comment_urls,
    slack_escape,
    status_request,
    user_id,
)
from gitops.daemon.notify_http import Answer, Scrubber, Sleep, send_json
from gitops.settings import EVENT_KINDS, CommitStatusConfig, EventKind, NotifierConfig

if TYPE_CHECKING:
    from gitops.pipeline.reconcile import Outcome
    from gitops.record.store import Store

__all__ = [
    "COMMENT_LIMITS",
    "EVENT_KINDS",
    "CommitState",
    "CommitStatusConfig",
    "Delivery",
    "Event",
    "EventKind",
    "NotifierConfig",
    "commit_state_for",
    "event_from_outcome",
    "notify",
    "notify_digest",
    "record",
    "set_commit_status",
    "set_commit_statuses",
    "upsert_comment",
]

log = logging.getLogger("gitops.daemon.notify")

_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


@dataclass(frozen=True)
class Delivery:
    """What happened to one request: never holds a URL or a token."""

    receiver: str
    """A notifier's type, or ``github``, ``gitlab`` or ``gitea``."""
    index: int
    """The receiver's position in the configured list (0 for a single commit-status config)."""
    ok: bool
    status: int | None
    """The last HTTP status received, ``None`` when no answer came."""
    attempts: int
    error: str | None = None
    """Why it failed, scrubbed of secrets."""
    what: str = ""
    """The event kind, or the commit state sent."""
    sha: str | None = None
    description: str | None = None
    """For a commit status: the description sent, so that a failed one can be sent again."""
    notifier: str = ""
    """A notifier's name (``NotifierConfig.label``)."""
    environment: str = ""

    @property
    def state(self) -> str:
        """``delivered``; ``refused`` (a 4xx other than 429: sending again will not help);
        ``failed`` (no answer, a 5xx or 429, after every retry)."""
        if self.ok:
            return "delivered"
        if self.status is not None and 400 <= self.status < 500 and self.status != 429:
            return "refused"
        return "failed"

    def __str__(self) -> str:
        name = self.notifier or f"{self.receiver}[{self.index}]"
        if self.ok:
            return f"{name} {self.what}: delivered ({self.status}, {self.attempts} attempt(s))"
        return f"{name} {self.what}: failed after {self.attempts} attempt(s): {self.error}"


# -- public API ------------------------------------------------------------------------


def notify(
    configs: Sequence[NotifierConfig], event: Event, *, names: Sequence[str] | None = None,
    team: str | None = None, page_url: str | None = None, timeout: float = 10,
    retries: int = 4, sleep: Sleep = time.sleep, backoff: float = 1.0,
    max_delay: float = 60.0,
) -> list[Delivery]:
    """Send ``event`` to every notifier whose filters take it (``notify_providers.wants``;
    ``team``: the environment's owner); one ``Delivery`` per notifier asked, named by
    ``names`` (default ``<type>-<n>``).

    Never raises: a notification failure must never fail a reconcile. Each failure is logged
    once (warning), naming the receiver by name and type, never by URL.
    """
    deliveries: list[Delivery] = []
    for index, config in enumerate(configs):
        name = names[index] if names is not None else config.label(index)
        if not providers.wants(config, event.kind, event.environment, team):
            continue
        url = ""
        try:
            url = config.url.reveal()
            result = providers.send(config, event, page_url=page_url, timeout=timeout,
                                    retries=retries, sleep=sleep, backoff=backoff,
                                    max_delay=max_delay)
        except Exception as exc:  # a bad secret reference, or anything unforeseen
            text = Scrubber([url])(f"{type(exc).__name__}: {exc}")
            result = Answer(False, None, 0, text)
        if result is None:
            continue
        delivery = Delivery(config.type, index, result.ok, result.status, result.attempts,
                            result.error, what=event.kind, sha=event.sha, notifier=name,
                            environment=event.environment)
        if not delivery.ok:
            log.warning("notification %s (%s) for %s in %s not delivered: %s", name,
                        config.type, event.kind, event.environment, _last_words(delivery))
        deliveries.append(delivery)
    return deliveries


def record(store: Store, deliveries: Sequence[Delivery]) -> None:
    """Each delivery's fate in its notifier's record (``notifier_deliveries``)."""
    for d in deliveries:
        store.record_delivery(d.notifier, d.environment, d.what, d.state, d.error or "")


def notify_digest(
    configs: Sequence[NotifierConfig], body: dict[str, Any], text: str, title: str, *,
    names: Sequence[str] | None = None, timeout: float = 10, retries: int = 4,
    sleep: Sleep = time.sleep, backoff: float = 1.0, max_delay: float = 60.0,
) -> list[Delivery]:
    """Send a digest (``gitops.daemon.digest``) to every receiver in ``configs``: the JSON ``body``
    to a generic webhook (``X-Gitops-Event: digest``), ``text`` (mrkdwn, escaped here) in
    sections of at most 3000 characters to a Slack hook, ``title`` its fallback; ``title``
    and ``text`` through Apprise. Alertmanager and Grafana get no digest. Each delivery is
    named by ``names`` (default ``<type>-<n>``). Never raises."""
    deliveries: list[Delivery] = []
    for index, config in enumerate(configs):
        if config.type in ("alertmanager", "grafana"):
            continue
        name = names[index] if names is not None else config.label(index)
        url = ""
        try:
            url = config.url.reveal()
            if config.type == "apprise":
                from gitops.apprise_urls import send as apprise_send

                sent = apprise_send(url, title, text)
                scrub = Scrubber([url])
                result = Answer(sent.ok, sent.status, 1,
                                None if sent.ok else scrub(sent.detail))
                deliveries.append(Delivery(config.type, index, result.ok, result.status, 1,
                                           result.error, what="digest", notifier=name))
                continue
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            payload: dict[str, Any] | bytes = body
            if config.type == "webhook":
                headers["X-Gitops-Event"] = "digest"
                if config.hmac_key is not None:
                    payload = json.dumps(body).encode()
                    headers[providers.SIGNATURE_HEADER] = providers.sign(
                        config.hmac_key.reveal(), payload)
            else:
                chunks: list[str] = []
                for line in slack_escape(text).splitlines():
                    if chunks and len(chunks[-1]) + len(line) + 1 <= SLACK_TEXT_MAX:
                        chunks[-1] += "\n" + line
                    else:
                        chunks.append(line[:SLACK_TEXT_MAX])
                payload = {"text": slack_escape(title)[:SLACK_TEXT_MAX],
                           "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": c}}
                                      for c in chunks[:50]]}
            result = send_json(url, headers, payload, scrub=Scrubber([url]), timeout=timeout,
                               retries=retries, sleep=sleep, backoff=backoff,
                               max_delay=max_delay)
        except Exception as exc:  # a bad secret reference, or anything unforeseen
            result = Answer(False, None, 0, Scrubber([url])(f"{type(exc).__name__}: {exc}"))
        delivery = Delivery(config.type, index, result.ok, result.status, result.attempts,
                            result.error, what="digest", notifier=name)
        if not delivery.ok:
            log.warning("digest to %s (%s) not delivered: %s", name, config.type,
                        _last_words(delivery))
        deliveries.append(delivery)
    return deliveries


def set_commit_status(
    config: CommitStatusConfig, sha: str, state: CommitState, description: str, *,
    environment: str = "", index: int = 0, timeout: float = 10, retries: int = 4,
    sleep: Sleep = time.sleep, backoff: float = 1.0, max_delay: float = 60.0,
) -> Delivery:
    """Set ``state`` on commit ``sha`` at the Git host. Never raises.

    A failed delivery (``ok=False``) carries ``sha`` and ``state`` (as ``what``): the caller
    keeps it and sends it again later, so that a failure status is never dropped.
    """
    token = ""
    try:
        if state not in COMMIT_STATES:
            raise ValueError(f"unknown commit state {state!r}")
        if not _SHA.match(sha):
            raise ValueError(f"not a commit SHA: {sha[:80]!r}")
        token = config.token.reveal()
        url, headers, body = status_request(config, token, sha, state, description, environment)
        result = send_json(url, headers, body, scrub=Scrubber([token]), timeout=timeout,
                           retries=retries, sleep=sleep, backoff=backoff, max_delay=max_delay)
    except Exception as exc:
        result = Answer(False, None, 0, Scrubber([token])(f"{type(exc).__name__}: {exc}"))
    delivery = Delivery(config.provider, index, result.ok, result.status, result.attempts,
                        result.error, what=state, sha=sha, description=description)
    if not delivery.ok:
        log.warning("commit status %s for %s via %s[%d] not delivered: %s", state, sha[:12],
                    config.provider, index, _last_words(delivery))
    return delivery


def set_commit_statuses(
    configs: Sequence[CommitStatusConfig], sha: str, state: CommitState, description: str,
    **kwargs: Any,
) -> list[Delivery]:
    """``set_commit_status`` for each configured Git host (the index names each one)."""
    return [set_commit_status(c, sha, state, description, index=i, **kwargs)
            for i, c in enumerate(configs)]


COMMENT_LIMITS: dict[str, int] = {"github": 65536, "gitlab": 1_000_000, "gitea": 65536}
"""The longest comment body each Git host takes, in characters (see the module doc)."""
_COMMENT_PAGES = 20
"""Pages of 100 comments read when looking for the earlier one."""


def upsert_comment(
    config: CommitStatusConfig, number: int, body: str, marker: str, *, index: int = 0,
    timeout: float = 10, retries: int = 4, sleep: Sleep = time.sleep, backoff: float = 1.0,
    max_delay: float = 60.0,
) -> Delivery:
    """Edit the comment on pull request ``number`` whose body holds ``marker``, or create
    one; ``body`` must hold ``marker`` and fit ``COMMENT_LIMITS``. Never raises.

    The delivery's ``what`` is ``comment edited`` or ``comment created``.
    """
    token = ""
    what = "comment"
    try:
        if marker not in body:
            raise ValueError("the comment does not hold its marker")
        token = config.token.reveal()
        scrub = Scrubber([token])
        headers = api_headers(config, token)
        listing, create, edit = comment_urls(config, number)

        def send(url: str, payload: dict[str, Any] | None, method: str) -> Answer:
            return send_json(url, headers, payload, scrub=scrub, timeout=timeout,
                             retries=retries, sleep=sleep, backoff=backoff,
                             max_delay=max_delay, method=method)

        found: Any = None
        result = send(f"{config.api_url.rstrip('/')}/user", None, "GET")
        me = user_id(result.data) if result.ok else None
        if me is None and result.ok:
            result = Answer(False, result.status, result.attempts,
                             "GET /user did not say who the token is")
        for page in range(1, _COMMENT_PAGES + 1 if result.ok else 1):
            url = listing if config.provider == "gitea" else \
                f"{listing}?per_page=100&page={page}"
            result = send(url, None, "GET")
            if not result.ok or not isinstance(result.data, list):
                break
            found = next((c for c in result.data if isinstance(c, dict)
                          and marker in str(c.get("body") or "")
                          and user_id(c.get("author" if config.provider == "gitlab"
                                             else "user")) == me), None)
            if found is not None or config.provider == "gitea" or len(result.data) < 100:
                break
        if not result.ok:
            what = "comment lookup"
        elif found is not None and isinstance(found.get("id"), int):
            what = "comment edited"
            result = send(f"{edit}{found['id']}", {"body": body},
                          "PUT" if config.provider == "gitlab" else "PATCH")
        else:
            what = "comment created"
            result = send(create, {"body": body}, "POST")
    except Exception as exc:
        result = Answer(False, None, 0, Scrubber([token])(f"{type(exc).__name__}: {exc}"))
    delivery = Delivery(config.provider, index, result.ok, result.status, result.attempts,
                        result.error, what=what)
    if not delivery.ok:
        log.warning("%s on pull request %d via %s[%d] not delivered: %s", what, number,
                    config.provider, index, _last_words(delivery))
    return delivery


def _last_words(delivery: Delivery) -> str:
    return f"{delivery.error} (after {delivery.attempts} attempt(s))"


# -- from a run's outcome ----------------------------------------------------------------


def commit_state_for(outcome: Outcome) -> tuple[CommitState, str]:
    """The commit status a finished run reports, with a short description."""
    if outcome.result == "succeeded":
        unchecked = outcome.verify.not_verified(outcome.apply) if outcome.verify else []
        return "success", ("applied, not verified on " + ", ".join(unchecked)
                           + ": no check ran" if unchecked else "applied and verified")
    if outcome.result == "invalid":
        return "failure", "invalid declaration: nothing applied"
    if outcome.result == "failed":
        if outcome.verify is not None and not outcome.verify.ok:
            return "failure", "verify failed on " + ", ".join(outcome.verify.failed_hosts)
        if outcome.apply is not None and outcome.apply.failed_hosts:
            return "failure", "apply failed on " + ", ".join(outcome.apply.failed_hosts)
        return "failure", "failed" + (f": {outcome.error}" if outcome.error else "")
    if outcome.result == "interrupted":
        return "error", "interrupted before the end"
    return "error", "reconciler error"


def _failed_hosts(outcome: Outcome) -> list[str]:
    hosts: set[str] = set()
    if outcome.apply is not None:
        hosts.update(outcome.apply.failed_hosts)
    if outcome.verify is not None:
        hosts.update(outcome.verify.failed_hosts)
    return sorted(hosts)


def event_from_outcome(kind: EventKind, environment: str, outcome: Outcome,
                       summary: str | None = None) -> Event:
    """An ``Event`` for ``kind`` from a run's outcome: commit, failed hosts, a summary."""
    revision = outcome.revision
    if summary is None:
        summary = str(outcome.error) if outcome.error else commit_state_for(outcome)[1]
        if outcome.stopped_at:
            summary += f" ({outcome.stopped_at})"
    return Event(
        kind=kind,
        environment=environment,
        sha=revision.sha if revision else None,
        author=revision.author if revision else None,
        message=revision.message.splitlines()[0] if revision and revision.message else None,
        summary=summary,
        failed_hosts=tuple(_failed_hosts(outcome)),
        run_id=outcome.run_id,
    )
