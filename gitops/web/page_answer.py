"""The status page's answer, bounded and built once per record change.

``GET /api/page`` is polled by every open page every few seconds. ``PageAnswers`` keeps the
serialized answer (bytes) under the record's ``Store.page_mark`` and the hour: while neither
changes, N viewers cost one build and N cheap mark reads; requests that arrive during a
build wait for it rather than build again. ``bounded`` cuts every string of an answer to
``TEXT_LIMIT`` characters with a marker, so what the record holds (a long reason, a commit
message, a check's output) cannot make the answer large.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["TEXT_LIMIT", "PageAnswers", "bounded", "serialize"]

TEXT_LIMIT = 2000
"""Characters of one text the page answers shows; the rest is replaced by a marker."""


def bounded(value: Any, limit: int = TEXT_LIMIT) -> Any:
    """``value`` (JSON data) with each string longer than ``limit`` characters cut to
    ``limit`` and ``… [N more characters]`` added."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}… [{len(value) - limit} more characters]"
    if isinstance(value, dict):
        return {k: bounded(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(v, limit) for v in value]
    return value


def serialize(document: Any) -> bytes:
    """``document`` as the JSON bytes sent (as starlette's ``JSONResponse`` renders it)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class PageAnswers:
    """The last answer and the mark it was built at; ``builds`` counts the builds. Safe to
    share between the page's request threads."""

    def __init__(self) -> None:
        self.builds = 0
        self._kept: tuple[Hashable, bytes] | None = None
        self._lock = threading.Lock()

    def get(self, mark: Hashable, build: Callable[[], Any]) -> bytes:
        """The answer at ``mark``: the kept one, else ``build()`` bounded and serialized (one
        build at a time; a request arriving meanwhile takes its result)."""
        kept = self._kept
        if kept is not None and kept[0] == mark:
            return kept[1]
        with self._lock:
            kept = self._kept
            if kept is not None and kept[0] == mark:
                return kept[1]
            body = serialize(bounded(build()))
            self._kept = (mark, body)
            self.builds += 1
            return body
