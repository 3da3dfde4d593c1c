"""Parameters of the ``base`` service: admin access, SSH hardening, timezone, motd."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PublicKey = Annotated[str, Field(pattern=r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|"
                                         r"sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+=*( [^\x00-\x1f\x7f]*)?$")]
"""One line of authorized_keys, no options: type, base64 key, optional comment."""
OneLine = Field(default="", pattern=r"^[^\x00-\x1f\x7f]*$", max_length=200)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin_user: str = Field(default="ops", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    """The administrator account (gets the keys and passwordless sudo)."""
    admin_keys: list[PublicKey] = Field(min_length=1)
    """SSH public keys (one ``ssh-ed25519 AAAA... comment`` line each) for ``admin_user``."""
    timezone: str = Field(default="UTC", pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
    """A zone name under /usr/share/zoneinfo, e.g. ``Europe/Berlin``."""
    motd: str = "Managed by gitops: local changes will be overwritten."
    """The message of the day; the host name and environment are added to it."""
    environment: str = OneLine
    """Shown in the motd (e.g. ``lab``, ``production``)."""
