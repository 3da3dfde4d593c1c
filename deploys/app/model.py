"""Parameters of the ``app`` service: a small HTTP service on loopback."""

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(default=8000, ge=1024, le=65535)
    """TCP port on 127.0.0.1 (nginx from the ``web`` service proxies to it)."""
    message: str = Field(default="Hello from gitops", min_length=1, max_length=500)
    """Returned by ``GET /`` together with the host name."""
    token: SecretStr | None = Field(default=None, min_length=16)
    """The ``X-Token`` header ``GET /private`` requires. A secret: declare it SOPS-encrypted
    (``inventories/<env>.secrets.sops.yaml``); plans show a change as ``<secret changed>``."""
