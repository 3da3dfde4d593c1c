"""What a host source hands the loader for ``settings.source: lab`` (``HostSource``): addresses,
SSH settings and a default SOPS key; the caller passes the lab's in, the pipeline never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from gitops.settings import SopsSettings

__all__ = ["HostSource", "SourceUnavailable"]


class SourceUnavailable(Exception):
    """The source cannot give the hosts (the lab is not up, lacks a host); the message is
    one line for a human, saying what fixes it."""


class HostSource(Protocol):
    """What the pipeline needs of the hosts of an inventory with ``settings.source: lab``."""

    @property
    def keys(self) -> SopsSettings:
        """The SOPS keys of such an inventory when the settings name none."""
        ...

    def hosts(self, name: str | None, hosts: list[str]) -> dict[str, dict[str, Any]]:
        """``{"address": ..., "ssh": {...}}`` of each of ``hosts`` in the source ``name``
        (the inventory's ``settings.lab``); ``SourceUnavailable`` when it cannot."""
        ...

    def provide_packages(self, name: str | None, packages: list[str]) -> None:
        """Make ``packages`` (the inventory's ``lab.packages``) installable on its hosts;
        ``SourceUnavailable`` when it cannot."""
        ...

    def private_paths(self) -> list[Path]:
        """Files a preview's code must not read (the sources' SSH keys)."""
        ...
