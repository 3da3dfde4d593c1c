"""One poll loop for the tests that wait on a daemon, a queue or a lease to get somewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """The first truthy value of ``condition()`` within ``timeout`` s, polled every ``every`` s;
    an AssertionError naming ``what`` when it never comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
