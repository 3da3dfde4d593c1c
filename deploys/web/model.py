"""Parameters of the ``web`` service: nginx in front of the app, plus static files."""

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen_port: int = Field(default=80, ge=1, le=65535)
    """The port nginx listens on (all addresses)."""
    ipv6: bool = True
    """Also listen on ``[::]:listen_port`` (set false on hosts without IPv6)."""
    server_name: str = Field(default="_", pattern=r"^[A-Za-z0-9_.*-]+( [A-Za-z0-9_.*-]+)*$")
    """nginx ``server_name`` (``_``: any name)."""
    app_port: int = Field(default=8000, ge=1, le=65535)
    """Where the app listens on 127.0.0.1; ``/`` is proxied there."""
