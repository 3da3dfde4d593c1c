"""The apply worker's start (``gitops.workers.startup``): patched as pyinfra needs, less to load."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import gevent.events
seen = []
gevent.events.subscribers.append(lambda event: seen.append(type(event).__name__))
import gitops.workers.apply_worker
import socket, threading, gevent.socket, gevent.threading
print(socket.socket is gevent.socket.socket, threading.Lock is gevent.threading.Lock)
print("invoke.tasks" in sys.modules)
print("GeventWillPatchAllEvent" in seen and "GeventDidPatchAllEvent" in seen)
import invoke
print(callable(invoke.run), "invoke.tasks" in sys.modules)
"""


def test_apply_worker_starts_gevent_patched_without_loading_invoke() -> None:
    """The apply worker starts with the standard library patched for gevent (as pyinfra's CLI
    patches it, gevent's patch events announced) and without loading ``invoke``, which
    still loads when something uses it."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert out[0] == "True True"
    assert out[1] == "False"
    assert out[2] == "True"
    assert out[3] == "True True"
