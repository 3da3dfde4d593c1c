"""Test helper: a local stand-in for the GitHub, GitLab and Gitea APIs the previews talk to.

The Git hosts cannot be reached from here, so this HTTP server on loopback answers as each
one documents (commit statuses; GitHub issue comments, GitLab merge request notes, Gitea issue
comments: paths, methods, auth headers, JSON fields, size limits) and keeps what it was sent.
A request off the documented format is answered 422 and kept in ``problems``.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "api-token-for-tests"
BOT_ID, BOT_LOGIN = 1, "gitops-bot"
"""The user ``TOKEN`` authenticates as (``GET /user``); the comments it creates are its."""

_STATES = {
    "github": {"error", "failure", "pending", "success"},
    "gitea": {"pending", "success", "error", "failure", "warning"},
    "gitlab": {"pending", "running", "success", "failed", "canceled"},
}
_LIMITS = {"github": 65536, "gitea": 65536, "gitlab": 1_000_000}
_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
_PROJECT = r"/projects/(?P<project>[^/]+)"


@dataclass
class Comment:
    id: int
    number: int
    body: str
    edits: int = 0
    author_id: int = BOT_ID


@dataclass
class GitHost:
    """One provider's stand-in; ``base`` is its API URL."""

    provider: str
    base: str = ""
    statuses: list[dict[str, Any]] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    logins: dict[int, str] = field(default_factory=lambda: {BOT_ID: BOT_LOGIN})

    def __post_init__(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.handle(self, "GET")

            def do_POST(self) -> None:
                host.handle(self, "POST")

            def do_PATCH(self) -> None:
                host.handle(self, "PATCH")

            def do_PUT(self) -> None:
                host.handle(self, "PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.provider == "gitlab":
            self.base += "/api/v4"
        elif self.provider == "gitea":
            self.base += "/api/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_comment(self, number: int, body: str, *, author_id: int, login: str) -> Comment:
        """A comment someone else wrote (as through the host's page)."""
        comment = Comment(len(self.comments) + 1, number, body, author_id=author_id)
        self.logins[author_id] = login
        self.comments.append(comment)
        return comment

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked at each request)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    # -- the documented formats ------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        status, answer = self.route(method, url.path, url.query, headers, raw)
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        with self.changed:
            self.changed.notify_all()

    def _fail(self, problem: str) -> tuple[int, Any]:
        self.problems.append(problem)
        return 422, {"message": problem}

    def _auth(self, headers: dict[str, str]) -> str | None:
        if not headers.get("user-agent"):
            return "no User-Agent"
        if self.provider == "github":
            if headers.get("authorization") != f"Bearer {TOKEN}":
                return "GitHub wants Authorization: Bearer <token>"
            if headers.get("accept") != "application/vnd.github+json":
                return "GitHub wants Accept: application/vnd.github+json"
            if headers.get("x-github-api-version") != "2022-11-28":
                return "GitHub wants X-GitHub-Api-Version: 2022-11-28"
        elif self.provider == "gitea":
            if headers.get("authorization") != f"token {TOKEN}":
                return "Gitea wants Authorization: token <token>"
        elif headers.get("private-token") != TOKEN:
            return "GitLab wants PRIVATE-TOKEN: <token>"
        return None

    def route(self, method: str, path: str, query: str, headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        self.requests.append((method, path))
        problem = self._auth(headers)
        if problem is not None:
            return self._fail(problem)
        prefix = urllib.parse.urlsplit(self.base).path
        if not path.startswith(prefix):
            return self._fail(f"not under the API's path {prefix}: {path}")
        path = path[len(prefix):]
        body: Any = None
        if raw:
            if headers.get("content-type") != "application/json":
                return self._fail("a JSON body without Content-Type: application/json")
            body = json.loads(raw)
        if method == "GET" and path == "/user":  # the token's own user, as each documents
            return 200, self._user(BOT_ID)
        owner = _PROJECT if self.provider == "gitlab" else _REPO
        if method == "POST" and (m := re.fullmatch(owner + r"/statuses/(?P<sha>[0-9a-f]{40})",
                                                    path)):
            return self.status(m, body)
        if self.provider == "gitlab":
            listing = re.fullmatch(_PROJECT + r"/merge_requests/(?P<n>\d+)/notes", path)
            edit = re.fullmatch(_PROJECT + r"/merge_requests/(?P<n>\d+)/notes/(?P<id>\d+)", path)
            edit_method = "PUT"
        else:
            listing = re.fullmatch(_REPO + r"/issues/(?P<n>\d+)/comments", path)
            edit = re.fullmatch(_REPO + r"/issues/comments/(?P<id>\d+)", path)
            edit_method = "PATCH"
        if listing and method == "GET":
            number = int(listing.group("n"))
            author = "author" if self.provider == "gitlab" else "user"
            found = [{"id": c.id, "body": c.body, author: self._user(c.author_id)}
                     for c in self.comments if c.number == number]
            if self.provider != "gitea":
                params = urllib.parse.parse_qs(query)
                page = int(params.get("page", ["1"])[0])
                per = int(params.get("per_page", ["20"])[0])
                if per > 100:
                    return self._fail("per_page is at most 100")
                found = found[(page - 1) * per: page * per]
            return 200, found
        if listing and method == "POST":
            problem = self._comment_body(body)
            if problem:
                return self._fail(problem)
            comment = Comment(len(self.comments) + 1, int(listing.group("n")), body["body"])
            self.comments.append(comment)
            return 201, {"id": comment.id, "body": comment.body}
        if edit and method == edit_method:
            problem = self._comment_body(body)
            if problem:
                return self._fail(problem)
            comment = next((c for c in self.comments if c.id == int(edit.group("id"))), None)
            if comment is None:
                return 404, {"message": "Not Found"}
            comment.body, comment.edits = body["body"], comment.edits + 1
            return 200, {"id": comment.id, "body": comment.body}
        return self._fail(f"{self.provider} has no {method} {path}")

    def _user(self, user_id: int) -> dict[str, Any]:
        """A user as GitHub and Gitea (``login``) or GitLab (``username``) show one."""
        name = "username" if self.provider == "gitlab" else "login"
        return {"id": user_id, name: self.logins[user_id]}

    def _comment_body(self, body: Any) -> str | None:
        if not isinstance(body, dict) or set(body) != {"body"} or not isinstance(body["body"], str):
            return 'a comment is {"body": "<text>"}'
        if len(body["body"]) > _LIMITS[self.provider]:
            return f"a comment body over {_LIMITS[self.provider]} characters"
        return None

    def status(self, match: re.Match[str], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("state") not in _STATES[self.provider]:
            return self._fail(f"state not one of {_STATES[self.provider]}")
        allowed = {"state", "target_url", "description",
                   "name" if self.provider == "gitlab" else "context"}
        if set(body) - allowed:
            return self._fail(f"unknown status fields {set(body) - allowed}")
        if self.provider == "github" and len(body.get("description", "")) > 140:
            return self._fail("description over 140 characters")
        self.statuses.append({"sha": match.group("sha"), **body})
        return 201, {"id": len(self.statuses), **body}
