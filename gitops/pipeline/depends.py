"""Dependencies between services: the apply order, and what a requirement that is not ready
leaves undone.

A service declares what it requires in ``deploys/<service>/service.yml``
(``requires: [app]``, see ``gitops.model.ServiceMeta``); ``gitops.pipeline.load`` validates the
graph
and orders the services with ``apply_order``. What a failed requirement leaves undone on a
host is a ``DependencyNotReady`` check result (``not_ready``): made by ``gitops.pipeline.reconcile``
for a host whose apply failed and by the verify worker for a requirement whose checks failed.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gitops.records import CheckResult

__all__ = ["NOT_READY", "apply_order", "cycles", "not_ready"]

NOT_READY = "DependencyNotReady"
"""The status of a service's checks that were not run because a requirement is not ready."""
NOT_READY_CHECK = "requires"
"""The check name of that result (it stands for every check of the service)."""


def apply_order(order: Iterable[str], requires: Mapping[str, Iterable[str]]) -> list[str]:
    """``order`` sorted so that each service comes after what it requires, ties (and
    services in a cycle, reported by ``cycles``) kept in ``order``: a stable topological
    order. Requirements not in ``order`` are ignored."""
    rest = list(dict.fromkeys(order))
    known = set(rest)
    placed: list[str] = []
    done: set[str] = set()
    while rest:
        ready = next((s for s in rest
                      if all(r in done or r not in known for r in requires.get(s, ()))), None)
        if ready is None:  # a cycle: keep the rest in the given order
            placed += rest
            break
        placed.append(ready)
        done.add(ready)
        rest.remove(ready)
    return placed


def cycles(order: Iterable[str], requires: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Each dependency cycle once, as the path of services from its first service (in
    ``order``) back to it: ``[["app", "web", "app"]]``."""
    services = list(dict.fromkeys(order))
    index = {s: i for i, s in enumerate(services)}
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the path, 2: finished

    def walk(service: str, path: list[str]) -> None:
        state[service] = 1
        path.append(service)
        for r in requires.get(service, ()):
            if r not in index:
                continue
            if state.get(r) == 1:
                loop = path[path.index(r):]
                key = frozenset(loop)
                if key not in seen:
                    seen.add(key)
                    first = min(range(len(loop)), key=lambda i: index[loop[i]])
                    loop = loop[first:] + loop[:first]
                    found.append([*loop, loop[0]])
            elif state.get(r) is None:
                walk(r, path)
        path.pop()
        state[service] = 2

    for s in services:
        if s not in state:
            walk(s, [])
    return found


def not_ready(host: str, services: Iterable[str], requires: Mapping[str, Iterable[str]],
              failed: Mapping[str, str]) -> list[CheckResult]:
    """A ``DependencyNotReady`` result for each of ``services`` (in apply order) that
    requires, directly or through another, a service in ``failed`` (service -> what went
    wrong with it on ``host``)."""
    why = dict(failed)
    out = []
    for service in services:
        if service in why:
            continue
        blocking = [r for r in requires.get(service, ()) if r in why]
        if not blocking:
            continue
        reason = "; ".join(f"requires {r}, which {why[r]}" for r in blocking)
        why[service] = f"is not ready ({NOT_READY})"
        out.append(CheckResult(host=host, service=service, check=NOT_READY_CHECK,
                               status=NOT_READY, message=reason))
    return out
