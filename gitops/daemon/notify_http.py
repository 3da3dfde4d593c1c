"""Sending one JSON request over HTTPS with the standard library: no redirect followed,
connection errors, 5xx and 429 retried with backoff, every error text scrubbed of the
secrets in it. Never raises: the answer says what happened (``Answer``).

Retries: connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full
jitter (``backoff * 2**n`` seconds, times a random factor in [0.5, 1.5], capped at
``max_delay``); a ``Retry-After`` header (seconds or an HTTP date) is honoured, within the same
cap. Any other 4xx is final: the request is wrong and sending it again will not help. ``sleep`` is
injected so that tests do not wait.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["Answer", "Scrubber", "Sleep", "backoff_delay", "retry_after_seconds", "send_json"]

Sleep = Callable[[float], None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (an error), not a hop: urllib would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect())


class Scrubber:
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


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait (seconds or an HTTP date)."""
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
class Answer:
    """What came of one request (``ok``: a 2xx); ``error`` is scrubbed of secrets."""

    ok: bool
    status: int | None
    attempts: int
    error: str | None
    data: Any = None
    """The answer's JSON body, when it had one."""
    link: str = ""
    """The answer's ``Link`` header (GitHub's and Gitea's pagination)."""


def backoff_delay(attempts: int, backoff: float, max_delay: float) -> float:
    """Seconds to wait after ``attempts`` failed tries: exponential, full jitter, capped."""
    delay: float = min(max_delay, backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.5)
    return min(max_delay, delay)


def send_json(
    url: str, headers: dict[str, str], body: dict[str, Any] | list[Any] | bytes | None, *,
    scrub: Scrubber,
    timeout: float, retries: int, sleep: Sleep, backoff: float, max_delay: float,
    method: str = "POST",
) -> Answer:
    """Send ``body`` as JSON (POST unless ``method``; bytes: already encoded, as signed);
    retry connection errors, 5xx and 429. Never raises."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
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
                return Answer(True, status, attempts, None, answer, link)
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
                retry_after = retry_after_seconds(exc.headers.get("Retry-After"), time.time())
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
            return Answer(False, status, attempts, error)
        delay = backoff_delay(attempts, backoff, max_delay)
        if retry_after is not None:
            delay = max(delay, min(max_delay, retry_after))
        sleep(min(delay, max_delay))
