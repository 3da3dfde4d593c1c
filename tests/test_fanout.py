"""How an apply splits a batch's hosts across worker processes (``gitops.pipeline.apply.shares``)
and,
across controllers, what a share's job carries and what the holder does with each share
(``gitops.daemon.fanout``): no database here (``test_fanout_queue`` has PostgreSQL)."""

from __future__ import annotations

import json
import os

import pytest

from gitops.daemon.fanout import ShareJob, next_steps
from gitops.model import DeclaredHost, DeclaredState, EnvironmentSettings, ResolvedSSH
from gitops.pipeline.apply import MIN_HOSTS_PER_WORKER, shares
from gitops.records import ShareRow
from gitops.settings import FanoutSettings, Settings

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


# -- across controllers (``gitops.daemon.fanout``): the job and the holder's decisions ------------


def _row(state: str, *, expires_in: float | None = None, age_s: float = 0.0) -> ShareRow:
    return ShareRow(id=1, environment="lab", token=3, hosts=("web-0",), state=state,
                    attempt=1 if state != "queued" else 0, worker=None, job=7,
                    expires_in=expires_in, age_s=age_s, result=None, error=None)


@pytest.mark.parametrize(("row", "holding", "action"), [
    (_row("done"), True, "done"),
    (_row("failed"), True, "failed"),
    (_row("abandoned"), True, "failed"),
    (_row("running", expires_in=4.0), True, "wait"),
    (_row("running", expires_in=-0.1), True, "requeue"),
    (_row("queued", age_s=10), True, "wait"),
    (_row("queued", age_s=61), True, "run here"),
    (_row("running", expires_in=4.0), False, "lost"),
    (_row("done"), False, "done"),
])
def test_the_holder_decides_each_share_from_its_row(row: ShareRow, holding: bool,
                                                    action: str) -> None:
    """A finished share is collected; an expired claim (dead worker) is queued again; one
    no worker started within start_timeout runs on the holder; without the lease, it gives
    up."""
    assert next_steps([row], holding=holding, start_timeout=60) == [(row, action)]


def test_two_controllers_split_a_batch_into_twice_the_shares() -> None:
    """``workers: 2`` on each of 2 controllers: 4 shares of 10 hosts, none lost."""
    parts = shares(_state(10, workers=2), controllers=2)
    assert [len(p.hosts) for p in parts] == [3, 3, 2, 2]
    assert sorted(h for p in _names(parts) for h in p) == sorted(f"web-{i}" for i in range(10))


def test_a_share_job_carries_names_and_never_a_secret_value() -> None:
    """The job's arguments (stored by the queue) name the hosts and services; a secret
    parameter's value is not in them, and the worker's selection gives the holder's part."""
    state = _state(4).model_copy(update={"redact": ("s3cret-value",)})
    hosts = tuple(h.model_copy(update={"services": {"app": {"token": "s3cret-value"},
                                                    "web": {}}}) for h in state.hosts)
    state = state.model_copy(update={"hosts": hosts, "service_order": ("app", "web")})
    part = state.limit({"web-1", "web-2"}).only_services({"web-1": {"web"}, "web-2": {"app"}})
    job = ShareJob.of(9, "lab", "a" * 40, part, dry=False, journal=True, timeout=60)
    text = json.dumps(job.args())
    assert "s3cret-value" not in text
    assert ShareJob.from_args(json.loads(text)) == job
    selected = job.select(state)
    assert [(h.name, list(h.services)) for h in selected.hosts] == [("web-1", ["web"]),
                                                                    ("web-2", ["app"])]


def test_the_fanout_across_controllers_needs_postgresql() -> None:
    """``fanout.remote`` with the SQLite record is refused, naming the field."""
    with pytest.raises(ValueError, match=r"fanout\.remote[\s\S]*postgresql"):
        Settings(fanout=FanoutSettings(remote=True))
