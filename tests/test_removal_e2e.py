"""End to end on the lab: web leaves one host's groups. With ``prune: false`` the next
reconcile changes nothing there and says so (plan, status, metric, page); with prune on, the
next (changed-only) reconcile runs web's remove.py on that host only: nginx's site is off,
the other hosts are untouched, its web checks and their gauges are gone, the page shows it.
Declaring web again applies it again; a host that leaves the inventory is not touched and
leaves the status, the gauges and the page, its history kept.

The sample's app and web are put in groups of their own (``app``, ``web``), so a host can
leave ``web`` and keep ``app``. lab-3, the host web leaves, logs in as the lab's sudo user with
``_sudo: true``; lab-1 and lab-2 as root.
"""

from __future__ import annotations

import urllib.error
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from statelab import StateRepo, http_get, make_state_repo

from gitops.lab import LabInfo
from gitops.record.store import Store
from gitops.web import page
from gitops.web.metrics import render

pytestmark = pytest.mark.lab

HOST = "lab-3"
SITE = "/etc/nginx/conf.d/gitops-web.conf"


def _groups(repo: StateRepo, groups: dict[str, list[str]], **settings: Any) -> None:
    data = repo.inventory()
    for name, host in data["hosts"].items():
        host["groups"] = groups.get(name, ["app", "web"])
    for key, value in settings.items():
        if value is None:
            data["settings"].pop(key, None)
        else:
            data["settings"][key] = value
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def repo(lab: LabInfo, tmp_path_factory: pytest.TempPathFactory) -> StateRepo:
    state = make_state_repo(tmp_path_factory.mktemp("removal"), lab, sudo_hosts=(HOST,))
    data = state.inventory()
    services = data["groups"].pop("web")["services"]
    data["groups"]["app"] = {"services": {"app": services["app"]}}
    data["groups"]["web"] = {"services": {"web": services["web"]}}
    (state.path / "inventories/lab.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    _groups(state, {})
    state.commit("app and web in groups of their own")
    code, result = state.gitops_json("reconcile", "--once")
    assert code == 0, result
    return state


def _read(repo: StateRepo) -> tuple[dict[str, list[dict[str, str]]], dict[str, Any]]:
    """The /metrics samples by name and the status page's environment, from the record."""
    with Store(repo.state_dir, readonly=True) as store:
        families = text_string_to_metric_families(render(store).decode())
        metrics = {f.name: [s.labels for s in f.samples] for f in families}
        env = page.page_data(store)["environments"][0]
    return metrics, env


def _web_served(repo: StateRepo, host: str) -> bool:
    try:
        return http_get(f"http://{repo.address(host)}/")[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _checked(result: dict[str, Any], host: str) -> set[str]:
    return {r["service"] for r in result["verify"]["results"] if r["host"] == host}


def test_prune_off_changes_nothing_and_says_so(repo: StateRepo) -> None:
    """prune: false and web off lab-3's groups: plan, status, metric and page say web is
    not removed there; the host still serves the site."""
    _groups(repo, {HOST: ["app"]}, prune=False)
    repo.commit("web off lab-3, prune off")
    proc = repo.gitops("plan")
    assert proc.returncode == 0, proc.stderr
    assert f"{HOST}: 0 of " in proc.stdout
    assert "  - web: not removed (prune is off) (last applied main@" in proc.stdout
    assert proc.stdout.count("not removed") == 1
    code, result = repo.gitops_json("reconcile", "--once", "--changed-only")
    assert code == 0, result
    lab3 = next(h for h in result["apply"]["hosts"] if h["host"] == HOST)
    assert not [op for op in lab3["ops"] if op["service"] == "web"]
    assert "web" not in _checked(result, HOST)
    repo.ssh(HOST, f"test -e {SITE}")
    assert _web_served(repo, HOST)
    _, status = repo.gitops_json("status")
    row = next(r for r in status if r["host"] == HOST)
    pruned = next(c for c in row["conditions"] if c["type"] == "Pruned")
    assert (pruned["status"], pruned["reason"]) == ("False", "PruneDisabled")
    metrics, env = _read(repo)
    assert {"environment": "lab", "host": HOST, "service": "web",
            "reason": "prune_disabled"} in metrics["gitops_service_not_removed"]
    hosts = {h["name"]: h for h in env["hosts"]}
    assert [k["service"] for k in hosts[HOST]["not_removed"]] == ["web"]


def test_prune_removes_web_from_that_host_only(repo: StateRepo) -> None:
    """Prune on (the default): plan lists the removal with remove.py's operations; the
    changed-only reconcile takes nginx's site off lab-3 only, its web checks and gauges go,
    the page shows lab-3 without web."""
    _groups(repo, {HOST: ["app"]}, prune=None)
    repo.commit("prune on")
    code, planned = repo.gitops_json("plan")
    assert code == 0, planned
    assert [(r["host"], r["service"], r["action"]) for r in planned["plan"]["removals"]] == [
        (HOST, "web", "remove")]
    lab3_plan = next(h for h in planned["plan"]["hosts"] if h["host"] == HOST)
    assert any(op["would_change"] for op in lab3_plan["ops"]
               if op["name"] == "web | Remove the nginx site")
    code, result = repo.gitops_json("reconcile", "--once", "--changed-only")
    assert code == 0, result
    applied = {h["host"]: h for h in result["apply"]["hosts"]}
    removed = [op["name"] for op in applied[HOST]["ops"]
               if op["service"] == "web" and op["status"] == "changed"]
    assert "web | Remove the nginx site" in removed
    for other in ("lab-1", "lab-2"):
        assert not [op for op in applied[other]["ops"] if op["status"] == "changed"]
        assert "web" in _checked(result, other)
        assert _web_served(repo, other)
    repo.ssh(HOST, f"test ! -e {SITE}")
    assert not _web_served(repo, HOST)
    assert "web" not in _checked(result, HOST)
    assert "app" in _checked(result, HOST)
    metrics, env = _read(repo)
    web_checks = {(s["host"]) for s in metrics["gitops_check_result"] if s["service"] == "web"}
    assert web_checks == {"lab-1", "lab-2"}
    assert metrics.get("gitops_service_not_removed", []) == []
    hosts = {h["name"]: h for h in env["hosts"]}
    assert "web" not in hosts[HOST]["services"] and "web" in hosts["lab-1"]["services"]
    assert hosts[HOST]["not_removed"] == []
    _, status = repo.gitops_json("status")
    row = next(r for r in status if r["host"] == HOST)
    assert not [c for c in row["conditions"] if c["type"] == "Pruned"]


def test_declared_again_is_applied_again(repo: StateRepo) -> None:
    """web back in lab-3's groups: the changed-only reconcile applies and verifies it there."""
    _groups(repo, {}, prune=None)
    repo.commit("web back on lab-3")
    code, result = repo.gitops_json("reconcile", "--once", "--changed-only")
    assert code == 0, result
    lab3 = next(h for h in result["apply"]["hosts"] if h["host"] == HOST)
    assert any(op["status"] == "changed" for op in lab3["ops"] if op["service"] == "web")
    assert "web" in _checked(result, HOST)
    assert _web_served(repo, HOST)


def test_host_left_the_inventory_is_untouched_and_forgotten(repo: StateRepo) -> None:
    """lab-2 leaves the inventory: it is not contacted, it leaves the status, the gauges and
    the page at once; its runs stay in the history."""
    data = repo.inventory()
    del data["hosts"]["lab-2"]
    (repo.path / "inventories/lab.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    repo.commit("lab-2 leaves")
    code, result = repo.gitops_json("reconcile", "--once", "--changed-only")
    assert code == 0, result
    assert "lab-2" not in {h["host"] for h in result["apply"]["hosts"]}
    _, status = repo.gitops_json("status")
    assert "lab-2" not in {r["host"] for r in status}
    metrics, env = _read(repo)
    assert not [s for name in ("gitops_check_result", "gitops_host_ready", "gitops_service_ready")
                for s in metrics[name] if s.get("host") == "lab-2"]
    assert "lab-2" not in {h["name"] for h in env["hosts"]}
    _, history = repo.gitops_json("history")
    first = history[-1]["id"]
    with Store(repo.state_dir, readonly=True) as store:
        assert "lab-2" in {h.host for h in store.host_results(first)}
    repo.ssh("lab-2", f"test -e {SITE}")  # no remove.py ran there
    assert _web_served(repo, "lab-2")
