"""Delivery figures read from the store for the metrics and the API, kept between scrapes:
per environment (``delivery_figures``) and per team (``team_figures``), computed again only
when a run starts or finishes, or after ``DELIVERY_CACHE_S`` seconds."""

from __future__ import annotations

import threading
import time
from typing import Any

from gitops.record.store import Store

__all__ = ["DELIVERY_CACHE_S", "DELIVERY_WINDOW", "delivery_figures", "team_figures"]

DELIVERY_WINDOW = 90
"""Days of history behind the delivery gauges (label ``window="90d"``)."""

DELIVERY_CACHE_S = 60.0
"""How long computed delivery figures are reused while no run starts or finishes."""

_delivery_cache: dict[tuple[str, str | None, int], tuple[tuple[Any, ...], float,
                                                         dict[str, dict[str, Any]]]] = {}
_delivery_lock = threading.Lock()


def delivery_figures(store: Store, environment: str | None = None,
                     days: int = DELIVERY_WINDOW) -> dict[str, dict[str, Any]] | None:
    """``gitops.report.delivery`` figures per environment as dicts; None until that module exists.

    Computing them reads the whole window (over 100 ms for 1,000 runs), so the result is kept
    for ``DELIVERY_CACHE_S`` seconds unless a run has started or finished since.
    """
    try:
        from gitops.report import delivery  # written alongside; optional until it lands
    except ImportError:
        return None
    key = (store.identity()[0], environment, days)
    fingerprint = store.change_mark()
    clock = time.monotonic()
    with _delivery_lock:
        cached = _delivery_cache.get(key)
    if cached is not None and cached[0] == fingerprint and clock - cached[1] < DELIVERY_CACHE_S:
        return cached[2]
    found = delivery.delivery_metrics(store, environment=environment, days=days)
    figures = {name: dict(m.as_dict()) for name, m in found.items()}
    with _delivery_lock:
        _delivery_cache[key] = (fingerprint, clock, figures)
    return figures


_team_cache: dict[str, tuple[tuple[Any, ...], float, dict[str, dict[str, Any]]]] = {}


def team_figures(store: Store, owners: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``gitops.report.delivery.compare`` by team as dicts, cached as ``delivery_figures`` is."""
    from gitops.report import delivery

    key = store.identity()[0]
    fingerprint = (*store.change_mark(), tuple(sorted(owners.items())))
    clock = time.monotonic()
    with _delivery_lock:
        cached = _team_cache.get(key)
    if cached is not None and cached[0] == fingerprint and clock - cached[1] < DELIVERY_CACHE_S:
        return cached[2]
    figures = {name: g.current.as_dict() for name, g in delivery.compare(
        store, owners, by="team", days=DELIVERY_WINDOW).items() if name != delivery.NO_TEAM}
    with _delivery_lock:
        _team_cache[key] = (fingerprint, clock, figures)
    return figures
