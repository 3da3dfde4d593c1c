"""What the apply worker does first, on import: gevent's patching, and a cheaper start.

Imported first by ``gitops.workers.apply_worker``, before pyinfra, as pyinfra's CLI patches
before it imports pyinfra's API (``pyinfra_cli`` calls ``gevent.monkey.patch_all()`` on
import). Two cuts of the worker's start (each apply pays it once):

- ``patch``: ``patch_all`` announces
25 events, and for each gevent asks ``importlib.metadata`` for that event's plugins, which
  reads the entry points of every installed distribution again: 0.25 of the 0.35
  CPU-seconds ``patch_all`` cost here. ``patch`` reads them once and answers each event
  from that reading:
  the same plugins are called (gevent's own ``signal_os_incompat`` among them), in the
  same way.
- ``lazy``: paramiko imports ``invoke`` (0.3 CPU-seconds with what it imports) for one
  thing, an ssh_config ``Match exec``, which pyinfra answers with its own stand-in
  (``pyinfra.connectors.sshuserclient.config.FakeInvoke``); ``invoke`` is made a lazy
  stand-in that loads it only if something uses it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib import metadata
from typing import Any

import gevent.events
import gevent.monkey

_gevents_own = gevent.events.notify_and_call_entry_points


def _entry_points_read_once() -> Any:
    every = metadata.entry_points()

    def notify_and_call_entry_points(event: Any) -> None:
        gevent.events.notify(event)
        for plugin in every.select(group=event.ENTRY_POINT_NAME):
            plugin.load()(event)

    return notify_and_call_entry_points


def patch() -> None:
    """``gevent.monkey.patch_all()`` with one look-up of the installed plugins, which
    pyinfra's own call (``pyinfra_cli``) then uses too."""
    if gevent.events.notify_and_call_entry_points is _gevents_own:
        gevent.events.notify_and_call_entry_points = _entry_points_read_once()
    gevent.monkey.patch_all()



class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module not loaded yet; its first use loads it."""

    def __getattr__(self, attr: str) -> Any:  # called only for what the stand-in lacks
        if attr.startswith("__"):
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def lazy(name: str) -> None:
    """Make ``import name`` give a stand-in that loads the module when first used (an
    attribute read), if the module is installed and not loaded yet."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    sys.modules[name] = _Deferred(name)


patch()
lazy("invoke")
