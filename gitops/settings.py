"""Settings: where the state repository is, which branch and environment, where state lives.

Values come from (highest first) command-line options, ``GITOPS_*`` environment variables, a
TOML settings file (``GITOPS_CONFIG``, else ``./gitops.toml``, else ``/etc/gitops/gitops.toml``),
then the defaults below. Read by the CLI through ``load``, which reports every problem at once
with its file and line (or environment variable). Secrets are never values here: they are
named by file or environment variable, and a ``GITOPS_*`` variable of a secret setting
(``GITOPS_API_TOKEN``) is such a name, never parsed as the setting's value.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gitops.settings_sections import (
    DEFAULT_EVENTS,
    EVENT_KINDS,
    SEVERITIES,
    CommitStatusConfig,
    DigestSettings,
    EnvironmentConfig,
    EventKind,
    FanoutSettings,
    NotifierConfig,
    OidcSettings,
    PreviewSettings,
    Retention,
    SecretRef,
    Severity,
    SigningPolicy,
    SopsSettings,
    team_name,
)

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_KINDS",
    "SEVERITIES",
    "CommitStatusConfig",
    "DigestSettings",
    "EnvironmentConfig",
    "EventKind",
    "FanoutSettings",
    "NotifierConfig",
    "OidcSettings",
    "PreviewSettings",
    "Retention",
    "SecretRef",
    "Settings",
    "Severity",
    "SigningPolicy",
    "SopsSettings",
    "load",
    "promotion_problems",
    "settings_file",
    "team_name",
]


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/gitops")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "gitops"


def settings_file() -> Path | None:
    explicit = os.environ.get("GITOPS_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (Path("gitops.toml"), Path("/etc/gitops/gitops.toml")):
        if candidate.is_file():
            return candidate
    return None


class Settings(BaseSettings):
    # defer_build (here and in the sections above): built by the first load, not at import
    # env_ignore_empty: ``GITOPS_SOPS=`` (set but empty, as CI templates leave it) is unset
    model_config = SettingsConfigDict(env_prefix="GITOPS_", extra="forbid", defer_build=True,
                                      env_ignore_empty=True)

    repo: str = "."
    """The state repository: a remote URL or a local path (its commits, not its work tree)."""
    branch: str = "main"
    environment: str = "lab"
    """An inventory name: ``inventories/<environment>.yml``."""
    state_dir: Path = _default_state_dir()
    vagrant_dir: Path | None = None
    """Where ``vagrant ssh-config`` runs for ``source: vagrant`` inventories (default: repo)."""
    environments: list[EnvironmentConfig] = []
    """What ``gitops run`` watches."""
    listen: str = "127.0.0.1:9469"
    """host:port of the daemon's HTTP server (webhooks, API, health)."""
    api_token: SecretRef | None = None
    """Bearer token for the operator API; without one, the API answers loopback clients only."""
    allowed_hosts: list[str] | None = Field(default=None, max_length=100)
    """Host headers the HTTP server answers (``name`` or ``name:port``; a name alone allows
    any port); any other gets 400. Default: the listen address and localhost, 127.0.0.1,
    [::1], each with the listen port. Name here what clients and proxies put in ``Host``."""
    trusted_proxies: list[str] = Field(default=[], max_length=100)
    """Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``) of reverse proxies whose
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed; default none, and uvicorn's
    ``FORWARDED_ALLOW_IPS`` is ignored."""
    tls_cert: Path | None = None
    """A PEM certificate (chain) file: the HTTP server speaks HTTPS only (with ``tls_key``)."""
    tls_key: Path | None = None
    """The PEM private key of ``tls_cert``."""
    session_hours: float = Field(default=12, gt=0, le=720)
    """How long a browser stays signed in to the status page (beyond loopback)."""
    oidc: OidcSettings | None = None
    """Sign-in to the status page through an OpenID Connect provider (``[oidc]``)."""

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        from gitops.hostnames import parse_host

        bad = [h for h in value or [] if parse_host(h) is None]
        if bad:
            raise ValueError(f"not a host or host:port: {', '.join(map(repr, bad))}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {entry!r}") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (("tls_cert", "tls_key") if self.tls_key is None
                              else ("tls_key", "tls_cert"))
            raise ValidationError.from_exception_data("Settings", [InitErrorDetails(
                type=PydanticCustomError("tls_pair", "needs {missing} too (HTTPS takes both)",
                                         {"missing": missing}),
                loc=(given,), input=None)])
        return self
    reports_dir: Path | None = None
    """Where incident reports (Markdown) are written; default ``<state_dir>/reports``."""
    max_body: int = Field(default=1_048_576, gt=0)
    """Largest webhook body accepted (bytes); larger gets 413."""
    max_client_requests: int = Field(default=16, ge=1, le=10_000)
    """Requests one client address may have in flight at once; more get 429 with
    Retry-After (``/healthz`` is not counted). Behind a proxy not named as trusted, every
    client has the proxy's address: raise it."""
    retention: Retention = Retention()
    """What the daemon prunes from the state folder after runs."""
    sops: SopsSettings = SopsSettings()
    """Keys for SOPS-encrypted values and files in the state repository."""
    database: str | None = None
    """``postgresql://user@host[:port]/database``: the record in PostgreSQL (default: SQLite
    in ``<state_dir>/gitops.db``). No password here: ``database_password`` names it."""
    database_password: SecretRef | None = None
    """Where the PostgreSQL password is (environment variable or file)."""
    preview: PreviewSettings = PreviewSettings()
    """Previews of pull/merge requests on disposable hosts."""
    teams: list[Annotated[str, AfterValidator(team_name)]] = Field(default=[], max_length=100)
    """The teams an environment's ``team`` may name (the repository's ``teams.yml`` lists
    those its inventories may name)."""
    digest: DigestSettings = DigestSettings()
    """The periodic summary of the four keys per team, incidents and post-mortems."""

    @model_validator(mode="after")
    def _known_teams(self) -> Settings:
        unknown = [
            InitErrorDetails(type=PydanticCustomError(
                "unknown_team", "unknown team {team} ({hint})",
                {"team": repr(env.team), "hint": f"teams: {', '.join(self.teams)}" if self.teams
                 else "list the teams in teams = [...]"}),
                loc=("environments", i, "team"), input=env.team)
            for i, env in enumerate(self.environments)
            if env.team is not None and env.team not in self.teams]
        if unknown:
            raise ValidationError.from_exception_data("Settings", unknown)
        return self
    notifiers: list[NotifierConfig] = []
    """Notifiers of every environment (``[[notifiers]]``), each with its own filters; an
    environment's own ``notifiers`` hear that environment only."""
    page_url: str | None = Field(default=None, pattern=r"^https?://")
    """The status page's address, linked from every notification (default: none)."""

    @model_validator(mode="after")
    def _notifier_filters(self) -> Settings:
        names = {e.name for e in self.environments}
        problems: list[InitErrorDetails] = []
        seen: set[str] = set()

        def bad(loc: tuple[str | int, ...], kind: str, text: str, **ctx: Any) -> None:
            problems.append(InitErrorDetails(type=PydanticCustomError(kind, text, ctx),
                                             loc=loc, input=None))

        lists: list[tuple[tuple[str | int, ...], str | None, list[NotifierConfig]]] = [
            (("notifiers",), None, self.notifiers)]
        lists += [(("environments", i, "notifiers"), e.name, e.notifiers)
                  for i, e in enumerate(self.environments)]
        for base, env, configs in lists:
            for j, n in enumerate(configs):
                label = n.label(j, env)
                if label in seen:
                    bad((*base, j, "name"), "notifier_name",
                        "a second notifier named {name} (name them apart)", name=repr(label))
                seen.add(label)
                unknown = [x for x in n.environments if x not in names]
                if unknown:
                    bad((*base, j, "environments"), "unknown_environment",
                        "unknown environment {x} (environments: {known})",
                        x=", ".join(map(repr, unknown)), known=", ".join(sorted(names)) or
                        "none")
                strange = [t for t in n.teams if t not in self.teams]
                if strange:
                    bad((*base, j, "teams"), "unknown_team", "unknown team {x} ({hint})",
                        x=", ".join(map(repr, strange)),
                        hint=f"teams: {', '.join(self.teams)}" if self.teams
                        else "list the teams in teams = [...]")
        if problems:
            raise ValidationError.from_exception_data("Settings", problems)
        return self

    def all_notifiers(self) -> list[tuple[str, NotifierConfig, str | None]]:
        """Every notifier as (its name, its settings, its environment or None: global)."""
        out: list[tuple[str, NotifierConfig, str | None]] = [
            (n.label(j), n, None) for j, n in enumerate(self.notifiers)]
        for e in self.environments:
            out += [(n.label(j, e.name), n, e.name) for j, n in enumerate(e.notifiers)]
        return out

    controller_name: str | None = Field(default=None, min_length=1, max_length=200)
    """This ``gitops run``'s name in the leases of several controllers on one PostgreSQL
    (default ``hostname:pid``); unique per running controller."""
    lease_ttl: float = Field(default=15.0, ge=1, le=3600)
    """Seconds after its holder's last renewal before another controller takes an
    environment (PostgreSQL only: ``gitops.record.lease``)."""
    fanout: FanoutSettings = FanoutSettings()
    """Sharing a batch's hosts with the other controllers' workers (PostgreSQL only)."""

    @model_validator(mode="after")
    def _fanout_needs_postgresql(self) -> Settings:
        if self.fanout.remote and self.database is None:
            raise ValidationError.from_exception_data("Settings", [InitErrorDetails(
                type=PydanticCustomError(
                    "fanout_sqlite", "needs database = \"postgresql://...\" (the shares go "
                    "through the record's database; with SQLite one controller applies all)"),
                loc=("fanout", "remote"), input=True)])
        return self

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            raise ValueError("not a URL: write postgresql://user@host[:port]/database") from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            raise ValueError("write postgresql://user@host[:port]/database")
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise ValueError("a password does not belong in the URL: name it with "
                             "database_password = {env = ...} or {file = ...}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = settings_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class _EnvSource(EnvSettingsSource):
    """``GITOPS_*`` variables; the variable of a secret setting names where the secret is.

    ``GITOPS_API_TOKEN=...`` makes the token "the environment variable GITOPS_API_TOKEN"
    (``{env = "GITOPS_API_TOKEN"}``): the value itself never enters the settings, and the
    example settings file, which names that variable, works with it set."""

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any,
                            value_is_complex: bool) -> Any:
        if _is_secret(field) and isinstance(value, str):
            name = f"{self.env_prefix}{field_name}".upper()
            found = next((k for k in os.environ if k.upper() == name), name)
            return {"env": found}
        return super().prepare_field_value(field_name, field, value, value_is_complex)


def _is_secret(field: FieldInfo) -> bool:
    return SecretRef in get_args(field.annotation) or field.annotation is SecretRef


# -- reading the settings, every problem at once --------------------------------------------


def load(**overrides: Any) -> Settings:
    """The settings (``overrides`` are the command line's, None left out); a ``UsageError``
    listing every problem, each with the file and line (or the variable) it comes from."""
    from gitops.errors import UsageError

    given = {k: v for k, v in overrides.items() if v is not None}
    path = settings_file()
    text = ""
    if path is not None:
        try:
            text = path.read_text()
            tomllib.loads(text)
        except OSError as exc:
            raise UsageError(f"settings file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"settings file {path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"settings file {path}: {_toml_message(exc)}") from None
    try:
        loaded = Settings(**given)
        _promotion_check(loaded, path, text)
        return loaded
    except SettingsError as exc:  # a GITOPS_* variable of a list or table that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"GITOPS_{field.group(1).upper()}" if field else "a GITOPS_* variable"
        raise UsageError(f"environment variable {name}: not valid JSON") from None
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = [_where(e, given, path, lines) for e in exc.errors(include_url=False,
                                                                       include_input=False)]
        problems.sort(key=lambda p: int(m.group(1)) if (m := re.match(r"\S+:(\d+) ", p))
                      else 0)
        head = f"{len(problems)} problem(s) in the settings" if len(problems) > 1 else "settings"
        if len(problems) == 1:
            raise UsageError(f"{head}: {problems[0]}") from None
        raise UsageError("\n  ".join([f"{head}:", *problems])) from None


def promotion_problems(environments: list[EnvironmentConfig]
                       ) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with the environments' ``promote_from``: an unknown environment, the
    environment itself, a cycle; each as (the field's path, the message)."""
    names = {e.name: e for e in environments}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, env in enumerate(environments):
        up = env.promote_from
        if up is None:
            continue
        where: tuple[str | int, ...] = ("environments", index, "promote_from")
        if up == env.name:
            problems.append((where, f"{env.name!r} cannot promote from itself"))
        elif up not in names:
            problems.append((where, f"no environment named {up!r}; environments: "
                                    f"{', '.join(sorted(names))}"))
        else:
            chain, seen = [env.name], {env.name}
            while up is not None and up in names and up not in seen:
                chain.append(up)
                seen.add(up)
                up = names[up].promote_from
            if up == env.name:
                problems.append((where, "promotion cycle: "
                                        + " <- ".join([*chain, env.name])))
    return problems


def _promotion_check(settings: Settings, path: Path | None, text: str) -> None:
    problems = promotion_problems(settings.environments)
    if not problems:
        return
    from gitops.errors import UsageError

    lines = _key_lines(text)
    out = []
    for loc, message in problems:
        field = ".".join(str(p) for p in loc)
        line = lines.get(loc) or lines.get(loc[:2])
        if path is None:
            out.append(f"{field}: {message}")
        else:
            out.append(f"{path}:{line} {field}: {message}" if line else
                       f"{path} {field}: {message}")
    if len(out) == 1:
        raise UsageError(f"settings: {out[0]}")
    raise UsageError("\n  ".join([f"{len(out)} problem(s) in the settings:", *out]))


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's "Expected ... (at line 3, column 7)" as "line 3: expected ..."."""
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match is None:
        return "invalid TOML: " + message.replace("(at end of document)", "at the end of the file")
    what = message[:match.start()]
    return f"line {match.group(1)}: invalid TOML: {what[:1].lower()}{what[1:]}"


def _where(error: Any, given: dict[str, Any], path: Path | None,
           lines: dict[tuple[str | int, ...], int]) -> str:
    loc = tuple(error["loc"])
    field = ".".join(str(p) for p in loc) or "settings"
    message = error["msg"]
    top = str(loc[0]) if loc else ""
    if top in given:
        return f"option --{top.replace('_', '-')}: {message}"
    variable = f"GITOPS_{top}".upper()
    if top and any(k.upper() == variable and v for k, v in os.environ.items()):
        return f"environment variable {variable}: {message}"
    if path is None:
        return f"{field}: {message}"
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return f"{path}:{line} {field}: {message}"
    return f"{path} {field}: {message}"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each table and key of a TOML file is (1-based lines), by the path pydantic
    reports: ``("environments", 0, "interval")``. Only for messages, after tomllib parsed
    the file; a key on a multi-line value is found on its first line."""
    found: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    resolved: dict[tuple[str, ...], tuple[str | int, ...]] = {}

    def resolve(names: list[str]) -> tuple[str | int, ...]:
        out: tuple[str | int, ...] = ()
        for i in range(1, len(names) + 1):
            out = resolved.get(tuple(names[:i]), (*out, names[i - 1]))
        return out

    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header is not None:
            names = [n.strip().strip("\"'") for n in header.group(2).split(".")]
            if header.group(1) == "[[":
                base = (*resolve(names[:-1]), names[-1])
                index = counts.get(base, 0)
                counts[base] = index + 1
                table = (*base, index)
                resolved[tuple(names)] = table
            else:
                table = resolve(names)
            found.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key is not None and not line.lstrip().startswith("#"):
            parts = tuple(p.strip().strip("\"'") for p in key.group(1).split("."))
            found.setdefault((*table, *parts), number)
    return found
