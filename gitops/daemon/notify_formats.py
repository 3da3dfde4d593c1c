"""The requests of notifications, commit statuses and pull request comments, in each
receiver's and Git host's documented form: bodies (``Event.as_json``, ``slack_payload``),
URLs and headers. Sent by ``gitops.daemon.notify`` (through ``notify_http``).

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
      "timestamp": "2024-05-01T12:00:00+00:00",# ISO 8601 with offset (UTC)
      "severity": "critical" | "warning" | "info",   # added by notify_providers
      "text": "<the short message every notifier gets>",
      "page_url": "https://..." | null
    }

Signed with the notifier's ``hmac_key``: ``X-Gitops-Signature: sha256=<hex>``
(``notify_providers``).

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

import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from gitops.settings import CommitStatusConfig, EventKind

__all__ = ["COMMIT_STATES", "SCHEMA", "SLACK_TEXT_MAX", "USER_AGENT", "CommitState", "Event",
           "api_headers", "comment_urls", "slack_escape", "slack_payload", "status_request",
           "user_id"]

CommitState = Literal["pending", "success", "failure", "error"]
COMMIT_STATES: tuple[CommitState, ...] = get_args(CommitState)

SCHEMA = "gitops.notification/v1"
USER_AGENT = "gitops/0.1 (+notify)"
_DESCRIPTION_MAX = 140
SLACK_TEXT_MAX = 3000


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


def slack_escape(text: str) -> str:
    """``&``, ``<`` and ``>`` escaped as Slack asks."""
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
    lines = [f"*{slack_escape(title)}*"]
    if commit:
        lines.append(slack_escape(commit))
    if event.summary:
        lines.append(slack_escape(event.summary))
    if event.failed_hosts:
        lines.append("Failed hosts: " + slack_escape(", ".join(sorted(event.failed_hosts))))
    body = "\n".join(lines)
    if len(body) > SLACK_TEXT_MAX:
        body = body[: SLACK_TEXT_MAX - 1] + "…"
    context = f"run {event.run_id}" if event.run_id is not None else "gitops"
    context += f" · {event.timestamp.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}"
    fallback = title + (f": {event.summary}" if event.summary else "")
    return {
        "text": slack_escape(fallback)[:SLACK_TEXT_MAX],
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


def status_request(
    config: CommitStatusConfig, token: str, sha: str, state: CommitState, description: str,
    environment: str,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of one commit status, in the provider's documented form."""
    base = config.api_url.rstrip("/")
    context = config.context_for(environment)
    description = description if len(description) <= _DESCRIPTION_MAX else (
        description[: _DESCRIPTION_MAX - 1] + "…")
    headers = api_headers(config, token)
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


def comment_urls(config: CommitStatusConfig, number: int) -> tuple[str, str, str]:
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


def api_headers(config: CommitStatusConfig, token: str) -> dict[str, str]:
    """The headers of every request to the Git host's API, with its form of ``token``."""
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


def user_id(user: Any) -> int | None:
    """A user's id as the hosts give it (``{"id": 1, ...}``); None if there is none."""
    if isinstance(user, dict) and isinstance(user.get("id"), int) \
            and not isinstance(user.get("id"), bool):
        return int(user["id"])
    return None
