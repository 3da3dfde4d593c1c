"""Webhook parsing: provider, signature and push detection over the providers' documented shapes.

The bodies are trimmed copies of the example payloads in the GitHub, GitLab and Gitea webhook
documentation; the GitHub signature test uses GitHub's own published test vector.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from gitops.web.webhooks import (
    InvalidSignature,
    UnsupportedEvent,
    WebhookEvent,
    hmac_sha256_hex,
    parse_webhook,
    why_ignored,
)

SECRET = "s3cr3t-for-webhook-tests"

GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
    "created": False,
    "deleted": False,
    "forced": False,
    "base_ref": None,
    "compare": "https://github.com/octo-org/state/compare/6113728f27ae...0d1a26e67d8f",
    "commits": [
        {
            "id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "message": "web: raise worker count",
            "author": {"name": "Mona Lisa", "email": "mona@example.com", "username": "mona"},
        }
    ],
    "head_commit": {"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"},
    "repository": {"id": 1296269, "name": "state", "full_name": "octo-org/state"},
    "pusher": {"name": "mona", "email": "mona@example.com"},
    "sender": {"login": "mona", "id": 1},
}

GITHUB_PING = {
    "zen": "Design for failure.",
    "hook_id": 109948940,
    "hook": {"type": "Repository", "id": 109948940, "events": ["push"], "active": True},
    "repository": {"id": 1296269, "full_name": "octo-org/state"},
    "sender": {"login": "mona", "id": 1},
}

GITLAB_PUSH = {
    "object_kind": "push",
    "event_name": "push",
    "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
    "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "ref": "refs/heads/main",
    "ref_protected": True,
    "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "user_id": 4,
    "user_name": "John Smith",
    "user_username": "jsmith",
    "project_id": 15,
    "project": {"id": 15, "name": "state", "path_with_namespace": "ops/state"},
    "commits": [
        {
            "id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "message": "fixed readme",
            "author": {"name": "GitLab dev user", "email": "gitlabdev@dv6700.(none)"},
        }
    ],
    "total_commits_count": 1,
}

GITLAB_TAG_PUSH = {
    "object_kind": "tag_push",
    "event_name": "tag_push",
    "before": "0000000000000000000000000000000000000000",
    "after": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
    "ref": "refs/tags/v1.0.0",
    "checkout_sha": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
    "project_id": 1,
}

GITEA_PUSH = {
    "ref": "refs/heads/develop",
    "before": "28e1879d029cb852e4844d9c718537df08844e03",
    "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
    "compare_url": "http://localhost:3000/gitea/webhooks/compare/28e1879d...bffeb742",
    "commits": [
        {
            "id": "bffeb74224043ba2feb48d137756c8a9331c449a",
            "message": "Webhooks Yay!",
            "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
        }
    ],
    "repository": {"id": 140, "name": "webhooks", "full_name": "gitea/webhooks"},
    "pusher": {"id": 1, "login": "gitea"},
    "sender": {"id": 1, "login": "gitea"},
}


def body_of(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def github_headers(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(secret, body),
        "Content-Type": "application/json",
    }


def gitlab_headers(event: str = "Push Hook", token: str = SECRET) -> dict[str, str]:
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "Content-Type": "application/json"}


def gitea_headers(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    # Gitea sends the GitHub and Gogs event headers too, as in its documented example.
    return {
        "X-GitHub-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
        "X-GitHub-Event": event,
        "X-Gogs-Event": event,
        "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
        "X-Gitea-Event": event,
        "X-Gitea-Signature": hmac_sha256_hex(secret, body),
    }


def test_github_documented_test_vector_is_accepted() -> None:
    """GitHub's published example (secret, 'Hello, World!', its signature) validates here."""
    event = parse_webhook(
        {
            "X-GitHub-Event": "ping",
            "X-Hub-Signature-256": (
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
            ),
        },
        b"Hello, World!",
        "It's a Secret to Everybody",
    )
    assert event == WebhookEvent(provider="github", event="ping")


def test_github_push_gives_branch_head_and_forced() -> None:
    """A signed GitHub push names the branch, the new head and whether it was forced."""
    body = body_of({**GITHUB_PUSH, "forced": True})
    event = parse_webhook(github_headers(body), body, SECRET)
    assert event == WebhookEvent(
        provider="github",
        event="push",
        branch="main",
        after="0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        forced=True,
        ref="refs/heads/main",
    )
    assert why_ignored(event, "main") is None


def test_github_wrong_secret_is_refused_without_revealing_anything() -> None:
    """A GitHub delivery signed with another secret is refused; the error names no secret."""
    body = body_of(GITHUB_PUSH)
    headers = github_headers(body, secret="another-secret")
    with pytest.raises(InvalidSignature) as caught:
        parse_webhook(headers, body, SECRET)
    message = str(caught.value)
    assert SECRET not in message
    assert "another-secret" not in message
    assert headers["X-Hub-Signature-256"].removeprefix("sha256=") not in message


def test_github_missing_signature_is_refused() -> None:
    """A GitHub delivery without X-Hub-Signature-256 is refused."""
    body = body_of(GITHUB_PUSH)
    with pytest.raises(InvalidSignature):
        parse_webhook({"X-GitHub-Event": "push"}, body, SECRET)


def test_github_signature_without_prefix_is_refused() -> None:
    """A GitHub signature must carry its 'sha256=' prefix."""
    body = body_of(GITHUB_PUSH)
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": hmac_sha256_hex(SECRET, body)}
    with pytest.raises(InvalidSignature):
        parse_webhook(headers, body, SECRET)


def test_tampered_body_is_refused() -> None:
    """A body changed after signing (another branch) no longer matches its signature."""
    body = body_of(GITHUB_PUSH)
    headers = github_headers(body)
    tampered = body.replace(b"refs/heads/main", b"refs/heads/evil")
    with pytest.raises(InvalidSignature):
        parse_webhook(headers, tampered, SECRET)


def test_header_names_are_case_insensitive() -> None:
    """Header names in any case are understood (proxies lower-case them)."""
    body = body_of(GITHUB_PUSH)
    headers = {name.lower(): value for name, value in github_headers(body).items()}
    assert parse_webhook(headers, body, SECRET).branch == "main"


def test_github_ping_is_not_a_push() -> None:
    """GitHub's ping on hook creation is authenticated but ignored as not a push."""
    body = body_of(GITHUB_PING)
    event = parse_webhook(github_headers(body, event="ping"), body, SECRET)
    assert not event.is_push
    assert why_ignored(event, "main") == "github event 'ping' is not a push"


def test_gitlab_push_with_token() -> None:
    """A GitLab Push Hook with the right X-Gitlab-Token names the branch and new head."""
    body = body_of(GITLAB_PUSH)
    event = parse_webhook(gitlab_headers(), body, SECRET)
    assert event.provider == "gitlab"
    assert event.branch == "main"
    assert event.after == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert event.forced is None
    assert why_ignored(event, "main") is None


def test_gitlab_wrong_or_missing_token_is_refused() -> None:
    """A GitLab delivery with a wrong or no X-Gitlab-Token is refused, naming no token."""
    body = body_of(GITLAB_PUSH)
    with pytest.raises(InvalidSignature) as caught:
        parse_webhook(gitlab_headers(token="guess"), body, SECRET)
    assert "guess" not in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(InvalidSignature):
        parse_webhook({"X-Gitlab-Event": "Push Hook"}, body, SECRET)


def test_gitlab_tag_push_does_not_trigger() -> None:
    """A GitLab tag push is authenticated but does not trigger a reconcile."""
    body = body_of(GITLAB_TAG_PUSH)
    event = parse_webhook(gitlab_headers(event="Tag Push Hook"), body, SECRET)
    assert not event.is_push
    assert why_ignored(event, "main") is not None


def test_gitea_push_is_recognised_as_gitea() -> None:
    """A Gitea push (which also sends X-GitHub-Event) is checked by its X-Gitea-Signature."""
    body = body_of(GITEA_PUSH)
    event = parse_webhook(gitea_headers(body), body, SECRET)
    assert event.provider == "gitea"
    assert event.branch == "develop"
    assert event.after == "bffeb74224043ba2feb48d137756c8a9331c449a"
    assert why_ignored(event, "develop") is None


def test_gitea_wrong_signature_is_refused() -> None:
    """A Gitea delivery signed with another secret is refused."""
    body = body_of(GITEA_PUSH)
    with pytest.raises(InvalidSignature):
        parse_webhook(gitea_headers(body, secret="other"), body, SECRET)


def test_push_to_another_branch_or_a_tag_is_ignored() -> None:
    """Only a push to the watched branch triggers; other branches and tags are ignored."""
    other = body_of({**GITHUB_PUSH, "ref": "refs/heads/feature"})
    event = parse_webhook(github_headers(other), other, SECRET)
    assert why_ignored(event, "main") == "push to branch 'feature', not the watched 'main'"
    tag = body_of({**GITHUB_PUSH, "ref": "refs/tags/v1.2.0"})
    event = parse_webhook(github_headers(tag), tag, SECRET)
    assert event.branch is None
    assert why_ignored(event, "main") == "push of 'refs/tags/v1.2.0', not of a branch"


def test_deleting_the_watched_branch_does_not_trigger() -> None:
    """A push that deletes the watched branch (new head all zeros) is ignored."""
    body = body_of({**GITHUB_PUSH, "after": "0" * 40, "deleted": True})
    event = parse_webhook(github_headers(body), body, SECRET)
    assert why_ignored(event, "main") == "branch 'main' was deleted"


def test_unknown_sender_is_unsupported() -> None:
    """A request without any provider's event header is not a webhook delivery."""
    with pytest.raises(UnsupportedEvent):
        parse_webhook({"Content-Type": "application/json"}, b"{}", SECRET)


def test_signed_push_with_a_body_that_is_not_json_is_unsupported() -> None:
    """A correctly signed push whose body is not a JSON object with 'ref' is refused."""
    for body in (b"not json", b"[1, 2]", b'{"after": "abc"}'):
        with pytest.raises(UnsupportedEvent):
            parse_webhook(github_headers(body), body, SECRET)
