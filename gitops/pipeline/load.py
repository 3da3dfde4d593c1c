"""Stage 2: a snapshot folder -> a ``DeclaredState``, or every problem at once.

Reads ``inventories/<environment>.yml`` (``read_yaml``: safe loading only, line numbers
kept, data that would be lost is an error), validates it strictly with pydantic, checks what
a schema cannot (services without a folder, unknown groups, shared addresses), compiles each
used service's ``deploy.py``, ``checks.py`` and ``model.py`` (never running ``deploy.py`` or
``checks.py``), and validates each host's merged service parameters against the service's
``deploys/<service>/model.py`` ``Params`` model. Every service folder's optional
``remove.py`` (how a host that no longer declares the service is rid of it, see
``gitops.pipeline.prune``) is compiled too, used or not. Each service's optional
``deploys/<service>/service.yml`` says what it requires; the services are ordered by that
graph (``gitops.pipeline.depends``), its cycles and unknown names refused. The one loader of a
revision: called by ``reconcile`` (plan, reconcile, the daemon) and ``gitops validate``
(also ``--worktree``). Every problem names a file and line; values are never echoed, so
secrets cannot leak.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from gitops.errors import InvalidDeclaration, Problem
from gitops.model import (
    ALL_GROUP,
    NAME_RE,
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
    check_address,
    check_host_name,
    check_name,
    unsafe_reason,
)
from gitops.pipeline import depends, sops
from gitops.pipeline.hostsource import HostSource, SourceUnavailable
from gitops.pipeline.services import (
    check_requires,
    check_teams,
    removable_services,
    service_digests,
    service_model,
    service_requires,
    teams,
)
from gitops.pipeline.yamlfile import Loc, Problems, field_path, read_yaml
from gitops.settings import SopsSettings

_M = TypeVar("_M", bound=BaseModel)

__all__ = ["HostsFrom", "environments", "load", "read_yaml", "teams"]


def environments(root: Path) -> list[str]:
    """The environments a snapshot declares (one per ``inventories/*.yml``)."""
    folder = root / "inventories"
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


HostsFrom = Callable[[dict[str, list[str]], list[str]], dict[str, dict[str, Any]]]
"""``load``'s ``hosts_from``: (each host's groups, ``lab.packages``) -> the kept hosts'
``{"address": ..., "ssh": {...}}``."""


def load(
    root: Path,
    environment: str,
    *,
    revision: str | None = None,
    host_source: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
    keys: SopsSettings | None = None,
    hosts_from: HostsFrom | None = None,
    lab: HostSource | None = None,
) -> DeclaredState:
    """Validate ``environment`` in the snapshot at ``root``; raise ``InvalidDeclaration``.

    ``host_source`` fills addresses and SSH settings for environments whose
    ``settings.source`` is not ``inventory`` (the Vagrant inventory passes one).
    ``hosts_from`` stands other hosts in for the declared ones (a preview's lab,
    ``gitops.daemon.preview``), whatever ``settings.source`` says: it is given each host's groups
    (inventory order) and the inventory's ``lab.packages``, and returns the address and SSH
    settings of the hosts to keep; every host is still validated, the others are not kept.
    ``keys`` open the SOPS-encrypted values and files (see ``gitops.pipeline.sops``).
    ``lab`` gives the hosts of ``settings.source: lab``, and its keys when ``keys`` has none
    (``gitops.pipeline.hostsource``; without it that source is not available).
    """
    rel = f"inventories/{environment}.yml"
    path = root / rel
    plain = environment and "/" not in environment and not unsafe_reason(environment)
    if not plain or not path.is_file():
        known = ", ".join(environments(root)) or "none"
        shown = field_path((rel,))  # control characters of an --environment option escaped
        raise InvalidDeclaration(
            [Problem(shown, None, "", f"no such environment (declared: {known})")], revision
        )
    data, lines = read_yaml(path, rel, revision)
    if not isinstance(data, dict):
        raise InvalidDeclaration(
            [Problem(rel, 1, "", "should be a mapping with settings, groups and hosts")], revision
        )
    text = path.read_text(encoding="utf-8-sig") if "sops" in data else ""  # read_yaml checked it
    declared = data.get("settings")
    if (keys is None or (keys.age_key is None and keys.pgp_key is None)) and \
            isinstance(declared, dict) and declared.get("source") == "lab" and lab is not None:
        keys = lab.keys  # the lab's demo key
    unopened: list[Problem] = []  # secrets no key opens: the rest is checked without them
    try:
        data, secrets = sops.open_inventory(root, rel, data, text, keys, revision)
    except InvalidDeclaration as exc:
        if "sops" in data:  # the inventory itself: nothing of it can be read
            raise
        unopened, secrets = list(exc.problems), set()  # its secrets file, left out

    problems = Problems(rel, lines)
    inv = _validate_inventory(data, problems)

    services = _service_order(inv)
    models = {name: service_model(root, name, inv, problems) for name in services}
    requires = service_requires(root, services, revision, problems)
    check_teams(root, inv, services, revision, problems)
    services = depends.apply_order(services, requires)
    declared_on: dict[str, set[str]] = {}
    sources: dict[str, dict[str, Any]] = {}
    raw_settings = data.get("settings")
    # Settings that did not validate leave the source unknown: no host is blamed for it.
    unsourced = inv.settings.source == "inventory" and isinstance(raw_settings, dict) and \
        raw_settings.get("source", "inventory") != "inventory"
    if hosts_from is not None:  # its failures (a lab that does not boot) are its caller's
        sources = hosts_from({n: list(h.groups) for n, h in inv.hosts.items()},
                             list(inv.lab.packages))
    elif inv.settings.source == "lab" and lab is None:  # its caller has no lab to hand in
        problems.add(("settings", "source"), "source 'lab' is not available")
        unsourced = True
    elif inv.settings.source == "lab" and lab is not None:  # the running lab's addresses, key
        try:
            sources = lab.hosts(inv.settings.lab, list(inv.hosts))
        except SourceUnavailable as exc:
            problems.add(("settings", "source"), str(exc))
            unsourced = True  # said once, not again for each host's missing address
        else:
            try:  # the packages the deploys install that the lab's mirror lacks
                lab.provide_packages(inv.settings.lab, list(inv.lab.packages))
            except SourceUnavailable as exc:
                problems.add(("lab", "packages"), str(exc))
    elif inv.settings.source != "inventory":
        if host_source is None:
            problems.add(("settings", "source"), f"source {inv.settings.source!r} is not available")
        else:
            try:
                sources = host_source(list(inv.hosts))
            except Exception as exc:  # the source names what failed (vagrant not running, ...)
                problems.add(("settings", "source"), str(exc))
                unsourced = True  # said once, not again for each host's missing address

    hosts: list[DeclaredHost] = []
    seen_addresses: dict[tuple[str, int], str] = {}
    # a group declared but invalid is one problem (said at the group), not one per host
    raw_groups = data.get("groups") or {}
    named = set(raw_groups) if isinstance(raw_groups, dict) else None
    for name, spec in inv.hosts.items():
        for i, group in enumerate(spec.groups):
            if group != ALL_GROUP and group not in inv.groups and named is not None \
                    and group not in named:
                problems.add(("hosts", name, "groups", i), f"unknown group {group!r}")
        filled = _filled(sources.get(name, {}), inv.settings.source, ("hosts", name), problems)
        if filled is None:
            continue
        address = spec.address or filled.get("address")
        if hosts_from is not None:  # the stand-in's address, or (left out) validated only
            address = filled.get("address")
            spec = spec.model_copy(update={"ssh": SSHSettings()})
        if not address and not unsourced and hosts_from is None:
            why = {"vagrant": "not running in vagrant", "lab": "not in the lab"}.get(
                inv.settings.source, "is required")
            problems.add(("hosts", name, "address"), f"address {why}")
            continue
        ssh = _resolve_ssh(inv.settings.ssh, filled["ssh"], spec.ssh)
        key = (address or "", ssh.port)
        if key in seen_addresses:
            problems.add(
                ("hosts", name, "address"),
                f"address {address}:{ssh.port} is also host {seen_addresses[key]!r}",
            )
        if address:
            seen_addresses[key] = name
        group_names = [ALL_GROUP, *[g for g in spec.groups if g != ALL_GROUP]]
        declared_on[name] = {s for g in group_names if g in inv.groups
                             for s in inv.groups[g].services} | set(spec.services)
        # without the secrets the parameters are not whole: their models are not asked
        params = _host_services(inv, name, group_names, services, models,
                                Problems(rel, lines) if unopened else problems)
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

    check_requires(requires, declared_on, problems)
    removable = removable_services(root, problems)
    secret_files: dict[str, str] = {}
    try:
        secret_files, file_secrets = sops.deploy_files(root, services, keys, revision)
    except InvalidDeclaration as exc:
        unopened += exc.problems
    if problems.items or unopened:
        ordered = sorted([*unopened, *problems.items],
                         key=lambda p: (p.file != rel, p.file, p.line or 0))
        raise InvalidDeclaration(ordered, revision)
    secrets |= file_secrets | sops.secret_params(models, hosts)
    return DeclaredState(
        environment=environment,
        root=str(root),
        settings=inv.settings,
        hosts=tuple(hosts),
        service_order=tuple(services),
        requires={s: tuple(r) for s, r in requires.items() if r},
        removable=removable,
        guarded=tuple(s for s in services if inv.settings.guard.all or s in requires.guards),
        guard_files={s: f for s, f in requires.guards.items() if f},
        warnings=tuple(str(w) for w in problems.warnings),
        service_digests=service_digests(root, services),
        redact=tuple(sorted(secrets)),
        secret_files=secret_files,
    )


def _filled(given: dict[str, Any], source: str, loc: Loc,
            problems: Problems) -> dict[str, Any] | None:
    """What the host source (``vagrant ssh-config``) says of a host, held to the same syntax
    as the inventory: ``{"address": ..., "ssh": SSHSettings}``, or None (a problem added)."""
    try:
        address = given.get("address")
        if address is not None:
            check_address(address)
        return {"address": address, "ssh": SSHSettings.model_validate(given.get("ssh", {}))}
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        what = (exc.errors(include_url=False, include_input=False)[0]["msg"]
                if isinstance(exc, ValidationError) else str(exc))
        problems.add((*loc, "address"), f"from source {source}: {what}")
        return None


def _validate_inventory(data: dict[str, Any], problems: Problems) -> InventoryFile:
    """Validate piece by piece, so one bad host or group does not hide the other problems."""
    for key in data:
        if key not in InventoryFile.model_fields:
            problems.add((key,), "Extra inputs are not permitted")
    if not isinstance(data.get("hosts"), dict):
        missing = "hosts" not in data
        problems.add(("hosts",), "Field required" if missing else "Input should be a mapping")

    def check(model: type[_M], value: Any, loc: Loc) -> _M | None:
        try:
            return model.model_validate_json(json.dumps(value, default=str), strict=True)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                problems.add((*loc, *err["loc"]), err["msg"].removeprefix("Value error, "))
            return None

    settings = check(EnvironmentSettings, data.get("settings") or {}, ("settings",))
    sections: dict[str, dict[str, Any]] = {}
    section_models: tuple[tuple[str, type[GroupSpec | HostSpec]], ...] = (
        ("groups", GroupSpec), ("hosts", HostSpec))
    for section, model in section_models:
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            problems.add((section,), "Input should be a mapping")
            raw = {}
        sections[section] = {}
        for name, value in raw.items():
            try:
                (check_host_name(name) if section == "hosts" else check_name(name, "group name"))
            except ValueError as exc:
                problems.add((section, name), str(exc))
                continue
            item = check(model, _empty_when_null(value), (section, name))
            if item is None:
                continue
            for service in item.services:
                try:
                    check_name(service, "service name")
                except ValueError as exc:
                    problems.add((section, name, "services", service), str(exc))
            sections[section][name] = item
    lab = check(LabSpec, data.get("lab") or {}, ("lab",))
    return InventoryFile.model_construct(
        settings=settings or EnvironmentSettings(),
        lab=lab or LabSpec(),
        groups=sections["groups"],
        hosts=sections["hosts"],
    )


def _empty_when_null(value: Any) -> Any:
    """``web:`` with nothing under it, as a group or as a service of a group or host: empty,
    not null (a service so listed has no parameters; its model says if it needs some)."""
    if value is None:
        return {}
    if isinstance(value, dict) and isinstance(value.get("services"), dict):
        return {**value, "services": {k: {} if v is None else v
                                      for k, v in value["services"].items()}}
    return value


def _service_order(inv: InventoryFile) -> list[str]:
    """Services in apply order: the ``all`` group's, then other groups', then hosts'. A name
    that is not a valid service name (already a problem) is left out: it names no folder."""
    order: list[str] = []

    def see(names: Iterator[str]) -> None:
        for n in names:
            if n not in order and NAME_RE.fullmatch(n):
                order.append(n)

    if ALL_GROUP in inv.groups:
        see(iter(inv.groups[ALL_GROUP].services))
    for group in inv.groups.values():
        see(iter(group.services))
    for host in inv.hosts.values():
        see(iter(host.services))
    return order


def _host_services(
    inv: InventoryFile,
    host: str,
    group_names: list[str],
    order: list[str],
    models: dict[str, type[BaseModel] | None],
    problems: Problems,
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
            result[service] = _plain(validated)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                loc = tuple(err["loc"])
                if loc and isinstance(loc[0], str) and loc[0] in origin:
                    problems.add((*origin[loc[0]], *loc[1:]), err["msg"])
                else:  # a missing field: report it where the service is declared
                    problems.add((*declared_at, *loc), err["msg"])
        except Exception as exc:  # a validator of model.py raised something else
            problems.add(declared_at, f"deploys/{service}/model.py Params raised "
                         f"{type(exc).__name__}")
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
