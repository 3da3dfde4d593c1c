"""The guard's remote steps in the apply worker (``gitops.pipeline.guard``): what each
operation of a guarded service changes, the revert armed and fed on each host before its
first change, and the preflight and settling around the apply."""

from __future__ import annotations

import contextlib
import inspect
import secrets as token_source
import sys
from collections import defaultdict
from typing import Any

import gevent
from pyinfra.api.command import StringCommand
from pyinfra.api.state import State
from pyinfra.context import ctx_host

from gitops.model import DeclaredState
from gitops.pipeline import guard, remote
from gitops.records import HostGuard
from gitops.workers.apply_ops import progress

__all__ = ["Guards"]


class Guards:
    """The guarded applies of one worker (``gitops.pipeline.guard``): which operations of guarded
    services change which files and units (read while the deploys load), and, per host, the
    revert armed before its first change."""

    def __init__(self, declared: DeclaredState) -> None:
        self.services = frozenset(declared.guarded)
        self.declared = {h.name: h for h in declared.hosts}
        self.files = declared.guard_files
        self.timeout = declared.settings.guard.confirm_timeout
        self.targets: dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        """(host, op hash) -> the service, the files and the units the operation changes."""
        self.token: dict[str, str] = {}
        self.saved: dict[str, dict[str, int]] = defaultdict(dict)
        self.units: dict[str, list[str]] = defaultdict(list)
        self.earlier: dict[str, str] = {}
        self.contact: dict[str, str] = {}
        self.applied: dict[str, set[str]] = defaultdict(set)
        self.beats: list[Any] = []

    def note(self, host: str, op_hash: str, service: str) -> None:
        """Called from inside an operation's call in a guarded service's deploy: read what
        it changes from the operation's own arguments."""
        frame = sys._getframe(2)  # recording() <- pyinfra's decorated operation
        func, args, kwargs = (frame.f_locals.get(k) for k in ("func", "args", "kwargs"))
        files: tuple[str, ...] = ()
        units: tuple[str, ...] = ()
        if callable(func) and isinstance(args, tuple) and isinstance(kwargs, dict):
            try:
                bound = inspect.signature(func).bind_partial(*args, **kwargs).arguments
            except (TypeError, ValueError):
                bound = {}
            module = str(getattr(func, "__module__", "")).rsplit(".", 1)[-1]
            files, units = guard.targets(module, getattr(func, "__name__", ""), bound)
        self.targets[(host, op_hash)] = (service, files, units)
        self.applied[host].add(service)

    def restores(self, host: str, op_hash: str, seen: set[str]) -> list[str]:
        """What a revert would restore for this operation (``gitops plan``)."""
        service, files, units = self.targets.get((host, op_hash), ("", (), ()))
        out = []
        for path in (*self.files.get(service, ()), *files):
            if path not in seen:
                seen.add(path)
                out.append(path)
        for unit in units:
            if f"restart {unit}" not in seen:
                seen.add(f"restart {unit}")
                out.append(f"restart {unit}")
        return out

    def wrap(self, host: str, op_hash: str, generator: Any) -> Any:
        """``generator`` that, before its first command (the operation changes the host),
        arms the host's revert and saves what the operation changes."""
        if (host, op_hash) not in self.targets:
            return generator

        def guarded() -> Any:
            inner = generator()
            first = next(inner, None)
            if first is None:
                return  # nothing to change: nothing armed, nothing saved
            yield StringCommand(self._before_change(host, op_hash))
            yield first
            yield from inner

        return guarded

    def _before_change(self, host: str, op_hash: str) -> str:
        service, files, units = self.targets[(host, op_hash)]
        parts = []
        if host not in self.token:
            self.token[host] = token_source.token_hex(8)
            parts.append(guard.arm_command(self.token[host], self.timeout))
            progress(f"{host}: guard armed (reverts by itself {self.timeout} s after the "
                     "apply unless the controller reaches it again)")
            self.beats.append(gevent.spawn(self._beat, ctx_host.get()))
        saved = self.saved[host]
        new = [p for p in (*self.files.get(service, ()), *files) if p not in saved]
        for path in new:
            saved[path] = len(saved) + 1
        if new:
            parts.append(guard.save_command((saved[p], p) for p in new))
        fresh = [u for u in units if u not in self.units[host]]
        if fresh:
            self.units[host] += fresh
            parts.append(guard.unit_command(fresh))
        parts.append(guard.extend_command(self.timeout))
        # a step that fails (no systemd-run, a file that cannot be saved) fails the
        # operation before it changes anything: never a change without its guard
        return self._root(host, " && ".join(f"( {p} )" for p in parts))

    def _root(self, host: str, command: str) -> str:
        """``command`` as root on ``host`` (``gitops.pipeline.remote``: sudo when declared)."""
        return remote.as_root(self.declared[host], command)

    def _beat(self, host: Any) -> None:
        """While the apply goes on, keep moving the host's deadline (an operation may take
        longer than the timeout: an install); stopped when the apply ends (``settle``) or
        dies with the worker, so the timeout then runs from the last beat."""
        beat = StringCommand(self._root(host.name, guard.extend_command(self.timeout)))
        aside = getattr(host.connector, "run_aside", None)  # beside a long command
        while True:
            gevent.sleep(max(1.0, self.timeout / 4))
            with contextlib.suppress(Exception):
                if aside is not None:
                    aside(beat)
                else:
                    host.run_shell_command(beat)

    def hosts(self, state: State) -> list[Any]:
        return [h for h in state.active_hosts if self.applied.get(h.name)]

    def preflight(self, state: State) -> dict[Any, str]:
        """Before executing: a revert an earlier run armed on a host is run now (never two
        guards at once), and what any earlier revert restored is recorded once. Returns the
        hosts where the guard cannot run as root (sudo wants a password), each with its
        one-line message: they must not apply."""
        refused: dict[Any, str] = {}

        def one(host: Any) -> None:
            dh = self.declared[host.name]
            try:
                ok, output = host.run_shell_command(StringCommand(
                    self._root(host.name, guard.preflight_command())))
            except Exception as exc:  # the host's own operations report a lost connection
                why = remote.sudo_failure(dh.name, dh.ssh.user, str(exc))
                if why is not None:
                    refused[host] = why
                return
            why = None if ok else remote.sudo_failure(dh.name, dh.ssh.user, output.stderr)
            if why is not None:
                refused[host] = why
                return
            answer = guard.parse_answer(output.stdout) if ok else None
            if answer is not None:
                how = (f"a revert armed by an earlier apply ({answer.earlier}) was run before "
                       "this one" if answer.earlier else
                       "an earlier guarded apply had been reverted by the host")
                self.earlier[host.name] = f"{how}: {'; '.join(answer.restored) or 'nothing'}"
                progress(f"{host.name}: {self.earlier[host.name]}")

        hosts = self.hosts(state)
        gevent.joinall([state.pool.spawn(one, h) for h in hosts])
        return refused

    def settle(self, state: State) -> None:
        """After executing: the confirm window of each armed host starts now."""
        gevent.killall(self.beats)

        def one(host: Any) -> None:
            with contextlib.suppress(Exception):
                ok, _ = host.run_shell_command(StringCommand(
                    self._root(host.name, guard.extend_command(self.timeout))))
                if ok:
                    self.contact[host.name] = guard.utc_now()

        armed = [h for h in state.inventory if h.name in self.token]
        for h in armed:
            self.contact.setdefault(h.name, guard.utc_now())
        gevent.joinall([state.pool.spawn(one, h) for h in armed])

    def record(self, host: str) -> HostGuard | None:
        if not self.applied.get(host):
            return None
        return HostGuard(token=self.token.get(host, ""), saved=tuple(self.saved.get(host, {})),
                         units=tuple(self.units.get(host, ())),
                         last_contact=self.contact.get(host, ""),
                         earlier=self.earlier.get(host, ""),
                         services=tuple(sorted(self.applied[host])))
