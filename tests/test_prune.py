"""Removal (gitops.pipeline.prune, no lab): which services a revision takes off which hosts, with
prune on and off, left in place without a remove.py, hosts that left the inventory; the
record of what each host has (store), and how the status, the metrics and the page
report what stays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mutations import make_sample
from prometheus_client.parser import text_string_to_metric_families

from gitops.cli.output import print_plan
from gitops.daemon.loop import Daemon
from gitops.errors import InvalidDeclaration
from gitops.model import DeclaredState
from gitops.pipeline import prune
from gitops.pipeline.finalize import host_status, record_installed
from gitops.pipeline.load import load
from gitops.pipeline.reconcile import Outcome, Target
from gitops.record.store import Condition, Database, Store
from gitops.records import (
    ApplyReport,
    CheckResult,
    HostApply,
    HostPlan,
    Installed,
    OpPlan,
    OpResult,
    Plan,
    Removal,
    Revision,
    VerifyReport,
)
from gitops.settings import EnvironmentConfig, Settings
from gitops.web import page
from gitops.web.metrics import render

OLD = "main@sha1:" + "1" * 40
NEW = "main@sha1:" + "2" * 40
INVENTORY = "inventories/lab.yml"


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """The project's sample (inventories/lab.yml, deploys/) in a folder."""
    return make_sample(tmp_path / "repo", links=False)


def _split_groups(repo: Path, lab3: list[str], **settings: Any) -> None:
    """The sample with app and web in groups of their own; lab-3 in ``lab3``."""
    path = repo / INVENTORY
    data = yaml.safe_load(path.read_text())
    if "app" not in data["groups"]:
        services = data["groups"].pop("web")["services"]
        data["groups"]["app"] = {"services": {"app": services["app"]}}
        data["groups"]["web"] = {"services": {"web": services["web"]}}
    for name, host in data["hosts"].items():
        host["groups"] = lab3 if name == "lab-3" else ["app", "web"]
    data["settings"].update(settings)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _record(state: DeclaredState, revision: str = OLD) -> dict[str, dict[str, Installed]]:
    """What the record holds after ``state`` was applied everywhere."""
    return {h.name: {s: Installed(h.name, s, revision, dict(p), state.requires.get(s, ()))
                     for s, p in h.services.items()} for h in state.hosts}


def test_dropped_service_is_removed_only_where_dropped(sample: Path) -> None:
    """web leaves lab-3's groups: the removal is web on lab-3, with the revision that last
    applied it; the other hosts keep everything."""
    _split_groups(sample, ["app", "web"])
    before = _record(load(sample, "lab"))
    _split_groups(sample, ["app"])
    state = load(sample, "lab")
    assert prune.removals(state, before, prune=True) == (
        Removal(host="lab-3", service="web", action="remove", revision=OLD),)


def test_sample_web_and_app_are_removable_base_is_not(sample: Path) -> None:
    """The sample's web and app have a remove.py (compiled at load), base (in all) none."""
    state = load(sample, "lab")
    assert state.removable == ("app", "web")


def test_removal_runs_dependents_first(sample: Path) -> None:
    """lab-3 leaves both app and web: web (which requires app) is removed before app."""
    _split_groups(sample, ["app", "web"])
    before = _record(load(sample, "lab"))
    data = yaml.safe_load((sample / INVENTORY).read_text())
    data["hosts"]["lab-3"]["groups"] = ["all"]
    data["hosts"]["lab-3"].pop("services")  # its app override
    (sample / INVENTORY).write_text(yaml.safe_dump(data, sort_keys=False))
    found = prune.removals(load(sample, "lab"), before, prune=True)
    assert [(r.host, r.service) for r in found] == [("lab-3", "web"), ("lab-3", "app")]
    doing = prune.removal_state(load(sample, "lab"), found, before)
    assert doing.service_order == ("web", "app")
    assert [h.name for h in doing.hosts] == ["lab-3"]
    assert list(doing.hosts[0].services) == ["web", "app"]
    assert doing.hosts[0].services["web"] == before["lab-3"]["web"].params


def test_prune_off_reports_only(sample: Path) -> None:
    """With settings.prune false the removal is "not pruned": nothing to run on the host."""
    _split_groups(sample, ["app", "web"])
    before = _record(load(sample, "lab"))
    _split_groups(sample, ["app"], prune=False)
    state = load(sample, "lab")
    assert state.settings.prune is False
    found = prune.removals(state, before, prune=state.settings.prune)
    assert [(r.host, r.service, r.action) for r in found] == [("lab-3", "web", "not pruned")]
    assert prune.removal_state(state, found, before).hosts == ()
    assert prune.pending(found) == {"lab-3": found}
    assert found[0].note == "web: not removed (prune is off)"


def test_service_without_remove_py_is_left_in_place(sample: Path) -> None:
    """A dropped service whose folder has no remove.py is left in place, said so."""
    _split_groups(sample, ["app", "web"])
    before = _record(load(sample, "lab"))
    (sample / "deploys/web/remove.py").unlink()
    _split_groups(sample, ["app"])
    state = load(sample, "lab")
    found = prune.removals(state, before, prune=True)
    assert [(r.host, r.service, r.action) for r in found] == [("lab-3", "web", "left in place")]
    assert prune.removal_state(state, found, before).hosts == ()
    assert found[0].note == "web: left in place (no remove.py)"


def test_host_removed_from_inventory_is_gone_not_removed(sample: Path) -> None:
    """A host that left the inventory gets no removal (never touched): it is a gone host."""
    before = _record(load(sample, "lab"))
    data = yaml.safe_load((sample / INVENTORY).read_text())
    del data["hosts"]["lab-2"]
    (sample / INVENTORY).write_text(yaml.safe_dump(data, sort_keys=False))
    state = load(sample, "lab")
    assert prune.removals(state, before, prune=True) == ()
    assert prune.gone_hosts(state, before) == ["lab-2"]


def test_remove_py_syntax_error_is_invalid_at_its_line(sample: Path) -> None:
    """remove.py is compiled at validate time: a syntax error names its file and line, even
    for a service no host declares any more."""
    (sample / "deploys/web/remove.py").write_text('"""doc"""\n\nfiles.file(\n')
    with pytest.raises(InvalidDeclaration) as info:
        load(sample, "lab")
    assert [(p.file, p.line) for p in info.value.problems] == [("deploys/web/remove.py", 3)]
    old = sample / "deploys/old"
    old.mkdir()
    (old / "remove.py").write_text("x = 1 +\n")
    (sample / "deploys/web/remove.py").write_text("")
    with pytest.raises(InvalidDeclaration) as info:
        load(sample, "lab")
    assert [(p.file, p.line) for p in info.value.problems] == [("deploys/old/remove.py", 1)]


def test_recorded_parameters_hold_no_secret() -> None:
    """Parameters are recorded with every string holding a secret value blanked."""
    params = {"port": 8000, "token": "s3cr3t-token-value",
              "nested": {"url": "x:s3cr3t-token-value"}, "list": ["a", "s3cr3t-token-value"]}
    assert prune.recordable(params, ["s3cr3t-token-value"]) == {
        "port": 8000, "token": prune.SECRET, "nested": {"url": prune.SECRET},
        "list": ["a", prune.SECRET]}


# -- the record ----------------------------------------------------------------------------


@pytest.fixture
def store(store_backend: Database) -> Iterator[Store]:
    with store_backend.open() as s:
        yield s


def _revision(sha: str) -> Revision:
    return Revision(sha=sha, branch="main", author="Ann <ann@example.org>",
                    committed_at=datetime(2026, 10, 31, tzinfo=UTC), message="change")


def test_store_keeps_what_each_host_has(store: Store) -> None:
    """set_installed records parameters, requirements and revision; a re-apply updates them;
    a removal deletes the row and the host's convergence for it; a kept service is marked."""
    store.set_installed("lab", "h1", {"app": ({"port": 1}, ()), "web": ({"p": 80}, ("app",))},
                        OLD)
    store.set_installed("lab", "h1", {"app": ({"port": 2}, ())}, NEW)
    got = store.installed("lab")["h1"]
    assert got["app"] == Installed("h1", "app", NEW, {"port": 2}, (), "applied")
    assert got["web"] == Installed("h1", "web", OLD, {"p": 80}, ("app",), "applied")
    store.set_converged("lab", "h1", {"app": "fa", "web": "fw"}, NEW)
    store.mark_installed("lab", "h1", "web", None)
    assert set(store.installed("lab")["h1"]) == {"app"}
    assert store.converged("lab") == {"h1": {"app": "fa"}}
    store.mark_installed("lab", "h1", "app", "not pruned")
    assert [(e, k.host, k.service, k.state) for e, k in store.not_removed()] == [
        ("lab", "h1", "app", "not pruned")]
    store.set_installed("lab", "h1", {"app": ({"port": 2}, ())}, NEW)
    assert store.not_removed() == []


def test_forgotten_hosts_leave_status_but_keep_history(store: Store) -> None:
    """forget_hosts drops a host's status, convergence and installed services; its runs and
    results stay in the history; the environment's own row stays."""
    run = store.start_run("lab", "reconcile", _revision("1" * 40), actor="t")
    applied = ApplyReport(hosts=(HostApply(host="h1", status="ok"),
                                 HostApply(host="h2", status="ok")))
    store.finish_run(run, "succeeded", apply=applied, verify=VerifyReport(results=()))
    for host in ("h1", "h2", ""):
        store.set_status("lab", host, [Condition("Ready", "True", "ReconciliationSucceeded", "")])
    store.set_installed("lab", "h2", {"app": ({}, ())}, OLD)
    store.set_converged("lab", "h2", {"app": "f"}, OLD)
    assert store.forget_hosts("lab", ["h1"]) == ["h2"]
    assert [r.host for r in store.status("lab")] == ["", "h1"]
    assert store.installed("lab") == {} and store.converged("lab") == {}
    assert {h.host for h in store.host_results(run)} == {"h1", "h2"}


def _state(sample: Path) -> DeclaredState:
    _split_groups(sample, ["app"], prune=False)
    return load(sample, "lab")


def test_record_and_status_of_a_batch(sample: Path, tmp_path: Path) -> None:
    """After a batch: applied services are recorded (secrets blanked), a service not pruned
    is marked so, the host's Pruned condition names it, the metric and the page show it;
    a done removal leaves the record."""
    state = _state(sample)
    with Database(tmp_path / "state").open() as store:
        store.set_installed("lab", "lab-3", {"web": ({"listen_port": 80}, ("app",))}, OLD)
        store.set_installed("lab", "lab-2", {"web": ({"listen_port": 80}, ("app",)),
                                             "gone": ({}, ())}, OLD)
        removals = (Removal(host="lab-3", service="web", action="not pruned", revision=OLD),
                    Removal(host="lab-2", service="gone", action="remove", revision=OLD))
        applied = ApplyReport(hosts=tuple(
            HostApply(host=h.name, status="ok", ops=(
                OpResult(name="gone | Remove it", service="gone", status="changed"),)
                if h.name == "lab-2" else ()) for h in state.hosts))
        checks = VerifyReport(results=tuple(
            CheckResult(host=h.name, service="base", check="test_x", status="pass")
            for h in state.hosts))
        record_installed(store, "lab", NEW, state, applied, removals)
        kept = store.installed("lab")
        assert set(kept["lab-3"]) == {"base", "app", "web"}
        assert kept["lab-3"]["web"].state == "not pruned"
        assert "gone" not in kept["lab-2"] and kept["lab-2"]["web"].state == "applied"
        assert kept["lab-1"]["app"].revision == NEW
        host_status(store, "lab", Outcome("succeeded", apply=applied, verify=checks), NEW, NEW,
                    {}, removals)
        rows = {r.host: r for r in store.status("lab")}
        pruned = rows["lab-3"].condition("Pruned")
        assert pruned is not None and pruned.status == "False"
        assert (pruned.reason, pruned.message) == ("PruneDisabled",
                                                   "web: not removed (prune is off)")
        assert rows["lab-2"].condition("Pruned") is None
        ready = rows["lab-3"].condition("Ready")
        assert ready is not None and ready.status == "True"
        families = {f.name: f for f in text_string_to_metric_families(render(store).decode())}
        samples = [s.labels for s in families["gitops_service_not_removed"].samples]
        assert samples == [{"environment": "lab", "host": "lab-3", "service": "web",
                            "reason": "prune_disabled"}]
        data = page.page_data(store)
        hosts = {h["name"]: h for h in data["environments"][0]["hosts"]}
        assert hosts["lab-3"]["not_removed"] == [
            {"service": "web", "state": "not pruned", "revision": OLD}]
        assert hosts["lab-1"]["not_removed"] == []


def test_plan_output_lists_each_removal_under_its_host(capsys: pytest.CaptureFixture[str]) -> None:
    """gitops plan prints each removal under its host, and counts them in its summary."""
    plan = Plan(hosts=(
        HostPlan(host="lab-1", ops=(OpPlan(name="base | x", service="base",
                                           would_change=False),)),
        HostPlan(host="lab-3", ops=(OpPlan(name="web | Remove the nginx site", service="web",
                                           would_change=True),))),
        removals=(Removal(host="lab-3", service="web", action="remove", revision=OLD),
                  Removal(host="lab-3", service="base", action="left in place", revision=OLD)))
    print_plan(plan)
    out = capsys.readouterr().out.splitlines()
    at = out.index("lab-3: 1 of 1 operation(s) would change")
    assert out[at + 1:at + 3] == [
        "  - web: removed with its remove.py (last applied main@1111111111)",
        "  - base: left in place (no remove.py) (last applied main@1111111111)"]
    assert out[-1] == ("plan: 1 change(s) on 1 of 2 host(s); 1 removal(s); 1 service(s) no "
                       "longer declared stay on their host")


def test_daemon_settings_prune_wins_over_the_inventory(sample: Path, tmp_path: Path) -> None:
    """An environment's ``prune`` in the daemon settings reaches its runs and wins over the
    inventory's settings.prune; unset, the inventory's applies (default true)."""
    state = load(sample, "lab")
    assert state.settings.prune is True
    for given, expected in ((False, False), (True, True), (None, True)):
        settings = Settings(state_dir=tmp_path / "state", environments=[
            EnvironmentConfig(name="lab", repo=str(sample), watch=False, prune=given)])
        target = Daemon(settings).envs["lab"].target
        assert target.prune is given
        assert target.prunes(state) is expected
    _split_groups(sample, ["app", "web"], prune=False)
    assert Target(str(sample), "main", "lab", tmp_path).prunes(load(sample, "lab")) is False
