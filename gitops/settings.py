"""Settings: where the state repository is, which branch and environment, where state lives.

Values come from (highest first) command-line options, ``GITOPS_*`` environment variables, a
TOML settings file (``GITOPS_CONFIG``, else ``./gitops.toml``, else ``/etc/gitops/gitops.toml``),
then the defaults below. Read by the CLI; secrets are never read from here inline (later
settings name them by file or environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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


class SecretRef(BaseModel):
    """Where a secret is: an environment variable or a file. Never the secret itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_place(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("name exactly one of env or file")
        return self

    @property
    def where(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def reveal(self) -> str:
        """The secret's value; a ``UsageError`` naming where it was looked for if missing."""
        from gitops.errors import UsageError

        if self.env is not None:
            value = os.environ.get(self.env, "")
        else:
            assert self.file is not None
            try:
                value = self.file.read_text().strip()
            except OSError as exc:
                raise UsageError(f"secret {self.where}: {exc.strerror}") from None
        if not value:
            raise UsageError(f"secret {self.where} is empty or not set")
        return value


class SopsSettings(BaseModel):
    """The private keys that open SOPS-encrypted files of the state repository (see
    gitops.sops). Named by file or environment variable; never in the repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    age_key: SecretRef | None = None
    """An age identity file: one or more ``AGE-SECRET-KEY-1...`` lines (``age-keygen``)."""
    pgp_key: SecretRef | None = None
    """An ASCII-armoured OpenPGP private key without passphrase (``gpg --export-secret-keys
    --armor``); imported into a throwaway GnuPG home, never the user's keyring."""


class SigningPolicy(BaseModel):
    """Which keys may sign the commits an environment applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpg_keys: list[Path] = []
    """ASCII-armoured public keys (files) of the allowed GPG signers."""
    ssh_allowed_signers: Path | None = None
    """An ssh-keygen ``allowed_signers`` file of the allowed SSH signers."""

    @model_validator(mode="after")
    def _some_signer(self) -> SigningPolicy:
        if not self.gpg_keys and self.ssh_allowed_signers is None:
            raise ValueError("name gpg_keys or ssh_allowed_signers (or leave verify_commits out)")
        return self


EventKind = Literal["failure", "recovery", "drift", "rollback", "quarantine", "success"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


class NotifierConfig(BaseModel):
    """One notification receiver: a generic JSON webhook or a Slack-compatible incoming webhook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook", "slack"]
    url: SecretRef
    """The webhook's URL, a secret (it is the credential for incoming webhooks)."""
    events: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS))
    """Which events this receiver gets (default: all; list them to leave ``success`` out)."""


class CommitStatusConfig(BaseModel):
    """Where commit statuses go: the Git host's API, the repository there, a token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["github", "gitlab", "gitea"]
    api_url: str = Field(pattern=r"^https?://")
    """https://api.github.com, https://gitlab.example.com/api/v4, https://gitea.example.com/api/v1"""
    repository: str = Field(min_length=1)
    """``owner/name`` on GitHub and Gitea; the project id or path (``group/project``) on GitLab."""
    token: SecretRef
    context: str = "gitops/{environment}"
    """The status's name on the commit; ``{environment}`` is replaced by the environment's name."""
    target_url: str | None = None
    """A link shown with the status (the status page, say)."""

    def context_for(self, environment: str) -> str:
        return self.context.replace("{environment}", environment)


class EnvironmentConfig(BaseModel):
    """One environment the daemon watches: a repository, a branch, an inventory, policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    repo: str
    branch: str = "main"
    inventory: str | None = None
    """``inventories/<inventory>.yml``; defaults to ``name``."""
    interval: float = Field(default=60, gt=0)
    """Seconds between polls of the remote."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """Each wait is the interval times a random factor in [1 - jitter, 1 + jitter]."""
    watch: bool = True
    """For a local repository path: reconcile within a second of a commit (watchdog)."""
    drift: Literal["report", "correct"] = "report"
    drift_interval: float = Field(default=600, gt=0)
    auto_rollback: bool = True
    webhook_secret: SecretRef | None = None
    verify_commits: SigningPolicy | None = None
    notifiers: list[NotifierConfig] = []
    """Who hears of failures, recoveries, drift, rollbacks and quarantines."""
    commit_status: list[CommitStatusConfig] = []
    """Where to report pending / success / failure on each applied commit."""
    retry_base: float = Field(default=5, gt=0)
    retry_max: float = Field(default=300, gt=0)

    @property
    def environment(self) -> str:
        return self.inventory or self.name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GITOPS_", extra="forbid")

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
    reports_dir: Path | None = None
    """Where incident reports (Markdown) are written; default ``<state_dir>/reports``."""
    max_body: int = Field(default=1_048_576, gt=0)
    """Largest webhook body accepted (bytes); larger gets 413."""
    sops: SopsSettings = SopsSettings()
    """Keys for SOPS-encrypted values and files in the state repository."""

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)
