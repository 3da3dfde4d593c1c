"""Prometheus metrics and the JSON status API over a real store, a real uvicorn, and the
dashboard and alert rules files checked against the metrics actually exported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import in_ci
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gitops.record.store import ENVIRONMENT, Condition, Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    OpResult,
    Revision,
    VerifyReport,
)
from gitops.web.metrics import METRICS, render, routes
from gitops.web.server import bound_port, start_in_thread, stop

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
SECRET = "token=hunter2-never-in-a-label"
SHA1 = "a" * 40
SHA2 = "b" * 40
HOSTS = ("web1", "web2")


def _revision(sha: str, message: str = "change things") -> Revision:
    return Revision(sha=sha, branch="main", author="Ann <ann@example.org>",
                    committed_at=datetime(2026, 11, 1, tzinfo=UTC), message=message)


def _apply(hosts: tuple[str, ...], failed: tuple[str, ...] = ()) -> ApplyReport:
    return ApplyReport(hosts=tuple(
        HostApply(host=h, status="failed" if h in failed else "ok",
                  error=f"exit 1 {SECRET}" if h in failed else None, duration_s=1.0,
                  ops=(OpResult(name="install nginx", service="web",
                                status="failed" if h in failed else "changed",
                                stderr=SECRET if h in failed else ""),))
        for h in hosts))


def _verify(hosts: tuple[str, ...], failing: dict[str, str] | None = None) -> VerifyReport:
    """Checks web/http and app/port on each host; ``failing`` maps a host to a failing check."""
    failing = failing or {}
    results = []
    for h in hosts:
        for service, check in (("web", "http"), ("app", "port")):
            bad = failing.get(h) == f"{service}/{check}"
            results.append(CheckResult(host=h, service=service, check=check,
                                       status="fail" if bad else "pass",
                                       message=f"got 500 {SECRET}" if bad else "ok",
                                       duration_s=0.1))
    return VerifyReport(results=tuple(results))


def _ready(store: Store, env: str, host: str, ok: bool, applied: str | None = None) -> None:
    store.set_status(env, host, [Condition("Ready", "True" if ok else "False",
                                           "ReconciliationSucceeded" if ok else "Failed",
                                           f"message with {SECRET}")],
                     applied=f"main@sha1:{applied}" if applied else None)


def _record(store: Store) -> dict[str, int]:
    """prod: a good rollout, a failed one (web2's web/http fails), a failed drift check on
    web1 (app/port); staging: one good rollout. prod is suspended with one quarantined SHA."""
    ids: dict[str, int] = {}
    stages = {"source+load": 0.2, "plan+apply": 3.0, "verify": 1.5}
    ids["good"] = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(ids["good"], "succeeded", apply=_apply(HOSTS), verify=_verify(HOSTS),
                     stage_s=stages)
    for h in HOSTS:
        _ready(store, "prod", h, True, SHA1)
    _ready(store, "prod", ENVIRONMENT, True, SHA1)

    ids["bad"] = store.start_run("prod", "reconcile", _revision(SHA2, SECRET), actor="t")
    store.finish_run(ids["bad"], "failed", apply=_apply(HOSTS),
                     verify=_verify(HOSTS, {"web2": "web/http"}), error=SECRET,
                     stage_s={"source+load": 0.3, "plan+apply": 700.0, "verify": 2.0})
    _ready(store, "prod", "web1", True, SHA2)
    _ready(store, "prod", "web2", False)
    _ready(store, "prod", ENVIRONMENT, False)
    store.quarantine("prod", SHA2, SECRET)

    ids["drift"] = store.start_run("prod", "verify", _revision(SHA2), actor="gitops-daemon",
                                   reason="drift check")
    store.finish_run(ids["drift"], "failed", verify=_verify(("web1",), {"web1": "app/port"}),
                     stage_s={"source+load": 0.1, "verify": 0.9})
    store.set_controls("prod", suspended=1, reason=SECRET, actor="ops")
    store.record_event("prod", "suspend", actor="ops", reason=SECRET)

    ids["staging"] = store.start_run("staging", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(ids["staging"], "succeeded", apply=_apply(("s1",)),
                     verify=_verify(("s1",)), stage_s=stages)
    _ready(store, "staging", "s1", True, SHA1)
    _ready(store, "staging", ENVIRONMENT, True, SHA1)
    return ids


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state") as s:
        _record(s)
        yield s


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
           **labels: str) -> float:
    matches = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w
                                                            for k, w in labels.items())]
    assert len(matches) == 1, f"{name} {labels}: {matches}"
    return matches[0]


def test_values_read_from_the_store(store: Store) -> None:
    """Runs by result, readiness, checks, drift, rollout, quarantine and suspension match."""
    s = _samples(render(store).decode())
    runs = "gitops_runs_total"
    assert _value(s, runs, environment="prod", kind="reconcile", result="succeeded") == 1
    assert _value(s, runs, environment="prod", kind="reconcile", result="failed") == 1
    assert _value(s, runs, environment="prod", kind="verify", result="failed") == 1
    assert not [lab for lab, _ in s[runs] if lab["kind"] == "suspend"]
    assert _value(s, "gitops_operator_actions_total", environment="prod",
                  action="suspend") == 1
    assert _value(s, "gitops_host_ready", environment="prod", host="web1") == 1
    assert _value(s, "gitops_host_ready", environment="prod", host="web2") == 0
    assert _value(s, "gitops_environment_ready", environment="prod") == 0
    assert _value(s, "gitops_environment_ready", environment="staging") == 1
    check = "gitops_check_result"
    assert _value(s, check, host="web2", service="web", check="http") == 0
    assert _value(s, check, host="web2", service="app", check="port") == 1
    assert _value(s, check, host="web1", service="app", check="port") == 0  # the drift check
    assert _value(s, check, host="web1", service="web", check="http") == 1
    assert _value(s, "gitops_service_ready", host="web2", service="web") == 0
    assert _value(s, "gitops_service_ready", host="web2", service="app") == 1
    assert _value(s, "gitops_drift", environment="prod", host="web1") == 1
    assert _value(s, "gitops_drift", environment="prod", host="web2") == 0
    assert _value(s, "gitops_drift", environment="staging", host="s1") == 0
    rollout = "gitops_rollout_hosts"
    assert _value(s, rollout, environment="prod", state="done") == 1
    assert _value(s, rollout, environment="prod", state="failed") == 1
    assert _value(s, rollout, environment="prod", state="pending") == 0
    assert _value(s, rollout, environment="prod", state="not_verified") == 0
    assert _value(s, "gitops_quarantined_revisions", environment="prod") == 1
    assert _value(s, "gitops_quarantined_revisions", environment="staging") == 0
    assert _value(s, "gitops_suspended", environment="prod") == 1
    assert _value(s, "gitops_suspended", environment="staging") == 0


def test_a_host_no_check_ran_on_is_applied_not_verified(tmp_path: Path) -> None:
    """A succeeded rollout whose second host ran no check (its services have no checks.py):
    one host done, one applied and not verified, none counted verified by the store."""
    with Store(tmp_path / "state") as store:
        run = store.start_run("lab", "reconcile", _revision(SHA1), actor="t")
        store.finish_run(run, "succeeded", apply=_apply(HOSTS), verify=_verify(("web1",)),
                         stage_s={"verify": 0.1})
        s = _samples(render(store).decode())
        assert store.verified_hosts("lab") == {run: frozenset({"web1"})}
        assert store.unverified_runs("lab") == {run}
    rollout = "gitops_rollout_hosts"
    assert _value(s, rollout, environment="lab", state="done") == 1
    assert _value(s, rollout, environment="lab", state="not_verified") == 1


def test_applied_revision_is_the_current_short_sha(store: Store) -> None:
    """One info sample per host, carrying only the short SHA of the current applied revision."""
    s = _samples(render(store).decode())
    info = {(lab["environment"], lab["host"]): lab["revision"]
            for lab, v in s["gitops_applied_revision_info"] if v == 1}
    assert info == {("prod", "web1"): SHA2[:10], ("prod", "web2"): SHA1[:10],
                    ("staging", "s1"): SHA1[:10]}


def test_durations_in_the_histogram(store: Store) -> None:
    """Each stage of each finished run lands in its bucket; counts and sums add up."""
    s = _samples(render(store).decode())
    name = "gitops_reconcile_duration_seconds"
    labels = {"environment": "prod", "kind": "reconcile", "stage": "plan+apply"}
    assert _value(s, f"{name}_count", **labels) == 2
    assert _value(s, f"{name}_sum", **labels) == pytest.approx(703.0)
    assert _value(s, f"{name}_bucket", le="5.0", **labels) == 1
    assert _value(s, f"{name}_bucket", le="600.0", **labels) == 1
    assert _value(s, f"{name}_bucket", le="1200.0", **labels) == 2
    assert _value(s, f"{name}_bucket", le="+Inf", **labels) == 2
    assert _value(s, f"{name}_count", environment="prod", kind="verify", stage="verify") == 1


def test_totals_follow_the_history_between_scrapes(store: Store) -> None:
    """Counts and durations stay exact across scrapes as runs start and finish, also when
    an older run finishes after a newer one (each run counted once, none lost)."""
    name, labels = "gitops_runs_total", {"environment": "prod", "kind": "reconcile"}
    first = _samples(render(store).decode())
    assert _value(first, name, result="succeeded", **labels) == 1
    older = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    newer = store.start_run("prod", "reconcile", _revision(SHA1), actor="t")
    store.finish_run(newer, "succeeded", stage_s={"verify": 1.0})
    second = _samples(render(store).decode())
    assert _value(second, name, result="succeeded", **labels) == 2
    store.finish_run(older, "failed", stage_s={"verify": 2.0})
    for _ in range(2):
        third = _samples(render(store).decode())
        assert _value(third, name, result="succeeded", **labels) == 2
        assert _value(third, name, result="failed", **labels) == 2
        assert _value(third, "gitops_reconcile_duration_seconds_sum", stage="verify",
                      **labels) == pytest.approx(1.5 + 2.0 + 1.0 + 2.0)


def test_last_success_is_the_last_verified_success(store: Store) -> None:
    """The timestamp is the finish time of the newest succeeded run that verified hosts."""
    s = _samples(render(store).decode())
    good = store.history("prod", 10)[-1]
    assert good["result"] == "succeeded"
    expected = datetime.fromisoformat(good["finished_at"]).timestamp()
    assert _value(s, "gitops_last_success_timestamp_seconds",
                  environment="prod") == pytest.approx(expected)


def test_no_message_secret_or_history_sha_in_labels(store: Store) -> None:
    """Label values are bounded: no message, no secret-looking text, no full or old SHA."""
    s = _samples(render(store).decode())
    values = {v for samples in s.values() for labels, _ in samples for v in labels.values()}
    for value in values:
        assert "hunter2" not in value and "token" not in value and " " not in value
        assert not re.fullmatch(r"[0-9a-f]{11,}", value), value
    revisions = {lab["revision"] for lab, _ in s["gitops_applied_revision_info"]}
    assert revisions <= {SHA1[:10], SHA2[:10]}


def test_names_follow_conventions(store: Store) -> None:
    """Names are gitops_ snake case; counters end in _total, durations and times in _seconds."""
    text = render(store).decode()
    for family in text_string_to_metric_families(text):
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert re.fullmatch(r"gitops_[a-z][a-z0-9_]*[a-z0-9]", exposed), exposed
        declared = METRICS.get(exposed)
        assert declared == family.type or (declared, family.type) == ("info", "gauge"), exposed
        if family.type == "counter":
            assert exposed.endswith("_total")
        if "duration" in exposed or "time" in exposed:
            assert exposed.endswith(("_seconds", "_per_day")), exposed
    assert "# TYPE gitops_runs_total counter" in text


def test_empty_store_renders(tmp_path: Path) -> None:
    """A store with no runs yet gives a valid, nearly empty exposition."""
    with Store(tmp_path) as store:
        text = render(store).decode()
    assert list(text_string_to_metric_families(text))
    assert "gitops_host_ready{" not in text


@pytest.fixture
def base_url(store: Store) -> Iterator[str]:
    state_dir = store.path.parent
    server, thread = start_in_thread(Starlette(routes=routes(state_dir, None)), "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        stop(server, thread)


def _roundtrip(data: Any) -> Any:
    """``data`` (store rows, or lists of them) as the JSON the API sends."""
    if isinstance(data, list):
        data = [row.as_dict() for row in data]
    elif hasattr(data, "as_dict"):
        data = data.as_dict()
    return json.loads(json.dumps(data, default=str))


def test_api_returns_the_store_data(store: Store, base_url: str) -> None:
    """/api/runs, /api/runs/{id}, /api/hosts and /api/environments answer what the Store
    calls behind ``gitops history --json`` and ``gitops status --json`` return."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/api/runs", params={"limit": 50}).json() == _roundtrip(
            store.history(None, 50))
        assert client.get("/api/runs", params={"environment": "prod"}).json() == _roundtrip(
            store.history("prod", 20))
        for run in store.history(None, 50):
            assert client.get(f"/api/runs/{run['id']}").json() == _roundtrip(
                store.run(run["id"]))
        bad = store.history("prod", 10)[2]
        detail = client.get(f"/api/runs/{bad['id']}").json()
        assert {c["status"] for c in detail["checks"] if c["host"] == "web2"} == {"pass", "fail"}
        assert detail["operations"] and detail["hosts"]
        assert client.get("/api/hosts", params={"environment": "prod"}).json() == _roundtrip(
            [r for r in store.status("prod") if r["host"]])
        envs = client.get("/api/environments").json()
        assert [e["environment"] for e in envs] == ["prod", "staging"]
        assert envs[0]["controls"]["suspended"] == 1
        assert [c["type"] for c in envs[0]["conditions"]][-1] == "Suspended"
        assert envs[0]["suspended"]["actor"] == "ops"
        assert [q["sha"] for q in envs[0]["quarantined"]] == [SHA2]
        assert client.get("/api/runs/999").status_code == 404
        assert client.get("/api/runs", params={"limit": "many"}).status_code == 400
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "gitops_runs_total" in metrics.text


def test_api_delivery_and_incidents(store: Store, base_url: str) -> None:
    """Delivery metrics and incidents are served once their modules exist, 501 before."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for path, module in (("/api/delivery", "gitops.report.delivery"),
                             ("/api/incidents", "gitops.report.incidents")):
            answer = client.get(path, params={"environment": "prod"})
            if importlib.util.find_spec(module) is None:
                assert answer.status_code == 501
            else:
                assert answer.status_code == 200, answer.text
        if importlib.util.find_spec("gitops.report.delivery") is not None:
            assert set(client.get("/api/delivery").json()) >= {"prod"}
            assert client.get("/api/delivery", params={"days": 0}).status_code == 400


def test_routes_ask_the_authorizer(store: Store) -> None:
    """Every route asks the server's check; without one, non-loopback clients are refused."""
    def refuse(request: Request) -> Response | None:
        return JSONResponse({"error": "no"}, status_code=401)

    paths = ["/metrics", "/api/environments", "/api/hosts", "/api/runs", "/api/runs/1",
             "/api/delivery", "/api/incidents"]

    async def codes(authorize: Any, client: tuple[str, int]) -> set[int]:
        app = Starlette(routes=routes(store.path.parent, authorize))
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://gitops") as http:
            return {(await http.get(p)).status_code for p in paths}

    assert asyncio.run(codes(refuse, ("127.0.0.1", 5000))) == {401}
    assert asyncio.run(codes(None, ("192.0.2.7", 5000))) == {403}
    assert asyncio.run(codes(None, ("::1", 5000))) <= {200, 501}


def _used_metrics(text: str) -> set[str]:
    return set(re.findall(r"gitops_[a-z_]+", text))


def _exported() -> set[str]:
    names = set(METRICS)
    for name, kind in METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_alert_rules_are_valid() -> None:
    """The alert rules file is YAML with groups of rules, each with alert, expr, for,
    labels.severity and summary/description annotations, on exported metrics only."""
    rules = yaml.safe_load((DASHBOARDS / "prometheus-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert all(g["name"] and g["rules"] for g in rules["groups"])
    names = {r["alert"] for r in alerts}
    assert {"GitopsReconcileFailing", "GitopsDriftDetected", "GitopsHostNotReady",
            "GitopsNoVerifiedSuccess", "GitopsRevisionQuarantined"} <= names
    for rule in alerts:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used = _used_metrics(rule["expr"])
        assert used and used <= _exported(), (rule["alert"], used - _exported())
    host = next(r for r in alerts if r["alert"] == "GitopsHostNotReady")
    assert host["for"] == "10m"


def test_dashboard_uses_exported_metrics() -> None:
    """Every panel query of the Grafana dashboard names only metrics metrics.py exports."""
    dashboard = json.loads((DASHBOARDS / "grafana-gitops.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = set().union(*(_used_metrics(e) for e in exprs))
    assert used <= _exported(), used - _exported()
    for needed in ("gitops_reconcile_duration_seconds_bucket", "gitops_runs_total",
                   "gitops_host_ready", "gitops_check_result", "gitops_drift",
                   "gitops_deployment_frequency_per_day",
                   "gitops_last_success_timestamp_seconds"):
        assert needed in used, needed


def test_metrics_pass_promtool(store: Store) -> None:
    """``promtool check metrics`` accepts the exposition, delivery gauges included (a gauge
    may not carry ``quantile``, which Prometheus reserves for summaries)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if in_ci():
            pytest.fail("promtool is missing under CI (Debian package prometheus)",
                        pytrace=False)
        pytest.skip("promtool is not installed (Debian package prometheus)")
    text = render(store)
    assert b"gitops_lead_time_seconds{" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             timeout=60)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
