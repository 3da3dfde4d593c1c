"""Settings: where the state repository is, which branch and environment, where state lives.

Values come from (highest first) command-line options, ``GITOPS_*`` environment variables, a
TOML settings file (``GITOPS_CONFIG``, else ``./gitops.toml``, else ``/etc/gitops/gitops.toml``),
then the defaults below. Read by the CLI; secrets are never read from here inline (later
settings name them by file or environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path

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
