"""Dependencies between services (gitops.pipeline.depends, deploys/<service>/service.yml): the apply
order, the declarations refused at their file and line, and what a requirement that is not
ready leaves undone."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from builders import load_problems
from mutations import make_sample

from gitops.pipeline import depends
from gitops.pipeline.load import load
from gitops.record.store import Condition, Store
from gitops.records import ApplyReport, HostApply, Revision, VerifyReport
from gitops.web import page


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """The project's sample (inventories/lab.yml, deploys/) in a folder."""
    return make_sample(tmp_path / "repo", links=False)


def _requires(repo: Path, service: str, text: str) -> None:
    (repo / "deploys" / service / "service.yml").write_text(text)


def test_order_puts_requirements_first_and_keeps_ties() -> None:
    """Each service comes after what it requires; services without a constraint keep the
    inventory's order (a stable topological order)."""
    order = ["base", "web", "app", "db", "cron"]
    requires = {"web": ["app"], "app": ["db"]}
    assert depends.apply_order(order, requires) == ["base", "db", "app", "web", "cron"]
    assert depends.apply_order(order, {}) == order


def test_sample_orders_web_after_app_and_removes_in_reverse(sample: Path) -> None:
    """The sample's web requires app: applied after it, removed before it, on every host."""
    state = load(sample, "lab")
    assert state.requires == {"web": ("app",)}
    assert state.service_order.index("app") < state.service_order.index("web")
    assert state.removal_order == tuple(reversed(state.service_order))
    for host in state.hosts:
        assert list(host.services) == [s for s in state.service_order if s in host.services]


def test_requirement_written_later_is_applied_first(sample: Path) -> None:
    """A service the inventory names first still waits for what it requires."""
    _requires(sample, "web", "")
    _requires(sample, "base", "requires: [app]\n")
    state = load(sample, "lab")
    assert state.service_order == ("app", "base", "web")


def test_cycle_is_invalid_at_each_declaring_line(sample: Path) -> None:
    """web requires app and app requires web: one problem at each file and line, naming the
    cycle."""
    _requires(sample, "app", "# app needs web\nrequires:\n  - base\n  - web\n")
    problems = load_problems(sample)
    assert "deploys/app/service.yml:4 requires.1: dependency cycle: app -> web -> app" \
        in problems
    assert "deploys/web/service.yml:2 requires.0: dependency cycle: app -> web -> app" \
        in problems


def test_unknown_requirement_is_invalid_at_its_line(sample: Path) -> None:
    """A requirement that names no service is a problem at its line."""
    _requires(sample, "web", "requires:\n  - app\n  - databse\n")
    assert load_problems(sample) == [
        "deploys/web/service.yml:3 requires.1: unknown service 'databse': there is no "
        "deploys/databse/deploy.py"]


def test_requirement_missing_on_a_host_is_invalid(sample: Path) -> None:
    """A service required on a host that does not run it is a problem naming the hosts."""
    shutil.copytree(sample / "deploys" / "app", sample / "deploys" / "cache")
    inventory = sample / "inventories" / "lab.yml"
    old = "    services:\n      app:\n        message: Hello from lab-3"
    assert old in inventory.read_text()  # lab-3's own services: cache only there
    inventory.write_text(inventory.read_text().replace(
        old, "    services:\n      cache: {}\n      app:\n        message: Hello from lab-3"))
    _requires(sample, "web", "requires: [app, cache]\n")
    assert load_problems(sample) == [
        "deploys/web/service.yml:1 requires.1: 'web' requires 'cache' on the same host, but "
        "lab-1, lab-2 run 'web' without 'cache'"]


@pytest.mark.parametrize(("text", "expected"), [
    ("requires: [app]\nteam: payments\n", "deploys/web/service.yml:2 team: Extra inputs are "
     "not permitted"),
    ("requires: app\n", "deploys/web/service.yml:1 requires: Input should be a valid array"),
    ("requires: [app, 'a b']\n", "deploys/web/service.yml:1 requires.1: service name should "
     "be 1-63 letters, digits, '_' or '-', starting with a letter or digit"),
    ("requires: [web]\n", "deploys/web/service.yml:1 requires.0: service 'web' cannot "
     "require itself"),
    ("- app\n", "deploys/web/service.yml:1: should be a mapping (requires: [service, ...])"),
    ("requires: [app]\nrequires: [base]\n", "deploys/web/service.yml:2 requires: duplicate "
     "key (first at line 1)"),
])
def test_bad_metadata_is_invalid_at_its_line(sample: Path, text: str, expected: str) -> None:
    """Unknown keys, wrong types, bad names, self-requirement and YAML problems in
    service.yml are each reported at their file and line."""
    _requires(sample, "web", text)
    assert load_problems(sample) == [expected]


def test_not_ready_follows_requirements_transitively() -> None:
    """A failed requirement leaves its dependents, and theirs, DependencyNotReady with why;
    services that do not depend on it are left alone."""
    results = depends.not_ready(
        "lab-2", ["base", "app", "web", "proxy", "cron"],
        {"web": ["app"], "proxy": ["web", "base"], "cron": ["base"]},
        {"app": "failed its apply on this host"})
    assert [(r.service, r.status) for r in results] == [
        ("web", "DependencyNotReady"), ("proxy", "DependencyNotReady")]
    assert results[0].message == "requires app, which failed its apply on this host"
    assert results[1].message == "requires web, which is not ready (DependencyNotReady)"
    assert all(r.host == "lab-2" for r in results)


def test_cycles_are_found_once() -> None:
    """Each cycle is reported once, from its first service in the given order."""
    assert depends.cycles(["a", "b", "c", "d"], {"a": ["b"], "b": ["c"], "c": ["a"],
                                                 "d": ["d2"]}) == [["a", "b", "c", "a"]]
    assert depends.cycles(["a", "b"], {"a": ["b"]}) == []


def test_page_shows_dependency_not_ready(tmp_path: Path) -> None:
    """The status page's grid puts a DependencyNotReady service in its host's cell, with
    the reason, read back from the SQLite record."""
    rev = Revision(sha="ab" * 20, branch="main", author="Ada <ada@example.org>",
                   committed_at=datetime.now(UTC), message="web requires app")
    waiting = depends.not_ready("lab-2", ["app", "web"], {"web": ["app"]},
                                {"app": "failed its apply on this host"})
    with Store(tmp_path) as store:
        run_id = store.start_run("lab", "reconcile", None, actor="test", reason="")
        store.set_revision(run_id, rev)
        store.finish_run(run_id, "failed", apply=ApplyReport(hosts=(
            HostApply(host="lab-2", status="failed", error="app failed"),)),
            verify=VerifyReport(results=tuple(waiting)))
        store.set_status("lab", "lab-2", [Condition("Ready", "False", "ApplyFailed",
                                                    "app failed; DependencyNotReady: web")])
        data = page.page_data(store)
    (env,) = data["environments"]
    (host,) = env["hosts"]
    assert host["services"]["web"]["failing"] == [
        {"check": "requires", "status": "DependencyNotReady",
         "message": "requires app, which failed its apply on this host"}]
