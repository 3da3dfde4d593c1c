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

import ast
import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from gitops.errors import InvalidDeclaration, Problem
from gitops.model import (
    ALL_GROUP,
    NAME_RE,
    SSH_DEFAULTS,
    TEAMS_FILE,
    DeclaredHost,
    DeclaredState,
    EnvironmentSettings,
    GroupSpec,
    HostSpec,
    InventoryFile,
    LabSpec,
    ResolvedSSH,
    ServiceMeta,
    ServiceParams,
    SSHSettings,
    TeamsFile,
    check_address,
    check_host_name,
    check_name,
    unsafe_reason,
)
from gitops.pipeline import depends, sops
from gitops.pipeline.hostsource import HostSource, SourceUnavailable
from gitops.settings import SopsSettings

Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)

__all__ = ["environments", "load", "read_yaml", "teams"]

MAX_DEPTH = 50
"""Deepest nesting of YAML collections accepted (deeper is surely a mistake)."""
MAX_NODES = 100_000
"""Most values a YAML file may expand to, aliases counted each time they are used (a
"billion laughs" alias bomb is refused instead of filling memory)."""
CHECK_ARGUMENTS = ("host", "params")
"""What a check function in ``checks.py`` may take (see gitops.workers.verify_worker)."""


def environments(root: Path) -> list[str]:
    """The environments a snapshot declares (one per ``inventories/*.yml``)."""
    folder = root / "inventories"
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


# --- reading YAML: safe, lossless, every error at a line ------------------------------------

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, made strict: only JSON's types are built (no dates, sets,
    binary or objects), and nesting deeper than ``MAX_DEPTH`` is an error, not a crash."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, node: yaml.Node) -> None:
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
            "(strings, numbers, booleans, null, lists and mappings only)", node.start_mark)


# Unquoted dates stay strings (as in JSON); explicit non-JSON tags are refused.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader._refuse)


def read_yaml(path: Path, rel: str, revision: str | None = None) -> tuple[Any, dict[Loc, int]]:
    """The one reader of a YAML file of the repository: its data and the 1-based line of
    every key path. Raises ``InvalidDeclaration`` (file ``rel``, a line) for bytes that are
    not UTF-8, a YAML error, duplicate keys, keys that are not strings, aliases that refer to
    themselves or expand too far, or a tag that would build anything but JSON's types."""

    def fail(line: int, message: str) -> InvalidDeclaration:
        return InvalidDeclaration([Problem(rel, max(line, 1), "", message)], revision)

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(1, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(raw[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks every character
        node = loader.get_single_node()
        problems: list[Problem] = []
        lines = _check_nodes(node, rel, problems)
        if problems:
            raise InvalidDeclaration(problems, revision)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise fail(line, f"YAML: {what or 'cannot be parsed'}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text[: exc.position].count("\n") + 1
        raise fail(line, f"YAML: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:
        raise fail(1, f"YAML: {type(exc).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _check_nodes(root: yaml.Node | None, rel: str, problems: list[Problem]) -> dict[Loc, int]:
    """Line index of a composed document; problems for duplicate or non-string keys, and
    aliases that refer to themselves or expand to more than ``MAX_NODES`` values."""
    index: dict[Loc, int] = {}
    if root is None:
        return index
    index[()] = 1
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def line(node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1

    def walk(node: yaml.Node, path: Loc | None) -> int:
        """Size of ``node`` with its aliases expanded; ``path`` None below an alias (its
        keys are already indexed where the anchor is)."""
        if id(node) in open_nodes:
            problems.append(Problem(rel, line(node), "", "YAML: an alias refers to itself"))
            return 0
        if id(node) in sizes:
            return sizes[id(node)]
        open_nodes.add(id(node))
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                sub: Loc | None = None
                if key_node.tag == _MERGE:
                    pass
                elif not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                    problems.append(Problem(rel, line(key_node), "",
                                            "a key should be a string (quote it)"))
                else:
                    key = str(key_node.value)
                    if path is not None:
                        sub = (*path, key)
                        index.setdefault(sub, line(key_node))
                    if key in seen:
                        field = _field(sub or (key,))
                        problems.append(Problem(rel, line(key_node), field,
                                                f"duplicate key (first at line {seen[key]})"))
                    seen.setdefault(key, line(key_node))
                size += walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = (*path, i) if path is not None else None
                if sub is not None:
                    index.setdefault(sub, line(item))
                size += walk(item, sub)
        open_nodes.discard(id(node))
        sizes[id(node)] = size
        if size > MAX_NODES:
            problems.append(Problem(rel, line(node), "",
                                    f"YAML: expands to more than {MAX_NODES} values (aliases)"))
            raise _TooBig
        return size

    with contextlib.suppress(_TooBig):
        walk(root, ())
    return index


def _field(loc: Loc) -> str:
    """A key path for messages; control characters in keys escaped (one line per problem)."""
    return ".".join(str(part).encode("unicode_escape").decode("ascii")
                    if unsafe_reason(str(part)) else str(part) for part in loc)


HostsFrom = Callable[[dict[str, list[str]], list[str]], dict[str, dict[str, Any]]]
"""``load``'s ``hosts_from``: (each host's groups, ``lab.packages``) -> the kept hosts'
``{"address": ..., "ssh": {...}}``."""


class _TooBig(Exception):
    """Stops the walk of a document at the first node that expands too far."""


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
        shown = _field((rel,))  # control characters of an --environment option escaped
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

    problems = _Problems(rel, lines)
    inv = _validate_inventory(data, problems)

    services = _service_order(inv)
    models = {name: _service_model(root, name, inv, problems) for name in services}
    requires = _service_requires(root, services, revision, problems)
    _check_teams(root, inv, services, revision, problems)
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
                                _Problems(rel, lines) if unopened else problems)
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

    _check_requires(requires, declared_on, problems)
    removable = _removable(root, problems)
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
        service_digests=_service_digests(root, services),
        redact=tuple(sorted(secrets)),
        secret_files=secret_files,
    )


def _filled(given: dict[str, Any], source: str, loc: Loc,
            problems: _Problems) -> dict[str, Any] | None:
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


def _validate_inventory(data: dict[str, Any], problems: _Problems) -> InventoryFile:
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


class _Problems:
    """Collects problems (and warnings), placing each at the line of the nearest declared key."""

    def __init__(self, file: str, lines: dict[Loc, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[Problem] = []
        self.warnings: list[Problem] = []

    def at(self, loc: Loc, message: str) -> Problem:
        line = 1
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                line = self.lines[loc[:n]]
                break
        return Problem(self.file, line, _field(loc), message)

    def add(self, loc: Loc, message: str) -> None:
        problem = self.at(loc, message)
        if problem not in self.items:  # the same group error shows once, not once per host
            self.items.append(problem)

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(self.at(loc, message))


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


SERVICE_FILE = "service.yml"
"""A service's metadata, besides its parameters: ``deploys/<service>/service.yml``."""


class _Requires(dict[str, list[str]]):
    """Service -> the services it requires, with where each requirement is written."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[tuple[str, str], tuple[str, int, str]] = {}
        """(service, requirement) -> file, line and field of the requirement."""
        self.guards: dict[str, tuple[str, ...]] = {}
        """Service whose ``service.yml`` says ``guard: true`` -> its ``guard_files``."""


def _service_requires(root: Path, services: list[str], revision: str | None,
                      problems: _Problems) -> _Requires:
    """Read and validate each used service's ``service.yml`` (optional); a requirement that
    names no service (no ``deploys/<name>/deploy.py``) is a problem at its line."""
    out = _Requires()
    for service in services:
        path = root / "deploys" / service / SERVICE_FILE
        if not (root / "deploys" / service / "deploy.py").is_file() or not path.is_file():
            continue  # a missing deploy.py is reported where the inventory names the service
        rel = f"deploys/{service}/{SERVICE_FILE}"
        try:
            data, lines = read_yaml(path, rel, revision)
        except InvalidDeclaration as exc:
            problems.items.extend(exc.problems)
            continue
        here = _Problems(rel, lines)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            here.add((), "should be a mapping (requires: [service, ...])")
        else:
            try:
                meta = ServiceMeta.model_validate_json(json.dumps(data, default=str), strict=True)
            except ValidationError as exc:
                for err in exc.errors(include_url=False, include_input=False):
                    here.add(tuple(err["loc"]), err["msg"].removeprefix("Value error, "))
            else:
                out[service] = []
                if meta.guard:
                    out.guards[service] = tuple(meta.guard_files)
                for i, name in enumerate(meta.requires):
                    loc: Loc = ("requires", i)
                    if name == service:
                        here.add(loc, f"service {service!r} cannot require itself")
                    elif not (root / "deploys" / name / "deploy.py").is_file():
                        here.add(loc, f"unknown service {name!r}: there is no "
                                 f"deploys/{name}/deploy.py")
                    elif name not in out[service]:
                        out[service].append(name)
                        out.at[(service, name)] = (rel, here.at(loc, "").line or 1, _field(loc))
        problems.items.extend(here.items)
    return out


def teams(root: Path, revision: str | None = None) -> tuple[list[str], list[Problem]]:
    """The teams ``teams.yml`` at the snapshot's root declares (none without the file), and
    its problems (each at its file and line)."""
    path = root / TEAMS_FILE
    if not path.is_file():
        return [], []
    try:
        data, lines = read_yaml(path, TEAMS_FILE, revision)
    except InvalidDeclaration as exc:
        return [], list(exc.problems)
    here = _Problems(TEAMS_FILE, lines)
    if not isinstance(data, dict):
        here.add((), "should be a mapping: teams: [name, ...]")
        return [], here.items
    try:
        found = TeamsFile.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            here.add(tuple(err["loc"]), err["msg"].removeprefix("Value error, "))
        return [], here.items
    for i, name in enumerate(found.teams):
        if name in found.teams[:i]:
            here.add(("teams", i), f"team {name!r} is listed twice")
    return list(dict.fromkeys(found.teams)), here.items


def _check_teams(root: Path, inv: InventoryFile, services: list[str], revision: str | None,
                 problems: _Problems) -> None:
    """An owning team the inventory names must be declared in ``teams.yml``; a service given
    an owner must be one the inventory uses."""
    named: list[tuple[Loc, str]] = []
    if inv.settings.team is not None:
        named.append((("settings", "team"), inv.settings.team))
    for service, team in inv.settings.service_teams.items():
        loc: Loc = ("settings", "service_teams", service)
        if service not in services:
            problems.add(loc, f"service {service!r} is not used by this inventory")
        named.append((loc, team))
    if not named:
        return
    known, found = teams(root, revision)
    problems.items.extend(p for p in found if p not in problems.items)
    if found:
        return
    for loc, team in named:
        if team not in known:
            hint = (f"declared in {TEAMS_FILE}: {', '.join(known)}" if known
                    else f"there is no {TEAMS_FILE} declaring the teams")
            problems.add(loc, f"unknown team {team!r} ({hint})")


def _check_requires(requires: _Requires, declared_on: dict[str, set[str]],
                    problems: _Problems) -> None:
    """Cycles and requirements a host does not run are problems at the requiring line."""
    for loop in depends.cycles(list(requires), requires):
        path = " -> ".join(loop)
        for service, name in itertools.pairwise(loop):
            file, line, field = requires.at[(service, name)]
            problems.items.append(Problem(file, line, field,
                                          f"dependency cycle: {path}"))
    for service, names in requires.items():
        for name in names:
            missing = sorted(h for h, used in declared_on.items()
                             if service in used and name not in used)
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                                  if len(missing) > 3 else "")
                file, line, field = requires.at[(service, name)]
                problems.items.append(Problem(
                    file, line, field,
                    f"{service!r} requires {name!r} on the same host, but {shown} "
                    f"run{'s' if len(missing) == 1 else ''} {service!r} without {name!r}"))


def _service_locs(inv: InventoryFile, service: str) -> list[Loc]:
    """Every place the inventory names ``service``."""
    return [(section, name, "services", service)
            for section, specs in (("groups", inv.groups), ("hosts", inv.hosts))
            for name, spec in specs.items() if service in spec.services]


def _service_model(root: Path, service: str, inv: InventoryFile,
                   problems: _Problems) -> type[BaseModel] | None:
    """Compile the service's files and return its ``Params`` model, or None when it declares
    none (any parameters accepted, with a warning) or has a problem."""
    folder = root / "deploys" / service
    locs = _service_locs(inv, service)
    if not (folder / "deploy.py").is_file():
        for loc in locs:
            problems.add(loc, f"service {service!r} has no deploys/{service}/deploy.py")
        return None
    compiled = {name: _compile(folder / name, f"deploys/{service}/{name}", problems)
                for name in ("deploy.py", "checks.py", "model.py") if (folder / name).is_file()}
    if "checks.py" in compiled and compiled["checks.py"] is not None:
        _check_checks(compiled["checks.py"], f"deploys/{service}/checks.py", problems)
    if "checks.py" not in compiled:
        message = (f"service {service!r} has no deploys/{service}/checks.py: a host it is "
                   "applied to is not verified by it (with no other check there: applied, "
                   "not verified)")
        if inv.settings.require_checks:
            problems.add(locs[0], f"{message} (settings.require_checks)")
        else:
            problems.warn(locs[0], message)
    model_file = folder / "model.py"
    if not model_file.is_file():
        message = (f"service {service!r} has no deploys/{service}/model.py: its parameters, "
                   "typos included, are not checked")
        if inv.settings.require_models:
            problems.add(locs[0], f"{message} (settings.require_models)")
        else:
            problems.warn(locs[0], message)
        return None
    if compiled["model.py"] is None:
        return None
    return _import_params(model_file, f"deploys/{service}/model.py", service, problems)


def _compile(path: Path, rel: str, problems: _Problems) -> ast.Module | None:
    """Parse and compile a Python file of a service (nothing is run); its syntax tree, or
    None with the problem at its line."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning, DeprecationWarning: not ours to print
            tree = ast.parse(source, filename=rel)
            compile(tree, rel, "exec", dont_inherit=True)
        return tree
    except SyntaxError as exc:
        problems.items.append(Problem(rel, exc.lineno or 1, "", f"syntax error: {exc.msg}"))
    except ValueError:  # a null byte (Python < 3.12)
        problems.items.append(Problem(rel, source[: source.find(b"\0")].count(b"\n") + 1, "",
                                      "syntax error: source code cannot contain null bytes"))
    except (RecursionError, MemoryError):
        problems.items.append(Problem(rel, 1, "", "syntax error: nested too deeply to compile"))
    except OSError as exc:
        problems.items.append(Problem(rel, 1, "", f"cannot read: {exc.strerror}"))
    return None


REMOVE_FILE = "remove.py"
"""How a service is taken off a host: ``deploys/<service>/remove.py`` (see
gitops.pipeline.prune)."""


def _removable(root: Path, problems: _Problems) -> tuple[str, ...]:
    """Compile every ``deploys/<service>/remove.py`` (never running it): a service no host
    declares any more may still be on hosts. The services whose file compiles."""
    folder = root / "deploys"
    found = []
    for path in sorted(folder.glob(f"*/{REMOVE_FILE}")) if folder.is_dir() else []:
        service = path.parent.name
        if not NAME_RE.fullmatch(service) or not path.is_file():
            continue
        if _compile(path, f"deploys/{service}/{REMOVE_FILE}", problems) is not None:
            found.append(service)
    return tuple(found)


def _check_checks(tree: ast.Module, rel: str, problems: _Problems) -> None:
    """A checks file defines ``test_*`` functions taking only ``host`` and ``params`` (read
    from the syntax tree: checks.py runs only in the verify worker, never here)."""
    tests = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and node.name.startswith("test_")]
    if not tests:
        problems.items.append(Problem(rel, 1, "", "no check functions: define "
                                      "test_<name>(host, params) functions"))
    for test in tests:
        if isinstance(test, ast.AsyncFunctionDef):
            problems.items.append(Problem(rel, test.lineno, test.name,
                                          "a check cannot be async"))
        a = test.args
        names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
        names += [f"*{a.vararg.arg}"] if a.vararg else []
        names += [f"**{a.kwarg.arg}"] if a.kwarg else []
        others = [n for n in names if n not in CHECK_ARGUMENTS]
        if others or a.posonlyargs:
            problems.items.append(Problem(
                rel, test.lineno, test.name,
                f"takes {', '.join(others or ['positional-only arguments'])}: a check takes "
                f"only {' and '.join(CHECK_ARGUMENTS)}"))


def _import_params(model_file: Path, rel: str, service: str,
                   problems: _Problems) -> type[BaseModel] | None:
    """Import a compiled ``model.py`` (it only declares a pydantic model) and return its
    ``Params`` class with unknown fields forbidden."""
    module_name = f"_gitops_service_model_{service}_{abs(hash(str(model_file)))}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, model_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
        params = getattr(module, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            line = _params_line(model_file)
            problems.items.append(Problem(rel, line, "Params",
                                          "should be a pydantic BaseModel class"))
            return None
        if params.model_config.get("extra") != "forbid":
            # Unknown fields are always errors, whatever the service's model says.
            forbid = {**params.model_config, "extra": "forbid"}
            params = type(params.__name__, (params,), {"model_config": forbid})
        return params
    except (Exception, SystemExit) as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.filename == str(model_file)]
        line = (frames[-1].lineno or 1) if frames else 1
        problems.items.append(Problem(rel, line, "", f"cannot import: {type(exc).__name__}"))
        return None
    finally:
        sys.modules.pop(module_name, None)


def _params_line(model_file: Path) -> int:
    """The line of ``class Params`` (or ``Params = ...``) in a model file, else 1."""
    for node in ast.parse(model_file.read_bytes()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Params":
            return node.lineno
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "Params" for t in node.targets):
            return node.lineno
    return 1


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
    ``inventories/`` (a deploy may read any of those), but hidden top-level folders
    (``.git``, a work tree's ``.venv``) and ``__pycache__`` folders."""
    shared = [p for p in _files(root) if p.relative_to(root).parts[0] not in
              ("deploys", "inventories")]
    base = _tree_digest(shared, root)
    out = {}
    for service in services:
        files = list(_files(root / "deploys" / service))
        out[service] = hashlib.sha256(f"{base}:{_tree_digest(files, root)}".encode()).hexdigest()
    return out


def _files(folder: Path) -> Iterator[Path]:
    """Files and symbolic links under ``folder``, without following links, skipping hidden
    folders at its top and ``__pycache__`` folders."""
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"
                   and not (top == str(folder) and d.startswith("."))]
        for name in names:
            yield Path(top, name)
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                yield Path(top, d)
