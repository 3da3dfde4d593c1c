"""The sample state repository (inventories/ and deploys/) is well formed."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from gitops.model import ALL_GROUP, InventoryFile

REPO = Path(__file__).resolve().parent.parent
SERVICES = sorted(p.name for p in (REPO / "deploys").iterdir() if (p / "deploy.py").is_file())
INVENTORIES = sorted((REPO / "inventories").glob("*.yml"))


def _params_model(service: str) -> type[BaseModel]:
    path = REPO / "deploys" / service / "model.py"
    spec = importlib.util.spec_from_file_location(f"sample_model_{service}", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: type[BaseModel] = module.Params
    return model


def _service_params(inventory: InventoryFile, host: str, service: str) -> dict[str, Any]:
    """Group parameters (all first, then the host's groups) overlaid by the host's own."""
    merged: dict[str, Any] = {}
    spec = inventory.hosts[host]
    for group in [ALL_GROUP, *spec.groups]:
        if group in inventory.groups:
            merged.update(inventory.groups[group].services.get(service, {}))
    merged.update(spec.services.get(service, {}))
    return merged


def test_sample_services_present() -> None:
    """The sample repository has the base, app and web services."""
    assert SERVICES == ["app", "base", "web"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_folder_layout(service: str) -> None:
    """Each service has deploy.py, checks.py, model.py, README.md and files or templates."""
    folder = REPO / "deploys" / service
    for name in ("deploy.py", "checks.py", "model.py", "README.md"):
        assert (folder / name).is_file(), name
    assert (folder / "files").is_dir() or (folder / "templates").is_dir()


@pytest.mark.parametrize("service", SERVICES)
def test_params_forbid_unknown_fields(service: str) -> None:
    """Params rejects unknown fields (extra="forbid")."""
    model = _params_model(service)
    assert model.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError):
        model.model_validate({"no_such_parameter": 1, **_minimal(service)})


def _minimal(service: str) -> dict[str, Any]:
    return {"admin_keys": ["ssh-ed25519 AAAA test"]} if service == "base" else {}


@pytest.mark.parametrize("service", SERVICES)
def test_params_defaults_validate(service: str) -> None:
    """Params validates with only its required fields, and its defaults are JSON-compatible."""
    params = _params_model(service).model_validate(_minimal(service))
    assert params.model_dump(mode="json") == params.model_dump()


@pytest.mark.parametrize("service", SERVICES)
def test_deploy_and_checks_do_not_import_gitops(service: str) -> None:
    """deploy.py and checks.py run under the plain pyinfra/pytest CLIs: no gitops imports."""
    for name in ("deploy.py", "checks.py"):
        tree = ast.parse((REPO / "deploys" / service / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "gitops" for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "gitops"


@pytest.mark.parametrize("service", SERVICES)
def test_checks_are_test_functions_of_host_and_params(service: str) -> None:
    """checks.py defines test_* functions taking host and optionally params, nothing else."""
    tree = ast.parse((REPO / "deploys" / service / "checks.py").read_text())
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert tests
    for fn in tests:
        args = [a.arg for a in fn.args.args]
        assert args in (["host"], ["host", "params"]), fn.name
        assert ast.get_docstring(fn), f"{fn.name} has no docstring"


@pytest.mark.parametrize("path", INVENTORIES, ids=lambda p: p.name)
def test_inventory_parses_and_params_validate(path: Path) -> None:
    """Every inventory matches InventoryFile and each host's service parameters validate."""
    inventory = InventoryFile.model_validate(yaml.safe_load(path.read_text()))
    for host, spec in inventory.hosts.items():
        services = set(inventory.groups[ALL_GROUP].services) if ALL_GROUP in inventory.groups \
            else set()
        for group in spec.groups:
            assert group in inventory.groups, f"{host}: unknown group {group}"
            services |= set(inventory.groups[group].services)
        services |= set(spec.services)
        assert services <= set(SERVICES), f"{host}: unknown services"
        for service in services:
            _params_model(service).model_validate(_service_params(inventory, host, service))


def test_lab_inventory_shape() -> None:
    """The lab inventory: three web hosts of whichever lab is up (addresses from it), with
    base, app and web, and a host-level override."""
    inventory = InventoryFile.model_validate(
        yaml.safe_load((REPO / "inventories" / "lab.yml").read_text())
    )
    assert inventory.settings.fail_percent == 34
    assert inventory.settings.source == "lab" and inventory.settings.lab is None
    assert {h: s.address for h, s in inventory.hosts.items()} == {
        "lab-1": None, "lab-2": None, "lab-3": None,
    }
    assert set(inventory.groups["web"].services) == {"app", "web"}
    assert "base" in inventory.groups[ALL_GROUP].services
    messages = {_service_params(inventory, h, "app")["message"] for h in inventory.hosts}
    assert len(messages) == 2


def test_web_app_ports_agree() -> None:
    """In every inventory, nginx proxies to the port the app listens on."""
    for path in INVENTORIES:
        inventory = InventoryFile.model_validate(yaml.safe_load(path.read_text()))
        for host in inventory.hosts:
            app = _params_model("app").model_validate(_service_params(inventory, host, "app"))
            web = _params_model("web").model_validate(_service_params(inventory, host, "web"))
            assert web.model_dump()["app_port"] == app.model_dump()["port"], f"{path.name}: {host}"
