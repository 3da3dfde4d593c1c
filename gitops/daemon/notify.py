"""Notifications and commit statuses: the only module that talks to receivers and Git host APIs.

Two things leave the reconciler here, both over plain HTTPS with the standard library:

- ``notify(configs, event)``: on failure, recovery, drift, rollback, quarantine (and, if a
  receiver asks for it, success), one POST per configured receiver, either a generic JSON
  webhook or a Slack-compatible incoming webhook.
- ``set_commit_status(config, sha, state, description)``: a commit status on the Git host
  (GitHub, GitLab or Gitea): ``pending`` when a run starts, ``success`` / ``failure`` /
  ``error`` when it ends.

Neither raises. Each returns ``Delivery`` values saying what happened per receiver; a failure is
logged on one line that names the receiver by index and type, never by URL. Webhook URLs and
API tokens are secrets (``SecretRef``): they are revealed only to build the request, and every
error text is scrubbed of them before it is logged or returned.

Retries: connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full
jitter (``backoff * 2**n`` seconds, times a random factor in [0.5, 1.5], capped at
``max_delay``); a ``Retry-After`` header (seconds or an HTTP date) is honoured, within the same
cap. Any other 4xx is final: the request is wrong and sending it again will not help. ``sleep`` is
injected so that tests do not wait. A failed commit status comes back as ``Delivery(ok=False)``
with its ``sha`` and ``state``: the caller keeps it and sends it again at the next cycle, so a
failure status is never dropped.

Generic webhook (``type = "webhook"``): ``POST <url>``, ``Content-Type: application/json``,
``User-Agent: gitops/<version>``, ``X-Gitops-Event: <kind>``, body (schema
``gitops.notification/v1``; fields are never removed within v1, only added)::

    {
      "schema": "gitops.notification/v1",
      "kind": "failure" | "recovery" | "drift" | "rollback" | "quarantine" | "success",
      "environment": "prod",                   # the environment (inventory) name
      "revision": {                            # null when no commit is known
        "sha": "<40 hex>", "author": "Ann <ann@example.com>" | null,
        "message": "<commit subject>" | null
      } | null,
      "summary": "verify failed on web1: nginx port 80 not listening",
      "failed_hosts": ["web1"],                # sorted, possibly empty
      "run_id": 42 | null,                     # the run in ``gitops history``
      "timestamp": "2024-05-01T12:00:00+00:00" # ISO 8601 with offset (UTC)
    }

Any 2xx is delivered. Slack (``type = "slack"``): ``POST <url>`` with ``{"text": <fallback>,
"blocks": [<section mrkdwn>, <context mrkdwn>]}``; Slack answers ``200 ok``, ``400
invalid_payload``, ``403``/``404``/``410`` for a revoked or archived hook, ``429`` with
``Retry-After`` when rate limited. ``&``, ``<``, ``>`` in our text are escaped as Slack asks.
Source: Slack, "Sending messages using incoming webhooks",
https://api.slack.com/messaging/webhooks (and https://api.slack.com/reference/surfaces/formatting
for escaping; section text at most 3000 characters).

Commit statuses, by provider (``state`` is ours: pending | success | failure | error):

- GitHub, "Create a commit status" (https://docs.github.com/en/rest/commits/statuses
  #create-a-commit-status): ``POST {api_url}/repos/{owner}/{repo}/statuses/{sha}``, headers
  ``Authorization: Bearer <token>``, ``Accept: application/vnd.github+json``,
  ``X-GitHub-Api-Version: 2022-11-28`` and a ``User-Agent`` (required by GitHub); body
  ``{"state", "target_url", "description", "context"}`` with state in error | failure |
  pending | success (ours map one to one); answers ``201`` with the status object. A
  ``description`` is cut to 140 characters (GitHub's limit; longer is a 422).
- GitLab, "Set the pipeline status of a commit" (https://docs.gitlab.com/ee/api/commits.html
  #set-the-pipeline-status-of-a-commit): ``POST {api_url}/projects/{id}/statuses/{sha}`` where
  ``id`` is the project id or its URL-encoded path (``group%2Fproject``; an unencoded path is
  encoded here), header ``PRIVATE-TOKEN: <token>``; fields ``state`` (pending | running |
  success | failed | canceled), ``name`` (alias ``context``), ``description``, ``target_url``;
  answers ``201``. Mapping: pending -> pending, success -> success, failure -> failed,
  error -> failed (GitLab has no ``error``).
- Gitea, "Create a commit status" (Gitea API swagger ``repoCreateStatus``,
  https://docs.gitea.com/api/ ; ``CreateStatusOption``): ``POST
  {api_url}/repos/{owner}/{repo}/statuses/{sha}``, header ``Authorization: token <token>``
  (https://docs.gitea.com/development/api-usage); body ``{"state", "target_url",
  "description", "context"}`` with state in pending | success | error | failure | warning
  (ours map one to one); answers ``201`` with the status.

Pull/merge request comments (``upsert_comment``; a preview's report, ``gitops.daemon.preview``): the
earlier comment is found by a hidden marker in its body (an HTML comment, as Atlantis-like
bots do) and edited in place; else one is created. Same headers as the statuses. The marker
alone is no proof (anyone can write it, and a token of an admin could edit their comment):
only a comment whose author is the token's own user is edited, that user asked first with
``GET {api_url}/user`` (GitHub, GitLab and Gitea alike: ``{"id", "login"}``, GitLab
``{"id", "username"}``); a comment's author is its ``user.id`` (GitHub, Gitea) or
``author.id`` (GitLab).

- GitHub, issue comments (https://docs.github.com/en/rest/issues/comments): list ``GET
  {api_url}/repos/{owner}/{repo}/issues/{number}/comments?per_page=100&page=N`` (an array of
  ``{"id", "body"}``), edit ``PATCH .../issues/comments/{comment_id}`` (200), create ``POST
  .../issues/{number}/comments`` (201), body ``{"body"}``; a body is at most 65536 characters.
- GitLab, merge request notes (https://docs.gitlab.com/ee/api/notes.html#merge-requests):
  list ``GET {api_url}/projects/{id}/merge_requests/{iid}/notes?per_page=100&page=N``, edit
  ``PUT .../notes/{note_id}`` (200), create ``POST .../merge_requests/{iid}/notes`` (201),
  body ``{"body"}``, at most 1,000,000 characters.
- Gitea, issue comments (swagger ``issueGetComments``, ``issueEditComment``,
  ``issueCreateComment``): list ``GET {api_url}/repos/{owner}/{repo}/issues/{index}/comments``,
  edit ``PATCH .../issues/comments/{id}`` (200), create ``POST .../issues/{index}/comments``
  (201), body ``{"body"}``; Gitea documents no limit, its column is a TEXT (64 KiB on MySQL),
  so 65536 characters.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from gitops.settings import EVENT_KINDS, CommitStatusConfig, EventKind, NotifierConfig

if TYPE_CHECKING:
    from gitops.pipeline.reconcile import Outcome

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
    "set_commit_status",
    "set_commit_statuses",
    "upsert_comment",
]

log = logging.getLogger("gitops.daemon.notify")

CommitState = Literal["pending", "success", "failure", "error"]
COMMIT_STATES: tuple[CommitState, ...] = get_args(CommitState)

SCHEMA = "gitops.notification/v1"
USER_AGENT = "gitops/0.1 (+notify)"
_DESCRIPTION_MAX = 140
_SLACK_TEXT_MAX = 3000
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Event:
    """Something worth telling people about, with the commit that caused it."""

    kind: EventKind
    environment: str
    sha: str | None = None
    author: str | None = None
    message: str | None = None
    """The commit's subject line."""
    summary: str = ""
    failed_hosts: tuple[str, ...] = ()
    run_id: int | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        """The generic webhook body (schema ``gitops.notification/v1``, see the module doc)."""
        revision = None
        if self.sha is not None:
            revision = {"sha": self.sha, "author": self.author, "message": self.message}
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "environment": self.environment,
            "revision": revision,
            "summary": self.summary,
            "failed_hosts": sorted(self.failed_hosts),
            "run_id": self.run_id,
            "timestamp": self.timestamp.astimezone(UTC).isoformat(),
        }


@dataclass(frozen=True)
class Delivery:
    """What happened to one request: never holds a URL or a token."""

    receiver: str
    """``webhook``, ``slack``, ``github``, ``gitlab`` or ``gitea``."""
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

    def __str__(self) -> str:
        name = f"{self.receiver}[{self.index}]"
        if self.ok:
            return f"{name} {self.what}: delivered ({self.status}, {self.attempts} attempt(s))"
        return f"{name} {self.what}: failed after {self.attempts} attempt(s): {self.error}"


# -- building requests -------------------------------------------------------------------


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_TITLES: dict[EventKind, str] = {
    "failure": ":x: Reconcile failed",
    "recovery": ":white_check_mark: Recovered",
    "drift": ":warning: Drift detected",
    "rollback": ":rewind: Rolled back",
    "quarantine": ":no_entry: Revision quarantined",
    "success": ":white_check_mark: Reconciled",
}


def slack_payload(event: Event) -> dict[str, Any]:
    """The Slack incoming-webhook body: ``text`` as the notification fallback, plus blocks."""
    title = f"{_TITLES[event.kind]} in {event.environment}"
    commit = ""
    if event.sha:
        commit = f"`{event.sha[:10]}`"
        if event.message:
            commit += f" {event.message}"
        if event.author:
            commit += f" ({event.author})"
    lines = [f"*{_slack_escape(title)}*"]
    if commit:
        lines.append(_slack_escape(commit))
    if event.summary:
        lines.append(_slack_escape(event.summary))
    if event.failed_hosts:
        lines.append("Failed hosts: " + _slack_escape(", ".join(sorted(event.failed_hosts))))
    body = "\n".join(lines)
    if len(body) > _SLACK_TEXT_MAX:
        body = body[: _SLACK_TEXT_MAX - 1] + "…"
    context = f"run {event.run_id}" if event.run_id is not None else "gitops"
    context += f" · {event.timestamp.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}"
    fallback = title + (f": {event.summary}" if event.summary else "")
    return {
        "text": _slack_escape(fallback)[:_SLACK_TEXT_MAX],
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": body}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


_GITLAB_STATES: dict[CommitState, str] = {
    "pending": "pending",
    "success": "success",
    "failure": "failed",
    "error": "failed",
}


def _status_request(
    config: CommitStatusConfig, token: str, sha: str, state: CommitState, description: str,
    environment: str,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of one commit status, in the provider's documented form."""
    base = config.api_url.rstrip("/")
    context = config.context_for(environment)
    description = description if len(description) <= _DESCRIPTION_MAX else (
        description[: _DESCRIPTION_MAX - 1] + "…")
    headers = _api_headers(config, token)
    body: dict[str, Any]
    if config.provider == "gitlab":
        project = config.repository
        if "%" not in project:
            project = urllib.parse.quote(project, safe="")
        url = f"{base}/projects/{project}/statuses/{sha}"
        body = {"state": _GITLAB_STATES[state], "name": context, "description": description}
    else:
        owner, _, name = config.repository.partition("/")
        path = f"{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"
        url = f"{base}/repos/{path}/statuses/{sha}"
        body = {"state": state, "context": context, "description": description}
    if config.target_url:
        body["target_url"] = config.target_url
    return url, headers, body


# -- sending with retries ----------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (an error), not a hop: urllib would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect())


class _Scrubber:
    """Replaces every secret (and the parts of a URL that may carry one) with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        parts: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            parts.add(secret)
            parsed = urllib.parse.urlsplit(secret)
            if parsed.scheme and parsed.netloc:
                for piece in (parsed.path, parsed.query, parsed.netloc):
                    if len(piece) > 1:
                        parts.add(piece)
                parts.add(urllib.parse.quote(secret, safe=""))
        self._parts = sorted(parts, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for part in self._parts:
            text = text.replace(part, "***")
        return text


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class _Result:
    ok: bool
    status: int | None
    attempts: int
    error: str | None
    data: Any = None
    """The answer's JSON body, when it had one."""
    link: str = ""
    """The answer's ``Link`` header (GitHub's and Gitea's pagination)."""


def _send(
    url: str, headers: dict[str, str], body: dict[str, Any] | None, *, scrub: _Scrubber,
    timeout: float, retries: int, sleep: Sleep, backoff: float, max_delay: float,
    method: str = "POST",
) -> _Result:
    """Send ``body`` as JSON (POST unless ``method``); retry connection errors, 5xx and 429.
    Never raises."""
    data = json.dumps(body).encode() if body is not None else None
    attempts = 0
    status: int | None = None
    error = "not sent"
    while True:
        attempts += 1
        retry_after: float | None = None
        retryable = True
        try:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            with _opener.open(request, timeout=timeout) as response:
                status = int(response.status)
                raw = response.read()
                link = response.headers.get("Link") or ""
            if 200 <= status < 300:
                try:
                    answer = json.loads(raw) if raw.strip() else None
                except ValueError:
                    answer = None
                return _Result(True, status, attempts, None, answer, link)
            error, retryable = f"HTTP {status}", False
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = ""
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            except Exception:
                detail = ""
            error = f"HTTP {status}" + (f": {' '.join(detail.split())[:200]}" if detail else "")
            retryable = status == 429 or status >= 500
            if retryable:
                retry_after = _retry_after(exc.headers.get("Retry-After"), time.time())
        except urllib.error.URLError as exc:
            status = None
            error = f"connection failed: {exc.reason}"
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            status = None
            error = f"connection failed: {type(exc).__name__}: {exc}"
        except ValueError as exc:  # a malformed URL: no point in retrying
            status, retryable = None, False
            error = f"invalid request: {exc}"
        error = scrub(error)
        if not retryable or attempts > retries:
            return _Result(False, status, attempts, error)
        delay = min(max_delay, backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(max_delay, retry_after))
        sleep(min(delay, max_delay))


# -- public API ------------------------------------------------------------------------


def notify(
    configs: Sequence[NotifierConfig], event: Event, *, timeout: float = 10, retries: int = 4,
    sleep: Sleep = time.sleep, backoff: float = 1.0, max_delay: float = 60.0,
) -> list[Delivery]:
    """Send ``event`` to every receiver that wants its kind; one ``Delivery`` per receiver asked.

    Never raises: a notification failure must never fail a reconcile. Each failure is logged
    once (warning), naming the receiver by index and type, never by URL.
    """
    deliveries: list[Delivery] = []
    for index, config in enumerate(configs):
        if event.kind not in config.events:
            continue
        url = ""
        try:
            url = config.url.reveal()
            payload = slack_payload(event) if config.type == "slack" else event.as_json()
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            if config.type == "webhook":
                headers["X-Gitops-Event"] = event.kind
            result = _send(url, headers, payload, scrub=_Scrubber([url]), timeout=timeout,
                           retries=retries, sleep=sleep, backoff=backoff, max_delay=max_delay)
        except Exception as exc:  # a bad secret reference, or anything unforeseen
            text = _Scrubber([url])(f"{type(exc).__name__}: {exc}")
            result = _Result(False, None, 0, text)
        delivery = Delivery(config.type, index, result.ok, result.status, result.attempts,
                            result.error, what=event.kind, sha=event.sha)
        if not delivery.ok:
            log.warning("notification %s for %s in %s not delivered: %s", f"{config.type}"
                        f"[{index}]", event.kind, event.environment, _last_words(delivery))
        deliveries.append(delivery)
    return deliveries


def notify_digest(
    configs: Sequence[NotifierConfig], body: dict[str, Any], text: str, title: str, *,
    timeout: float = 10, retries: int = 4, sleep: Sleep = time.sleep, backoff: float = 1.0,
    max_delay: float = 60.0,
) -> list[Delivery]:
    """Send a digest (``gitops.daemon.digest``) to every receiver in ``configs``: the JSON ``body``
    to a generic webhook (``X-Gitops-Event: digest``), ``text`` (mrkdwn, escaped here) in
    sections of at most 3000 characters to a Slack hook, ``title`` its fallback. Never raises."""
    deliveries: list[Delivery] = []
    for index, config in enumerate(configs):
        url = ""
        try:
            url = config.url.reveal()
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            payload = body
            if config.type == "webhook":
                headers["X-Gitops-Event"] = "digest"
            else:
                chunks: list[str] = []
                for line in _slack_escape(text).splitlines():
                    if chunks and len(chunks[-1]) + len(line) + 1 <= _SLACK_TEXT_MAX:
                        chunks[-1] += "\n" + line
                    else:
                        chunks.append(line[:_SLACK_TEXT_MAX])
                payload = {"text": _slack_escape(title)[:_SLACK_TEXT_MAX],
                           "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": c}}
                                      for c in chunks[:50]]}
            result = _send(url, headers, payload, scrub=_Scrubber([url]), timeout=timeout,
                           retries=retries, sleep=sleep, backoff=backoff, max_delay=max_delay)
        except Exception as exc:  # a bad secret reference, or anything unforeseen
            result = _Result(False, None, 0, _Scrubber([url])(f"{type(exc).__name__}: {exc}"))
        delivery = Delivery(config.type, index, result.ok, result.status, result.attempts,
                            result.error, what="digest")
        if not delivery.ok:
            log.warning("digest to %s not delivered: %s", f"{config.type}[{index}]",
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
        url, headers, body = _status_request(config, token, sha, state, description, environment)
        result = _send(url, headers, body, scrub=_Scrubber([token]), timeout=timeout,
                       retries=retries, sleep=sleep, backoff=backoff, max_delay=max_delay)
    except Exception as exc:
        result = _Result(False, None, 0, _Scrubber([token])(f"{type(exc).__name__}: {exc}"))
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


def _comment_urls(config: CommitStatusConfig, number: int) -> tuple[str, str, str]:
    """The URLs to list, create and (with the id appended) edit comments of pull request
    ``number``, in the provider's documented form."""
    base = config.api_url.rstrip("/")
    if config.provider == "gitlab":
        project = config.repository
        if "%" not in project:
            project = urllib.parse.quote(project, safe="")
        notes = f"{base}/projects/{project}/merge_requests/{number}/notes"
        return notes, notes, f"{notes}/"
    owner, _, name = config.repository.partition("/")
    repo = f"{base}/repos/{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"
    comments = f"{repo}/issues/{number}/comments"
    return comments, comments, f"{repo}/issues/comments/"


def _api_headers(config: CommitStatusConfig, token: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if config.provider == "gitlab":
        headers["PRIVATE-TOKEN"] = token
        headers["Accept"] = "application/json"
    elif config.provider == "github":
        headers["Authorization"] = f"Bearer {token}"
        headers["Accept"] = "application/vnd.github+json"
        headers["X-GitHub-Api-Version"] = "2022-11-28"
    else:
        headers["Authorization"] = f"token {token}"
        headers["Accept"] = "application/json"
    return headers


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
        scrub = _Scrubber([token])
        headers = _api_headers(config, token)
        listing, create, edit = _comment_urls(config, number)

        def send(url: str, payload: dict[str, Any] | None, method: str) -> _Result:
            return _send(url, headers, payload, scrub=scrub, timeout=timeout, retries=retries,
                         sleep=sleep, backoff=backoff, max_delay=max_delay, method=method)

        found: Any = None
        result = send(f"{config.api_url.rstrip('/')}/user", None, "GET")
        me = _user_id(result.data) if result.ok else None
        if me is None and result.ok:
            result = _Result(False, result.status, result.attempts,
                             "GET /user did not say who the token is")
        for page in range(1, _COMMENT_PAGES + 1 if result.ok else 1):
            url = listing if config.provider == "gitea" else \
                f"{listing}?per_page=100&page={page}"
            result = send(url, None, "GET")
            if not result.ok or not isinstance(result.data, list):
                break
            found = next((c for c in result.data if isinstance(c, dict)
                          and marker in str(c.get("body") or "")
                          and _user_id(c.get("author" if config.provider == "gitlab"
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
        result = _Result(False, None, 0, _Scrubber([token])(f"{type(exc).__name__}: {exc}"))
    delivery = Delivery(config.provider, index, result.ok, result.status, result.attempts,
                        result.error, what=what)
    if not delivery.ok:
        log.warning("%s on pull request %d via %s[%d] not delivered: %s", what, number,
                    config.provider, index, _last_words(delivery))
    return delivery


def _user_id(user: Any) -> int | None:
    """A user's id as the hosts give it (``{"id": 1, ...}``); None if there is none."""
    if isinstance(user, dict) and isinstance(user.get("id"), int) \
            and not isinstance(user.get("id"), bool):
        return int(user["id"])
    return None


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
