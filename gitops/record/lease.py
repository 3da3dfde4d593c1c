"""Several controllers on one PostgreSQL: which ``gitops run`` holds each environment.

N daemons with the same settings and a PostgreSQL ``database`` share the environments: each
environment is applied only by the controller holding its lease, a row of the ``leases``
table (environment, holder, fencing token, expiry by the database's clock) that the holder
renews every ``lease_ttl / 3`` seconds. Another controller takes an environment only once its
lease has expired; the takeover bumps the token, so a holder that was cut off and comes back
cannot renew (its token is stale) and learns it lost the environment.

Why lease rows rather than session advisory locks: an advisory lock is released when the
server notices the session is gone, which after ``kill -9`` is at once but after a network
cut is when TCP gives up (minutes, or never with keepalives off), and the cut-off holder is
never told: it would go on applying while the server, once it drops the session, lets
another controller in. A lease row expires at a time both sides can reason about: the holder
counts its own validity from the moment it *sent* its last successful renewal, stops
claiming the environment at ``2/3`` of ``lease_ttl`` after that (``FENCE``), and sets the
environment's fence event, so its run stops before the next batch, while the database lets
another controller in only after the whole ``lease_ttl``. The remaining third is the margin
for a batch in flight (a batch longer than that, cut off from the database mid-way, may
still be finishing when the next holder starts: the README says so).

A request (trigger, retry, resume, rollback) that reaches a controller not holding the
environment is written to the ``requests`` table and taken by the holder within ``POLL``
seconds (the table outlives a holder's death: whoever holds the environment next takes it).

Rebalancing: each daemon says every ``lease_ttl / 3`` that it runs (the ``controllers``
table); one holding more than its fair share, ``ceil(environments / running controllers)``
(``fair_share``), gives the extra ones up at a clean point between their runs and tries them
again only after ``lease_ttl``, so the others take them (after kills, the survivor would
otherwise keep every environment). ``hold`` takes one environment's lease for a run outside
a daemon (``gitops reconcile --once`` on PostgreSQL): refused, naming the holder, while a
live controller holds it.

Used by the daemon (``loop.Daemon``) and the CLI only when the record is in PostgreSQL; with
SQLite one controller owns the state folder and ``reconcile.environment_lock`` (a
kernel-freed lock) keeps one run at a time. All the SQL is in ``store``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gitops.errors import TemporaryError
from gitops.record.store import Database, Store, StoreUnavailable, database_errors
from gitops.records import ControllerRequest

log = logging.getLogger("gitops.record.lease")

__all__ = ["FENCE", "POLL", "LeaseHeld", "Leases", "controller_id", "fair_share", "hold",
           "surplus"]

_T = TypeVar("_T")

def _errors() -> tuple[type[Exception], ...]:
    """What a database call may raise here (read at the call: psycopg loads on first use)."""
    return (StoreUnavailable, *database_errors())


FENCE = 2 / 3
"""The part of ``lease_ttl`` after its last renewal during which a holder acts on its lease."""
POLL = 0.5
"""Seconds between the holder's looks at its requests and at its leases' validity."""


class LeaseHeld(TemporaryError):
    """A run here was refused: a live controller holds the environment's lease."""


def fair_share(environments: int, controllers: int) -> int:
    """The most environments one controller should hold: ``ceil(environments / controllers)``."""
    return -(-environments // max(1, controllers))


def surplus(held: Sequence[str], environments: int, controllers: int) -> list[str]:
    """The held environments beyond this controller's fair share (to give up between runs,
    so that the others take them): the last ones by name."""
    return sorted(held)[fair_share(environments, controllers):]


def controller_id(name: str | None = None) -> str:
    """This controller's name in the leases: the configured one, else ``hostname:pid``."""
    return name or f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Held:
    token: int
    valid_until: float
    """By the local monotonic clock: the renewal's sending time plus ``FENCE * ttl``."""


class Leases:
    """This controller's leases; ``start`` runs the renewing and the request threads.

    ``on_lost(environment)`` is called once when a lease is lost (not renewed in time, or
    taken over); ``on_request(request)`` for each request taken for a held environment."""

    def __init__(self, database: Database, controller: str, ttl: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self.controller = controller
        self.ttl = ttl
        self.clock = clock
        self.retry_s = min(2.0, max(0.2, ttl / 10))
        """Seconds between a waiting controller's attempts to take an environment."""
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stores: dict[str, Store] = {}
        """One open connection per purpose (acquire, renew, requests, release), each used
        under its own lock: the environments' threads share the one that acquires."""
        self._uses = {purpose: threading.Lock()
                      for purpose in ("acquire", "renew", "requests", "release")}

    # -- holding ---------------------------------------------------------------------------

    def holds(self, environment: str) -> bool:
        """True while this controller may act on ``environment``."""
        with self._lock:
            held = self._held.get(environment)
            return held is not None and self.clock() < held.valid_until

    def token(self, environment: str) -> int | None:
        """The fencing token of ``environment`` while this controller may act on it."""
        with self._lock:
            held = self._held.get(environment)
            return held.token if held is not None and self.clock() < held.valid_until else None

    def held(self) -> list[str]:
        with self._lock:
            now = self.clock()
            return sorted(e for e, h in self._held.items() if now < h.valid_until)

    def try_acquire(self, environment: str) -> int | None:
        """Take ``environment`` when its lease is free or expired; its token, else None."""
        sent = [0.0]

        def acquire(store: Store) -> int | None:
            sent[0] = self.clock()  # once connected: the statement's sending time
            return store.acquire_lease(environment, self.controller, self.ttl)

        token = self._call("acquire", acquire)
        if token is None:
            return None
        with self._lock:
            self._held[environment] = _Held(token, sent[0] + FENCE * self.ttl)
        return token

    def renew(self) -> list[str]:
        """One round of renewals; returns the environments lost (taken over, or not renewed
        within ``FENCE * ttl``), no longer held."""
        with self._lock:
            tokens = {e: h.token for e, h in self._held.items()}
        if not tokens:
            return []
        sent = [0.0]

        def renew(store: Store) -> set[str]:
            sent[0] = self.clock()
            return store.renew_leases(self.controller, tokens, self.ttl)

        kept = self._call("renew", renew)
        lost: list[str] = []
        with self._lock:
            for environment, token in tokens.items():
                held = self._held.get(environment)
                if held is None or held.token != token:
                    continue
                if kept is not None and environment in kept:
                    held.valid_until = sent[0] + FENCE * self.ttl
                elif kept is not None:  # the database says another holds it
                    del self._held[environment]
                    lost.append(environment)
        return lost + self.expire()

    def expire(self) -> list[str]:
        """Forget the leases whose validity ran out here (renewals failed); returns them."""
        now = self.clock()
        with self._lock:
            gone = [e for e, h in self._held.items() if now >= h.valid_until]
            for environment in gone:
                del self._held[environment]
        return gone

    def release(self, environment: str) -> None:
        """Give ``environment``'s lease up now (rebalancing): another controller may take it."""
        with self._lock:
            held = self._held.pop(environment, None)
        if held is not None:
            self._call("release", lambda s: s.release_lease(environment, self.controller,
                                                            held.token))

    def heartbeat(self) -> int | None:
        """This controller is running (for ``lease_ttl``); how many are, None when unknown."""
        return self._call("renew", lambda s: s.heartbeat_controller(self.controller, self.ttl))

    def release_all(self) -> None:
        """Give every held lease up (a clean stop): the others take them at once."""
        with self._lock:
            held, self._held = self._held, {}
        for environment, h in held.items():
            self._call("release", lambda s, e=environment, t=h.token:  # type: ignore[misc]
                       s.release_lease(e, self.controller, t))

    # -- requests --------------------------------------------------------------------------

    def post(self, environment: str, action: str, *, actor: str, reason: str, force: bool,
             hosts: Sequence[str] = ()) -> None:
        """Leave a request for whoever holds ``environment`` (raises on a database error)."""
        with self.database.open() as store:
            store.post_request(environment, action, actor=actor, reason=reason, force=force,
                               hosts=hosts)

    def take_requests(self) -> list[ControllerRequest]:
        held = self.held()
        taken = self._call("requests", lambda s: s.take_requests(held, self.controller))
        return taken or []

    # -- the threads -----------------------------------------------------------------------

    def start(self, on_lost: Callable[[str], None],
              on_request: Callable[[ControllerRequest], None], *,
              on_surplus: Callable[[str], None] | None = None, environments: int = 0) -> None:
        """``on_surplus(environment)``: this controller holds more than its fair share of the
        ``environments`` (``fair_share``, by the controllers running): give that one up at
        a clean point between runs (called again each round until it is)."""
        def renewing() -> None:
            while not self._stop.wait(self.ttl / 3):
                for environment in self.renew():
                    on_lost(environment)
                running = self.heartbeat()
                if on_surplus is not None and running:
                    for environment in surplus(self.held(), environments, running):
                        on_surplus(environment)

        def polling() -> None:
            while not self._stop.wait(POLL):
                for environment in self.expire():
                    on_lost(environment)
                for request in self.take_requests():
                    on_request(request)

        self.heartbeat()  # counted by the others at once
        for name, target in (("renew", renewing), ("requests", polling)):
            thread = threading.Thread(target=target, daemon=True, name=f"gitops-lease-{name}")
            thread.start()
            self._threads.append(thread)

    def stop(self, *, release: bool) -> None:
        """Stop the threads; ``release``: give the leases up (no run of them is left)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.ttl)
        if release:
            self.release_all()
        for store in self._stores.values():
            store.close()
        self._stores.clear()

    def _call(self, purpose: str, fn: Callable[[Store], _T]) -> _T | None:
        """``fn`` on this purpose's kept connection, opened again after an error; None when
        the database cannot be reached (logged: the lease's validity runs out meanwhile)."""
        with self._uses[purpose]:
            try:
                store = self._stores.get(purpose)
                if store is None:
                    store = self.database.open(timeout=max(1.0, self.ttl / 3))
                    self._stores[purpose] = store
                return fn(store)
            except _errors() as exc:
                log.warning("leases: %s failed: %s", purpose,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                broken = self._stores.pop(purpose, None)
                if broken is not None:
                    with contextlib.suppress(Exception):  # a broken connection may not close
                        broken.close()
                return None


@contextlib.contextmanager
def hold(database: Database, environment: str, holder: str, ttl: float, *,
         wait: float = 0, clock: Callable[[], float] = time.monotonic
         ) -> Iterator[threading.Event]:
    """Hold ``environment``'s lease for one run outside a daemon (``gitops reconcile --once``
    and the other runs the CLI makes here), renewed every ``ttl / 3`` s and released on
    leaving; yields an event set when the lease is lost (the run stops before its next
    batch). Waits up to ``wait`` seconds for a live holder to let it go, then raises
    ``LeaseHeld`` naming that holder. It takes no requests: those stay for the daemons."""
    leases = Leases(database, holder, ttl, clock=clock)
    deadline = clock() + wait
    while leases.try_acquire(environment) is None:
        if clock() >= deadline:
            raise LeaseHeld(_held_by(database, environment, wait))
        time.sleep(min(leases.retry_s, max(0.0, deadline - clock())))
    lost = threading.Event()
    stop = threading.Event()

    def renewing() -> None:
        while not stop.wait(ttl / 3):
            if leases.renew() or not leases.holds(environment):
                lost.set()
        leases.expire()

    thread = threading.Thread(target=renewing, daemon=True, name="gitops-lease-cli")
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(ttl)
        leases.stop(release=True)


def _held_by(database: Database, environment: str, waited: float) -> str:
    with database.open(readonly=True) as store:
        lease = next((x for x in store.leases() if x.environment == environment), None)
    who = (f"controller {lease.holder!r} (lease token {lease.token}, expiring in "
           f"{max(0.0, lease.expires_in):.0f} s unless renewed)" if lease is not None
           else "another controller")
    waited_text = f" after waiting {waited:g} s" if waited else ""
    return (f"environment {environment!r} is held by {who}{waited_text}: its daemon applies it. "
            "`gitops reconcile` without --once asks that daemon (through its API), "
            "--lease-timeout SECONDS waits for the lease")
