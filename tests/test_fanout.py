"""How an apply splits a batch's hosts across worker processes (``gitops.apply.shares``)."""

from __future__ import annotations

import os

import pytest

from gitops.apply import MIN_HOSTS_PER_WORKER, shares
from gitops.model import DeclaredHost, DeclaredState, EnvironmentSettings, ResolvedSSH

SSH = ResolvedSSH(user="root", port=22, key_file=None, known_hosts_file=None,
                  host_key_checking="yes", connect_timeout=10)


def _state(hosts: int, workers: int | None = None) -> DeclaredState:
    return DeclaredState(
        environment="lab", root="/nonexistent",
        settings=EnvironmentSettings(workers=workers),
        hosts=tuple(DeclaredHost(name=f"web-{i}", address=f"10.0.0.{i + 1}", groups=("all",),
                                 ssh=SSH, vars={}, services={"app": {}})
                    for i in range(hosts)),
        service_order=("app",),
    )


def _names(parts: list[DeclaredState]) -> list[list[str]]:
    return [[h.name for h in part.hosts] for part in parts]


def test_set_workers_split_hosts_in_order_into_near_equal_shares() -> None:
    """``workers: 3`` splits 10 hosts into 4, 3 and 3 consecutive hosts, none lost."""
    parts = shares(_state(10, workers=3))
    assert _names(parts) == [[f"web-{i}" for i in range(0, 4)],
                             [f"web-{i}" for i in range(4, 7)],
                             [f"web-{i}" for i in range(7, 10)]]
    assert all(p.service_order == ("app",) for p in parts)


def test_more_workers_than_hosts_is_one_host_each() -> None:
    """``workers: 8`` on 3 hosts starts 3 workers, one host each."""
    assert _names(shares(_state(3, workers=8))) == [["web-0"], ["web-1"], ["web-2"]]


def test_by_default_a_small_batch_stays_in_one_worker() -> None:
    """Without ``workers``, fewer than 2 x MIN_HOSTS_PER_WORKER hosts stay in one worker."""
    state = _state(2 * MIN_HOSTS_PER_WORKER - 1)
    assert shares(state) == [state]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_by_default_a_big_batch_uses_the_cores() -> None:
    """Without ``workers``, 100 hosts are split across the controller's cores (10 at least
    each)."""
    parts = shares(_state(100))
    assert len(parts) == min(os.cpu_count() or 1, 100 // MIN_HOSTS_PER_WORKER)
    assert sum(len(p.hosts) for p in parts) == 100


def test_workers_must_be_positive() -> None:
    """``workers: 0`` is refused by the settings' validation."""
    with pytest.raises(ValueError, match="workers"):
        EnvironmentSettings(workers=0)
