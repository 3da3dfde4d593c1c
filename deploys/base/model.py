"""Parameters of the ``base`` service: admin access, SSH hardening, timezone, motd."""

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin_user: str = Field(default="ops", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    """The administrator account (gets the keys and passwordless sudo)."""
    admin_keys: list[str] = Field(min_length=1)
    """SSH public keys (one ``ssh-ed25519 AAAA... comment`` line each) for ``admin_user``."""
    timezone: str = Field(default="UTC", pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
    """A zone name under /usr/share/zoneinfo, e.g. ``Europe/Berlin``."""
    motd: str = "Managed by gitops: local changes will be overwritten."
    """The message of the day; the host name and environment are added to it."""
    environment: str = ""
    """Shown in the motd (e.g. ``lab``, ``production``)."""
