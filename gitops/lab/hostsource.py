"""The lab as the pipeline's host source (``gitops.pipeline.hostsource.HostSource``): ``LAB``,
handed in by the cli, the daemon and its previews for ``source: lab`` inventories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitops.lab import KEY, LabError, inventory_hosts, provide_packages
from gitops.lab.common import lab_parent
from gitops.pipeline.hostsource import SourceUnavailable
from gitops.settings import SecretRef, SopsSettings

__all__ = ["DEMO_AGE_KEY", "LAB", "LabSource"]

DEMO_AGE_KEY = Path(__file__).resolve().parent / "demo-age-key.txt"
"""The throwaway age identity the lab gives its environments (``source: lab``) when the
settings name no SOPS key: the sample's secrets are encrypted for it. Never for real hosts."""


class LabSource:
    """The labs of this machine (``gitops.lab``) as the hosts of ``source: lab``."""

    @property
    def keys(self) -> SopsSettings:
        return SopsSettings(age_key=SecretRef(file=DEMO_AGE_KEY))

    def hosts(self, name: str | None, hosts: list[str]) -> dict[str, dict[str, Any]]:
        try:
            return {n: dict(h) for n, h in inventory_hosts(name, hosts).items()}
        except LabError as exc:
            raise SourceUnavailable(str(exc)) from None

    def provide_packages(self, name: str | None, packages: list[str]) -> None:
        try:
            provide_packages(name, packages)
        except LabError as exc:
            raise SourceUnavailable(str(exc)) from None

    def private_paths(self) -> list[Path]:
        return sorted(lab_parent().glob(f"*/{KEY}"))


LAB = LabSource()
