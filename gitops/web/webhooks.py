"""Webhook deliveries from GitHub, GitLab and Gitea: who sent one, is it signed, is it a push.

Pure functions over the request headers and the raw body bytes, no web framework: the HTTP
server (``gitops.web.server``) calls ``parse_webhook`` with an environment's secret, then
``why_ignored`` with the environment's branch, and triggers a reconcile when nothing is in
the way; a pull/merge request event goes through ``why_no_preview`` instead and queues a
preview (``gitops.daemon.preview``). The signature is checked over the exact bytes received, in
constant time, before the body is parsed. No message raised here ever contains the secret or
the received signature.

Documented formats:

- GitHub: ``X-GitHub-Event``; ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
- GitLab: ``X-Gitlab-Event`` (``Push Hook``); ``X-Gitlab-Token`` is the secret itself.
- Gitea (and Forgejo): ``X-Gitea-Event``; ``X-Gitea-Signature: <hex HMAC-SHA256 of the body>``.
  Gitea also sends ``X-GitHub-Event`` for compatibility, so its own header is looked at first.

Each delivery carries an id that a redelivery repeats (``delivery_id``): GitHub's
``X-GitHub-Delivery``, Gitea's ``X-Gitea-Delivery``, GitLab's ``Idempotency-Key`` (else
``X-Gitlab-Event-UUID``). The server keeps the recent ones (``RecentDeliveries``) and answers a
repeated one "duplicate" without acting on it again.

Pull/merge requests (previewed on ``opened``, new commits and ``reopened``):

- GitHub ``pull_request`` (https://docs.github.com/en/webhooks/webhook-events-and-payloads
  #pull_request): ``action`` (``opened``, ``synchronize``, ``reopened``, ...), ``number``,
  ``pull_request.head.ref`` / ``.sha``, ``pull_request.base.ref``.
- Gitea ``pull_request``: the same fields; new commits are ``synchronized``.
- GitLab ``Merge Request Hook`` (https://docs.gitlab.com/ee/user/project/integrations/
  webhook_events.html#merge-request-events): ``object_attributes.iid``, ``.source_branch``,
  ``.target_branch``, ``.last_commit.id``, ``.action`` (``open``, ``reopen``, ``update``;
  an ``update`` with ``oldrev`` brought new commits).

Who and where from (``why_untrusted``): a pull request is from a fork when its head is in
another repository than its base. GitHub and Gitea: ``pull_request.head.repo.full_name`` !=
``pull_request.base.repo.full_name`` (a deleted fork's ``head.repo`` is null), author
``pull_request.user.login``, labels ``pull_request.labels[].name``. GitLab:
``object_attributes.source_project_id`` != ``.target_project_id``, author ``user.username``
(who sent the event: who pushed, opened or reopened), labels ``labels[].title``. A payload
that does not say is taken as a fork.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "InvalidSignature",
    "Provider",
    "RecentDeliveries",
    "UnsupportedEvent",
    "WebhookError",
    "WebhookEvent",
    "delivery_id",
    "hmac_sha256_hex",
    "parse_webhook",
    "why_ignored",
    "why_no_preview",
    "why_untrusted",
]

Provider = Literal["github", "gitlab", "gitea"]

_PUSH_EVENTS: dict[Provider, str] = {"github": "push", "gitlab": "Push Hook", "gitea": "push"}
_EVENT_HEADERS: tuple[tuple[Provider, str], ...] = (
    ("gitea", "x-gitea-event"),
    ("gitlab", "x-gitlab-event"),
    ("github", "x-github-event"),
)
_PULL_EVENTS: dict[Provider, str] = {
    "github": "pull_request", "gitlab": "Merge Request Hook", "gitea": "pull_request"}
_PREVIEW_ACTIONS = frozenset({"opened", "synchronize", "synchronized", "reopened",
                              "open", "reopen", "update"})
_ZERO_SHA = "0" * 40
_DELIVERY_HEADERS: dict[Provider, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitea": ("x-gitea-delivery",),
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
}
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
    number: int | None = None
    """A pull request's number (GitLab: the merge request's ``iid``)."""
    action: str | None = None
    """What happened to the pull request, as sent (``opened``, ``synchronize``, ``update``)."""
    base: str | None = None
    """The branch a pull request would merge into."""
    new_commits: bool = True
    """False for a GitLab ``update`` that brought no commit (a title edit)."""
    fork: bool = True
    """Whether a pull request's head is in another repository (True unless the payload
    shows the same repository on both sides)."""
    head_repo: str | None = None
    """Where a pull request's head is (GitHub, Gitea: ``owner/name``; GitLab: project id)."""
    author: str | None = None
    labels: tuple[str, ...] = ()

    @property
    def is_push(self) -> bool:
        return self.event == _PUSH_EVENTS[self.provider]

    @property
    def is_pull_request(self) -> bool:
        return self.event == _PULL_EVENTS[self.provider]


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
    if event == _PULL_EVENTS[provider]:
        return _pull_request(provider, event, body)
    if event != _PUSH_EVENTS[provider]:
        return WebhookEvent(provider=provider, event=event)
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _pull_request(provider: Provider, event: str, body: bytes) -> WebhookEvent:
    """A pull/merge request event's number, branches, head commit and action."""
    what = "merge request" if provider == "gitlab" else "pull request"
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnsupportedEvent(f"{provider} {what}: the body is not JSON") from None
    if not isinstance(payload, dict):
        raise UnsupportedEvent(f"{provider} {what}: the body is not a JSON object")
    if provider == "gitlab":
        attrs = payload.get("object_attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
        number, action = attrs.get("iid"), _text(attrs.get("action"))
        branch, base = _text(attrs.get("source_branch")), _text(attrs.get("target_branch"))
        last = attrs.get("last_commit")
        head = _text(last.get("id")) if isinstance(last, dict) else None
        new_commits = action != "update" or bool(_text(attrs.get("oldrev")))
        source, target = attrs.get("source_project_id"), attrs.get("target_project_id")
        fork = not (type(source) is int and type(target) is int and source == target)
        head_repo = str(source) if type(source) is int else None
        user = payload.get("user")
        author = _text(user.get("username")) if isinstance(user, dict) else None
        labels = _names(payload.get("labels"), "title")
    else:
        pull = payload.get("pull_request")
        pull = pull if isinstance(pull, dict) else {}
        number, action = payload.get("number", pull.get("number")), _text(payload.get("action"))
        side = {k: v if isinstance(v := pull.get(k), dict) else {} for k in ("head", "base")}
        branch, head = _text(side["head"].get("ref")), _text(side["head"].get("sha"))
        base = _text(side["base"].get("ref"))
        new_commits = True
        repos = [r.get("full_name") if isinstance(r := side[k].get("repo"), dict) else None
                 for k in ("head", "base")]
        fork = not (isinstance(repos[0], str) and repos[0] == repos[1])
        head_repo = _text(repos[0])
        user = pull.get("user")
        author = _text(user.get("login")) if isinstance(user, dict) else None
        labels = _names(pull.get("labels"), "name")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise UnsupportedEvent(f"{provider} {what}: the body has no number")
    if branch is None or base is None:
        raise UnsupportedEvent(f"{provider} {what}: the body has no source or target branch")
    return WebhookEvent(provider=provider, event=event, branch=branch, after=head,
                        number=number, action=action, base=base, new_commits=new_commits,
                        fork=fork, head_repo=head_repo, author=author, labels=labels)


def _names(items: Any, key: str) -> tuple[str, ...]:
    """The names of a payload's labels (``[{"name": ...}]``), the odd ones left out."""
    if not isinstance(items, list):
        return ()
    return tuple(n for i in items if isinstance(i, dict) and (n := _text(i.get(key))))


def why_no_preview(event: WebhookEvent, branch: str) -> str | None:
    """Why pull request ``event`` previews nothing for an environment of ``branch``; None
    when it is to be previewed (opened, reopened or new commits, into ``branch``)."""
    if not event.is_pull_request:
        return f"{event.provider} event {event.event!r} is not a pull request"
    if event.action not in _PREVIEW_ACTIONS:
        return f"pull request action {event.action!r} brings no new commit"
    if not event.new_commits:
        return "merge request update without new commits"
    if event.base != branch:
        return f"pull request into {event.base!r}, not the watched {branch!r}"
    return None


def why_untrusted(event: WebhookEvent, *, allow_forks: bool, authors: list[str],
                  labels: list[str]) -> str | None:
    """Why pull request ``event`` is not trusted to run its code in a preview; None when
    it is: not from a fork, or from a fork that the settings allow (``allow_forks``) by one
    of ``authors`` or with one of ``labels``."""
    if not event.fork:
        return None
    where = f"pull request #{event.number} from fork {event.head_repo or '(unknown)'!r}"
    if not allow_forks:
        return f"{where}: previews of forks are off ([preview] allow_forks)"
    if event.author is not None and event.author in authors:
        return None
    if set(event.labels) & set(labels):
        return None
    return (f"{where} by {event.author or '(unknown)'!r}: neither a trusted author nor a "
            "trusted label ([preview] trusted_authors, trusted_labels)")


def delivery_id(headers: Mapping[str, str], provider: Provider) -> str | None:
    """The id ``provider`` gives this delivery (the same in a redelivery); None when it sent
    none or one that is not a short printable ASCII string."""
    lowered = _lower(headers)
    for header in _DELIVERY_HEADERS[provider]:
        value = lowered.get(header, "").strip()
        if value:
            usable = len(value) <= 200 and value.isascii() and value.isprintable()
            return value if usable else None
    return None


class RecentDeliveries:
    """The last ``size`` delivery keys acted on, oldest forgotten first. Kept in memory: a
    redelivery after the daemon restarted is acted on again (a reconcile of the same head,
    or a preview of the same commit, is harmless)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> bool:
        """True and remembered when ``key`` is new; False for a duplicate."""
        with self._lock:
            if key in self._keys:
                return False
            self._keys[key] = None
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)
            return True

    def release(self, key: Hashable) -> None:
        """Forget ``key``: its delivery was not acted on after all (a redelivery may be)."""
        with self._lock:
            self._keys.pop(key, None)
