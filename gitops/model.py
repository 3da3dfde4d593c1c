"""The declared state: what an inventory file says, as strict pydantic models.

``load`` validates ``inventories/<environment>.yml`` against ``InventoryFile`` and each
service's parameters against the ``Params`` model in ``deploys/<service>/model.py``, then
builds a ``DeclaredState``: the resolved, per-host view every later stage reads.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gitops.schedule import Window

__all__ = [
    "ALL_GROUP",
    "HOST_NAME_RE",
    "NAME_RE",
    "SSH_DEFAULTS",
    "TEAMS_FILE",
    "USER_RE",
    "Address",
    "DeclaredHost",
    "DeclaredState",
    "EnvironmentSettings",
    "GroupSpec",
    "GuardSettings",
    "HostName",
    "HostSpec",
    "InventoryFile",
    "KeyPath",
    "LabSpec",
    "ResolvedSSH",
    "RolloutSettings",
    "SSHSettings",
    "ServiceMeta",
    "ServiceParams",
    "TeamName",
    "TeamsFile",
    "User",
    "check_address",
    "check_guard_path",
    "check_host_name",
    "check_name",
    "check_path",
    "check_team",
    "check_user",
    "unsafe_reason",
]

ServiceParams = dict[str, Any]

# --- the syntax of every value that reaches an ssh_config, a command line, a file name or
# a unit (documented in README.md, "The state repository"). Messages never echo the value.

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""Group and service names: a letter or digit, then letters, digits, ``_`` or ``-`` (63 at
most). A service name is a folder name under ``deploys/``, so it has no dot or slash."""
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""Host names: like group names, dots allowed (``web-1.prod``)."""
USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
"""SSH users: a POSIX user name, lower case (``root``, ``ops``, ``deploy-bot``)."""
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PATH_RE = re.compile(r"(/|~/)[A-Za-z0-9._+@/ -]*")
"""Key and known-hosts paths: absolute or ``~/``; letters, digits, ``. _ + @ / -`` and
spaces (quoted in ssh_config); no quote, ``%``, ``$``, backslash or control character."""


def unsafe_reason(value: str) -> str | None:
    """Why ``value`` may not reach a config file or command line (a control character,
    a newline), or None."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in "\u2028\u2029\x85" for c in value):
        return "holds a newline or control character"
    return None


def check_name(value: str, kind: str = "name") -> str:
    """``value`` if it is a valid group or service name, else ValueError."""
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{kind} should be 1-63 letters, digits, '_' or '-', starting with a "
                         "letter or digit")
    return value


def check_host_name(value: str) -> str:
    """``value`` if it is a valid host name (inventory key), else ValueError."""
    if not HOST_NAME_RE.fullmatch(value):
        raise ValueError("host name should be 1-63 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    return value


def check_address(value: str) -> str:
    """``value`` if it is an IPv4/IPv6 address or a DNS name, else ValueError."""
    if "%" not in value:  # an IPv6 zone (fe80::1%eth0) would be an ssh_config token
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    labels = value.split(".")
    if (len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()):  # 10.0.0.256 is no IP address and no name
        return value
    raise ValueError("address should be an IP address or a DNS name (labels of letters, "
                     "digits and '-', separated by dots)")


def check_user(value: str) -> str:
    """``value`` if it is a valid SSH user name, else ValueError."""
    if not USER_RE.fullmatch(value):
        raise ValueError("user should be a POSIX user name: a lower-case letter or '_', then "
                         "up to 31 lower-case letters, digits, '_', '.' or '-'")
    return value


def check_path(value: str) -> str:
    """``value`` if it is a valid key or known-hosts path, else ValueError."""
    if not _PATH_RE.fullmatch(value) or len(value) > 4096:
        raise ValueError("path should be absolute or start with ~/, and hold only letters, "
                         "digits, spaces and . _ + @ / -")
    return value


def check_guard_path(value: str) -> str:
    """An absolute path on a host, one line, no ``..``: a file a guarded apply saves."""
    if (not value.startswith("/") or len(value) > 4096 or "/../" in f"{value}/"
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        raise ValueError("should be an absolute path on the host (one line, no ..)")
    return value


Address = Annotated[str, AfterValidator(check_address)]
HostName = Annotated[str, AfterValidator(check_host_name)]
User = Annotated[str, AfterValidator(check_user)]
KeyPath = Annotated[str, AfterValidator(check_path)]


def check_team(value: str) -> str:
    """``value`` if it is a valid team name (the syntax of group names), else ValueError."""
    return check_name(value, "team name")


TeamName = Annotated[str, AfterValidator(check_team)]


class _Strict(BaseModel):
    # defer_build: each schema is built by the first load, not by every command's import
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class SSHSettings(_Strict):
    """How to reach a host over SSH. Every field may be set per environment or per host."""

    user: User | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key_file: KeyPath | None = None
    """Path of the private key on the control host (never the key itself)."""
    known_hosts_file: KeyPath | None = None
    host_key_checking: Literal["yes", "accept-new", "no"] | None = None
    connect_timeout: int | None = Field(default=None, ge=1, le=300)


class RolloutSettings(_Strict):
    """Rolling batches: a canary batch first, then batches of ``batch`` hosts or percent."""

    canary: int = Field(default=0, ge=0)
    """Hosts in the first batch (0: no canary batch)."""
    batch: Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^([1-9][0-9]?|100)%$")] = (
        "100%"
    )
    """Hosts per following batch: a number, or a percentage of the hosts like ``"50%"``."""

    def batches(self, hosts: list[str]) -> list[list[str]]:
        """``hosts`` split into the batches of this rollout, canary first."""
        rest = list(hosts)
        out: list[list[str]] = []
        if self.canary and rest:
            out.append(rest[: self.canary])
            rest = rest[self.canary :]
        if isinstance(self.batch, int):
            size = self.batch
        else:
            size = max(1, -(-len(hosts) * int(self.batch.rstrip("%")) // 100))
        while rest:
            out.append(rest[:size])
            rest = rest[size:]
        return out


class GuardSettings(_Strict):
    """Guarded applies (``gitops.pipeline.guard``): a change that cuts the controller off is undone
    by the host itself unless the controller reaches it again in time."""

    all: bool = False
    """Guard every service of the environment (else only those whose ``service.yml`` says
    ``guard: true``)."""
    confirm_timeout: int = Field(default=60, ge=5, le=3600)
    """Seconds the controller has, after a host's guarded apply, to reach it again over a new
    SSH connection; then the host reverts by itself."""
    margin: int = Field(default=30, ge=5, le=3600)
    """Seconds the controller keeps trying after ``confirm_timeout`` (to read the revert)."""


class EnvironmentSettings(_Strict):
    """Environment-wide policy."""

    fail_percent: int = Field(default=0, ge=0, le=100)
    """Percentage of hosts that may fail before the rollout stops (0: any failure stops)."""
    parallel: int = Field(default=20, ge=1, le=1000)
    """How many hosts are worked on at once."""
    workers: int | None = Field(default=None, ge=1, le=256)
    """Apply worker processes a batch's hosts are split across (see ``gitops.pipeline.apply``); by
    default as many as the controller has cores, each with at least 10 hosts."""
    rollout: RolloutSettings = RolloutSettings()
    ssh: SSHSettings = SSHSettings()
    source: Literal["inventory", "vagrant", "lab"] = "inventory"
    """Where host addresses come from: this file, ``vagrant ssh-config`` (see
    gitops.pipeline.vagrant)
    or a running ``gitops lab`` (see gitops.lab.inventory_hosts)."""
    lab: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,8}$")
    """With ``source: lab``: the lab's name (default: $GITOPS_LAB_NAME, else ``gitops``)."""
    windows: list[Window] = []
    """Maintenance windows: outside them the daemon applies no new revision (see
    gitops.schedule); the daemon settings' ``windows`` of the environment win when set."""
    guard: GuardSettings = GuardSettings()
    """Guarded applies: which services, and how long a host waits for the controller."""
    require_models: bool = False
    """A used service without ``deploys/<service>/model.py`` is an error (else a warning:
    its parameters, typos included, are passed on unchecked)."""
    require_checks: bool = False
    """A used service without ``deploys/<service>/checks.py`` is an error (else a warning:
    a host whose services have no checks is applied, not verified)."""
    fingerprint_skip: bool = True
    """A host whose services' fingerprints and every fact its last apply (one that changed
    nothing) read are unchanged is reported ``no change, by fingerprint`` without running its
    operations: the facts are read in one remote command (see gitops.pipeline.factskip);
    false: every apply runs every operation."""
    prune: bool = True
    """A service the record has on a host that the revision no longer declares there is
    taken off with its ``deploys/<service>/remove.py`` (false: reported only, the host left
    as it is; see gitops.pipeline.prune); the daemon settings' ``prune`` of the environment wins
    when
    set."""
    team: TeamName | None = None
    """The team that owns this environment: one of the repository's ``teams.yml`` (see
    ``TeamsFile``); the daemon settings' ``team`` of the environment wins when set."""
    service_teams: dict[str, TeamName] = {}
    """Service -> the team that owns it here, for services another team than the
    environment's owns (each service named must be used by the inventory)."""


class GroupSpec(_Strict):
    services: dict[str, ServiceParams] = {}
    vars: dict[str, Any] = {}


class HostSpec(_Strict):
    address: Address | None = None
    """IP address or DNS name; may be left out only when the environment's source fills it."""
    groups: list[str] = Field(min_length=1)
    ssh: SSHSettings = SSHSettings()
    vars: dict[str, Any] = {}
    services: dict[str, ServiceParams] = {}


class LabSpec(_Strict):
    """What an environment with ``source: lab`` needs from the lab (see gitops.lab.packages)."""

    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]*$")]] = []
    """Debian packages the deploys install that the lab's built-in mirror lacks."""


class ServiceMeta(_Strict):
    """The schema of ``deploys/<service>/service.yml``: what the service is, besides its
    parameters (``model.py``) and how it is applied and checked. Optional."""

    requires: list[Annotated[str, AfterValidator(lambda v: check_name(v, "service name"))]] = []
    """Services applied (and ready) on the same host before this one (see
    gitops.pipeline.depends)."""
    guard: bool = False
    """Guard this service's applies (``gitops.pipeline.guard``): before it changes a host, what it
    may
    change is saved there and a revert armed that the controller must disarm in time."""
    guard_files: list[Annotated[str, AfterValidator(check_guard_path)]] = []
    """Absolute paths a guarded apply also saves: files the service's commands write
    (a ``server.shell`` that moves a file in place), which no file operation names."""


TEAMS_FILE = "teams.yml"
"""The repository's teams, at its root: the names inventories may give as owners."""


class TeamsFile(_Strict):
    """The schema of ``teams.yml``: ``teams: [payments, search]``. A team name is bounded
    (declared here), so it can be a metrics label."""

    teams: list[TeamName] = Field(max_length=100)


class InventoryFile(_Strict):
    """The schema of ``inventories/<environment>.yml``."""

    settings: EnvironmentSettings = EnvironmentSettings()
    lab: LabSpec = LabSpec()
    groups: dict[str, GroupSpec] = {}
    hosts: dict[str, HostSpec]


ALL_GROUP = "all"
"""Every host is in this group implicitly; its services and vars apply everywhere."""

SSH_DEFAULTS = SSHSettings(user="root", port=22, host_key_checking="accept-new", connect_timeout=10)


class ResolvedSSH(_Strict):
    user: User
    port: int = Field(ge=1, le=65535)
    key_file: KeyPath | None
    known_hosts_file: KeyPath | None
    host_key_checking: Literal["yes", "accept-new", "no"]
    connect_timeout: int


class DeclaredHost(_Strict):
    """One host as every later stage sees it: its address, SSH, data and services."""

    name: HostName
    address: Address
    groups: tuple[str, ...]
    ssh: ResolvedSSH
    vars: dict[str, Any]
    services: dict[str, ServiceParams]
    """Service name -> validated parameters (JSON-compatible), in apply order."""


class DeclaredState(_Strict):
    """A validated revision of one environment: nothing downstream re-reads YAML."""

    environment: str
    root: str
    """The snapshot folder this state was loaded from."""
    settings: EnvironmentSettings
    hosts: tuple[DeclaredHost, ...]
    service_order: tuple[str, ...]
    """Every service used, in the order they are applied: after what it requires
    (``deploys/<service>/service.yml``), else the ``all`` group's first, then other groups',
    then hosts', each in the order written."""
    requires: dict[str, tuple[str, ...]] = {}
    """Service -> the services it requires (only services that require any)."""
    warnings: tuple[str, ...] = ()
    """What is allowed but probably wrong (a service without ``model.py``), one line each
    with file and line; printed by validate, plan and reconcile."""
    removable: tuple[str, ...] = ()
    """Services of this revision whose folder has a ``remove.py`` (compiled by ``load``):
    how a host that no longer declares one is rid of it (see ``gitops.pipeline.prune``)."""
    service_digests: dict[str, str] = {}
    """Service name -> digest of its folder and of the repository outside ``deploys/`` and
    ``inventories/``: the files its apply can read (see ``reconcile`` for how it is used)."""
    redact: tuple[str, ...] = ()
    """Plain secret values (decrypted from SOPS, or ``SecretStr`` parameters): the workers
    blank them out of every diff, error and progress line (see ``gitops.pipeline.sops``)."""
    guarded: tuple[str, ...] = ()
    """The services whose applies are guarded (``gitops.pipeline.guard``), in ``service_order``."""
    guard_files: dict[str, tuple[str, ...]] = {}
    """Guarded service -> the paths its ``service.yml`` names in ``guard_files``."""
    secret_files: dict[str, str] = {}
    """Each decrypted ``deploys/<service>/files/*.sops.*`` file: relative path -> plain content
    (base64); the apply worker uploads it from memory in place of the encrypted file."""

    @property
    def removal_order(self) -> tuple[str, ...]:
        """The order services are removed in: dependents before what they require."""
        return tuple(reversed(self.service_order))

    def host(self, name: str) -> DeclaredHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def only_services(self, wanted: dict[str, set[str]]) -> DeclaredState:
        """The same state with each host's services cut to ``wanted[host]`` (hosts left
        without services are dropped)."""
        hosts = []
        for h in self.hosts:
            keep = {s: p for s, p in h.services.items() if s in wanted.get(h.name, set())}
            if keep:
                hosts.append(h.model_copy(update={"services": keep}))
        return self.model_copy(update={"hosts": tuple(hosts)})

    def limit(self, names: set[str] | None) -> DeclaredState:
        """The same state restricted to ``names`` (None: all hosts)."""
        if names is None:
            return self
        return self.model_copy(update={"hosts": tuple(h for h in self.hosts if h.name in names)})
