"""Request bodies of the API: read within a size limit, parsed as JSON, and the options
object of an operator's call (reason, revision, actor, force) checked field by field.
Every refusal says its status (400 or 413) and a message to answer."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gitops import freetext
from gitops.errors import UsageError

__all__ = ["BadBody", "BodyTooLarge", "acting", "api_options", "json_body", "read_body"]


class BodyTooLarge(Exception):
    """A request body over its limit (``read_body``)."""


class BadBody(Exception):
    """A request body refused: ``status`` (400 or 413) and a message to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes.

    An announced Content-Length over the limit is refused before reading; a chunked body is
    read until it passes the limit and no further.
    """
    announced = request.headers.get("content-length")
    if announced is not None:
        try:
            if int(announced) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, limit: int) -> Any:
    """The request's JSON value (None for an empty body); ``BadBody`` 413 past ``limit``
    bytes, 400 when it is not JSON or nests too deep for the parser."""
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        raise BadBody(413, f"body over {limit} bytes") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadBody(400, "the body is not JSON") from None
    except RecursionError:
        raise BadBody(400, "the body's JSON nests too deep") from None


def api_options(data: Any, *, force: bool = False) -> dict[str, str]:
    """The optional JSON object of an API call (parsed; None when the body is empty):
    ``reason``, ``revision``, ``actor`` strings (a reason and an actor one clean line each,
    ``freetext.line``: else ``BadText``) and, when ``force`` (a reconcile), ``force``: a
    boolean, run outside the maintenance window (kept as "true")."""
    allowed = {"reason", "revision", "actor", *(("force",) if force else ())}
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError("the body must be a JSON object")
    options: dict[str, str] = {}
    forced = data.get("force") if force else None
    if forced is not None and not isinstance(forced, bool):
        raise UsageError("'force' must be true or false")
    if forced:
        if not str(data.get("reason") or "").strip():
            raise UsageError("'force' needs a 'reason': who overrode what, and why, is recorded")
        options["force"] = "true"
    for key in ("reason", "revision", "actor"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UsageError(f"{key!r} must be a string")
        options[key] = freetext.line(repr(key), value) if key != "revision" else value
    refuse_unknown(data, allowed)
    return options


def refuse_unknown(data: dict[str, Any], allowed: set[str]) -> None:
    """``UsageError`` naming the fields of ``data`` not in ``allowed``: each quoted with its
    control and non-ASCII characters escaped and cut to 40 characters, at most five, so a
    hostile key never reaches a message (or a log line) as a line break or a wall of text."""
    unknown = sorted(str(key) for key in set(data) - allowed)
    if unknown:
        shown = ", ".join(ascii(key[:40]) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UsageError(f"unknown field(s): {shown}{more}")


def acting(caller: Any, options: dict[str, str]) -> str:
    """Who an action is recorded as: the authenticated ``caller`` (``access.Caller``), never
    a field of the request; only a token made ``--on-behalf`` may name the person it acts
    for (``actor``: recorded ``ci (for bob)``). Else ``UsageError`` naming the field."""
    person = options.get("actor")
    if person is not None and not caller.on_behalf:
        raise UsageError(f"field 'actor' is not accepted: the action is recorded as the "
                         f"caller ({caller.name}); only a token made with --on-behalf may "
                         "name the person it acts for")
    return str(caller.actor(person))
