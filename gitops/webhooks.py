"""Webhook deliveries from GitHub, GitLab and Gitea: who sent one, is it signed, is it a push.

Pure functions over the request headers and the raw body bytes, no web framework: the HTTP
server (``gitops.server``) calls ``parse_webhook`` with an environment's secret, then
``why_ignored`` with the environment's branch, and triggers a reconcile when nothing is in
the way. The signature is checked over the exact bytes received, in constant time, before the
body is parsed. No message raised here ever contains the secret or the received signature.

Documented formats:

- GitHub: ``X-GitHub-Event``; ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
- GitLab: ``X-Gitlab-Event`` (``Push Hook``); ``X-Gitlab-Token`` is the secret itself.
- Gitea (and Forgejo): ``X-Gitea-Event``; ``X-Gitea-Signature: <hex HMAC-SHA256 of the body>``.
  Gitea also sends ``X-GitHub-Event`` for compatibility, so its own header is looked at first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "InvalidSignature",
    "Provider",
    "UnsupportedEvent",
    "WebhookError",
    "WebhookEvent",
    "hmac_sha256_hex",
    "parse_webhook",
    "why_ignored",
]

Provider = Literal["github", "gitlab", "gitea"]

_PUSH_EVENTS: dict[Provider, str] = {"github": "push", "gitlab": "Push Hook", "gitea": "push"}
_EVENT_HEADERS: tuple[tuple[Provider, str], ...] = (
    ("gitea", "x-gitea-event"),
    ("gitlab", "x-gitlab-event"),
    ("github", "x-github-event"),
)
_ZERO_SHA = "0" * 40
_BRANCH_PREFIX = "refs/heads/"


class WebhookError(Exception):
    """A delivery that cannot be acted on. ``str()`` is safe to show and to log."""


class InvalidSignature(WebhookError):
    """The signature (or GitLab token) is missing or does not match the secret."""


class UnsupportedEvent(WebhookError):
    """Not a GitHub, GitLab or Gitea delivery, or a push whose body is not understood."""


@dataclass(frozen=True)
class WebhookEvent:
    """One authenticated delivery. ``branch`` is None unless it is a push of a branch."""

    provider: Provider
    event: str
    """The provider's event name as sent (``push``, ``ping``, ``Push Hook``, ``Tag Push Hook``)."""
    branch: str | None = None
    after: str | None = None
    """The new head commit of a push."""
    forced: bool | None = None
    """Whether the push rewrote history, when the provider says (GitHub does)."""
    ref: str | None = None
    """The pushed ref as sent (``refs/heads/main``, ``refs/tags/v1``)."""

    @property
    def is_push(self) -> bool:
        return self.event == _PUSH_EVENTS[self.provider]


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` keyed by ``secret``: what GitHub and Gitea send."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _provider(headers: dict[str, str]) -> tuple[Provider, str]:
    # Gitea sends X-GitHub-Event and X-Gogs-Event too: its own header decides first.
    for provider, header in _EVENT_HEADERS:
        if header in headers:
            return provider, headers[header].strip()
    raise UnsupportedEvent(
        "not a webhook delivery: no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event header"
    )


def _signature_valid(provider: Provider, headers: dict[str, str], body: bytes, secret: str) -> bool:
    if provider == "gitlab":
        sent = headers.get("x-gitlab-token")
        return sent is not None and hmac.compare_digest(sent.encode(), secret.encode())
    expected = hmac_sha256_hex(secret, body)
    if provider == "github":
        sent = headers.get("x-hub-signature-256")
        if sent is None or not sent.startswith("sha256="):
            return False
        sent = sent[len("sha256=") :]
    else:
        sent = headers.get("x-gitea-signature")
        if sent is None:
            return False
    return hmac.compare_digest(sent.strip().lower().encode(), expected.encode())


def parse_webhook(headers: Mapping[str, str], body: bytes, secret: str) -> WebhookEvent:
    """The authenticated event in a delivery; ``InvalidSignature`` or ``UnsupportedEvent``.

    ``headers`` may be any mapping (names are compared case-insensitively); ``body`` is the
    raw request body, exactly as received. Events other than a push are returned with only
    ``provider`` and ``event`` set (a ping, an issue comment): ``why_ignored`` says why.
    """
    lowered = _lower(headers)
    provider, event = _provider(lowered)
    if not _signature_valid(provider, lowered, body, secret):
        raise InvalidSignature(f"{provider} delivery with a missing or wrong signature")
    if event != _PUSH_EVENTS[provider]:
        return WebhookEvent(provider=provider, event=event)
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise UnsupportedEvent(f"{provider} push: the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("ref"), str):
        raise UnsupportedEvent(f"{provider} push: the body has no 'ref'")
    ref: str = payload["ref"]
    after = payload.get("after")
    forced = payload.get("forced")
    return WebhookEvent(
        provider=provider,
        event=event,
        branch=ref[len(_BRANCH_PREFIX) :] if ref.startswith(_BRANCH_PREFIX) else None,
        after=after if isinstance(after, str) else None,
        forced=forced if isinstance(forced, bool) else None,
        ref=ref,
    )


def why_ignored(event: WebhookEvent, branch: str) -> str | None:
    """Why ``event`` does not trigger a reconcile of ``branch``; None when it does."""
    if not event.is_push:
        return f"{event.provider} event {event.event!r} is not a push"
    if event.branch is None:
        return f"push of {event.ref!r}, not of a branch"
    if event.branch != branch:
        return f"push to branch {event.branch!r}, not the watched {branch!r}"
    if event.after == _ZERO_SHA:
        return f"branch {branch!r} was deleted"
    return None
