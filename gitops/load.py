"""Stage 2: a snapshot folder -> a ``DeclaredState``, or every problem at once.

Reads ``inventories/<environment>.yml`` (with line numbers kept), validates it strictly with
pydantic, checks what a schema cannot (services without a folder, unknown groups, shared
addresses), and validates each host's merged service parameters against the service's
``deploys/<service>/model.py`` ``Params`` model. Called by ``reconcile`` and the CLI.
Values are never echoed in messages, so secrets cannot leak through them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from gitops.errors import InvalidDeclaration, Problem
from gitops.model import (
    ALL_GROUP,
    SSH_DEFAULTS,
    DeclaredHost,
    DeclaredState,
    EnvironmentSettings,
    GroupSpec,
    HostSpec,
    InventoryFile,
    LabSpec,
    ResolvedSSH,
    ServiceParams,
    SSHSettings,
)

Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)

__all__ = ["environments", "load"]


def environments(root: Path) -> list[str]:
    """The environments a snapshot declares (one per ``inventories/*.yml``)."""
    folder = root / "inventories"
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


def load(
    root: Path,
    environment: str,
    *,
    revision: str | None = None,
    host_source: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
) -> DeclaredState:
    """Validate ``environment`` in the snapshot at ``root``; raise ``InvalidDeclaration``.

    ``host_source`` fills addresses and SSH settings for environments whose
    ``settings.source`` is not ``inventory`` (the Vagrant inventory passes one).
    """
    rel = f"inventories/{environment}.yml"
    path = root / rel
    if not path.is_file():
        known = ", ".join(environments(root)) or "none"
        raise InvalidDeclaration(
            [Problem(rel, None, "", f"no such environment (declared: {known})")], revision
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidDeclaration([Problem(rel, line, "", f"YAML: {problem}")], revision) from None
    if not isinstance(data, dict):
        raise InvalidDeclaration(
            [Problem(rel, 1, "", "should be a mapping with settings, groups and hosts")], revision
        )

    problems = _Problems(rel, lines)
    inv = _validate_inventory(data, problems)

    services = _service_order(inv)
    models = {name: _service_model(root, name, problems) for name in services}
    sources: dict[str, dict[str, Any]] = {}
    raw_settings = data.get("settings")
    # Settings that did not validate leave the source unknown: no host is blamed for it.
    unsourced = inv.settings.source == "inventory" and isinstance(raw_settings, dict) and \
        raw_settings.get("source", "inventory") != "inventory"
    if inv.settings.source == "lab":  # the running lab's addresses and key (no Target needed)
        from gitops.lab import LabError, inventory_hosts, provide_packages

        try:
            sources = inventory_hosts(inv.settings.lab, list(inv.hosts))
        except LabError as exc:
            problems.add(("settings", "source"), str(exc))
            unsourced = True  # said once, not again for each host's missing address
        else:
            try:  # the packages the deploys install that the lab's mirror lacks
                provide_packages(inv.settings.lab, inv.lab.packages)
            except LabError as exc:
                problems.add(("lab", "packages"), str(exc))
    elif inv.settings.source != "inventory":
        if host_source is None:
            problems.add(("settings", "source"), f"source {inv.settings.source!r} is not available")
        else:
            try:
                sources = host_source(list(inv.hosts))
            except Exception as exc:  # the source names what failed (vagrant not running, ...)
                problems.add(("settings", "source"), str(exc))

    hosts: list[DeclaredHost] = []
    seen_addresses: dict[tuple[str, int], str] = {}
    for name, spec in inv.hosts.items():
        for i, group in enumerate(spec.groups):
            if group != ALL_GROUP and group not in inv.groups:
                problems.add(("hosts", name, "groups", i), f"unknown group {group!r}")
        filled = sources.get(name, {})
        address = spec.address or filled.get("address")
        if not address and not unsourced:
            why = {"vagrant": "not running in vagrant", "lab": "not in the lab"}.get(
                inv.settings.source, "is required")
            problems.add(("hosts", name, "address"), f"address {why}")
            continue
        ssh = _resolve_ssh(inv.settings.ssh, SSHSettings(**filled.get("ssh", {})), spec.ssh)
        key = (address or "", ssh.port)
        if key in seen_addresses:
            problems.add(
                ("hosts", name, "address"),
                f"address {address}:{ssh.port} is also host {seen_addresses[key]!r}",
            )
        if address:
            seen_addresses[key] = name
        group_names = [ALL_GROUP, *[g for g in spec.groups if g != ALL_GROUP]]
        params = _host_services(inv, name, group_names, services, models, problems)
        if not address:  # the source failed (reported once): the rest is still checked
            continue
        variables: dict[str, Any] = {}
        for g in group_names:
            if g in inv.groups:
                variables.update(inv.groups[g].vars)
        variables.update(spec.vars)
        hosts.append(
            DeclaredHost(
                name=name,
                address=address,
                groups=tuple(spec.groups),
                ssh=ssh,
                vars=variables,
                services=params,
            )
        )

    if problems.items:
        ordered = sorted(problems.items, key=lambda p: (p.file != rel, p.file, p.line or 0))
        raise InvalidDeclaration(ordered, revision)
    return DeclaredState(
        environment=environment,
        root=str(root),
        settings=inv.settings,
        hosts=tuple(hosts),
        service_order=tuple(services),
        service_digests=_service_digests(root, services),
    )


def _validate_inventory(data: dict[str, Any], problems: _Problems) -> InventoryFile:
    """Validate piece by piece, so one bad host or group does not hide the other problems."""
    for key in data:
        if key not in InventoryFile.model_fields:
            problems.add((str(key),), "Extra inputs are not permitted")
    if not isinstance(data.get("hosts"), dict):
        missing = "hosts" not in data
        problems.add(("hosts",), "Field required" if missing else "Input should be a mapping")

    def check(model: type[_M], value: Any, loc: Loc) -> _M | None:
        try:
            return model.model_validate_json(json.dumps(value, default=str), strict=True)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                problems.add((*loc, *err["loc"]), err["msg"])
            return None

    settings = check(EnvironmentSettings, data.get("settings") or {}, ("settings",))
    sections: dict[str, dict[str, Any]] = {}
    for section, model in (("groups", GroupSpec), ("hosts", HostSpec)):
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            problems.add((section,), "Input should be a mapping")
            raw = {}
        sections[section] = {}
        for name, value in raw.items():
            item = check(model, value, (section, str(name)))
            if item is not None:
                sections[section][str(name)] = item
    lab = check(LabSpec, data.get("lab") or {}, ("lab",))
    return InventoryFile.model_construct(
        settings=settings or EnvironmentSettings(),
        lab=lab or LabSpec(),
        groups=sections["groups"],
        hosts=sections["hosts"],
    )


class _Problems:
    """Collects problems, placing each at the line of the nearest declared key."""

    def __init__(self, file: str, lines: dict[Loc, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[Problem] = []

    def add(self, loc: Loc, message: str) -> None:
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                line = self.lines[loc[:n]]
                break
        field = ".".join(str(part) for part in loc)
        problem = Problem(self.file, line, field, message)
        if problem not in self.items:  # the same group error shows once, not once per host
            self.items.append(problem)


def _line_index(text: str) -> dict[Loc, int]:
    """Map every key path in a YAML document to its 1-based line."""
    index: dict[Loc, int] = {}

    def walk(node: yaml.Node, path: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = (*path, str(key_node.value))
                index[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        index[()] = 1
        walk(root, ())
    return index


def _service_order(inv: InventoryFile) -> list[str]:
    """Services in apply order: the ``all`` group's, then other groups', then hosts'."""
    order: list[str] = []

    def see(names: Iterator[str]) -> None:
        for n in names:
            if n not in order:
                order.append(n)

    if ALL_GROUP in inv.groups:
        see(iter(inv.groups[ALL_GROUP].services))
    for group in inv.groups.values():
        see(iter(group.services))
    for host in inv.hosts.values():
        see(iter(host.services))
    return order


def _service_model(root: Path, service: str, problems: _Problems) -> type[BaseModel] | None:
    """The service's ``Params`` model, or None when it declares none (any params accepted)."""
    folder = root / "deploys" / service
    if not (folder / "deploy.py").is_file():
        for loc in _service_locs(problems, service):
            problems.add(loc, f"service {service!r} has no deploys/{service}/deploy.py")
        return None
    model_file = folder / "model.py"
    if not model_file.is_file():
        return None
    rel = f"deploys/{service}/model.py"
    module_name = f"_gitops_service_model_{service}_{abs(hash(str(model_file)))}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, model_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        problems.items.append(Problem(rel, exc.lineno, "", f"syntax error: {exc.msg}"))
        return None
    except Exception as exc:
        problems.items.append(Problem(rel, None, "", f"cannot import: {type(exc).__name__}"))
        return None
    finally:
        sys.modules.pop(module_name, None)
    params = getattr(module, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.items.append(Problem(rel, None, "Params", "should be a pydantic BaseModel class"))
        return None
    if params.model_config.get("extra") != "forbid":
        # Unknown fields are always errors, whatever the service's model says.
        forbid = {**params.model_config, "extra": "forbid"}
        params = type(params.__name__, (params,), {"model_config": forbid})
    return params


def _service_locs(problems: _Problems, service: str) -> list[Loc]:
    """Every place the inventory names ``service`` (for 'no such service' errors)."""
    return [loc for loc in problems.lines if len(loc) == 4 and loc[2] == "services"
            and loc[3] == service]


def _host_services(
    inv: InventoryFile,
    host: str,
    group_names: list[str],
    order: list[str],
    models: dict[str, type[BaseModel] | None],
    problems: _Problems,
) -> dict[str, ServiceParams]:
    """Merge group then host parameters per service and validate them for this host."""
    result: dict[str, ServiceParams] = {}
    for service in order:
        merged: dict[str, Any] = {}
        origin: dict[str, Loc] = {}
        declared_at: Loc | None = None
        layers: list[tuple[Loc, dict[str, Any] | None]] = [
            (("groups", g, "services", service), inv.groups[g].services.get(service))
            for g in group_names
            if g in inv.groups
        ]
        layers.append((("hosts", host, "services", service), inv.hosts[host].services.get(service)))
        for loc, params in layers:
            if params is None:
                continue
            declared_at = loc
            for key, value in params.items():
                merged[key] = value
                origin[key] = (*loc, key)
        if declared_at is None:
            continue
        model = models.get(service)
        if model is None:
            result[service] = merged
            continue
        try:
            validated = model.model_validate_json(json.dumps(merged, default=str), strict=True)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                loc = tuple(err["loc"])
                if loc and isinstance(loc[0], str) and loc[0] in origin:
                    problems.add((*origin[loc[0]], *loc[1:]), err["msg"])
                else:  # a missing field: report it where the service is declared
                    problems.add((*declared_at, *loc), err["msg"])
            continue
        result[service] = _plain(validated)
    return result


def _plain(model: BaseModel) -> ServiceParams:
    """Parameters as JSON-compatible values, secrets revealed (they go to the deploy only)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr | SecretBytes):
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return {k: reveal(v) for k, v in value}
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [reveal(v) for v in value]
        return value

    revealed = {name: reveal(value) for name, value in model}
    return json.loads(json.dumps(revealed, default=str))  # type: ignore[no-any-return]


def _resolve_ssh(*layers: SSHSettings) -> ResolvedSSH:
    merged: dict[str, Any] = SSH_DEFAULTS.model_dump()
    for layer in layers:
        merged.update(layer.model_dump(exclude_none=True))
    return ResolvedSSH(**merged)


def _tree_digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(b"link:" + os.readlink(path).encode() if path.is_symlink()
                      else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _service_digests(root: Path, services: list[str]) -> dict[str, str]:
    """Per service: a digest of its folder and of every file outside ``deploys/`` and
    ``inventories/`` (a deploy may read any of those)."""
    shared = [p for p in root.rglob("*") if (p.is_file() or p.is_symlink())
              and p.relative_to(root).parts[0] not in (".git", "deploys", "inventories")]
    base = _tree_digest(shared, root)
    out = {}
    for service in services:
        files = [p for p in (root / "deploys" / service).rglob("*")
                 if p.is_file() or p.is_symlink()]
        out[service] = hashlib.sha256(f"{base}:{_tree_digest(files, root)}".encode()).hexdigest()
    return out
