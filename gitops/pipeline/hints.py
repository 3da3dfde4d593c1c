"""Hints added to failures whose cause a new user cannot guess from the tool's own message.

On a lab host (``source: lab``) apt installs from the lab's mirror, which serves the sample's
packages and those the inventory declares (``lab: {packages: [...]}``, see
``gitops.lab.packages``): apt's ``Unable to locate package X`` there means X is not declared.
"""

from __future__ import annotations

import re

from gitops.model import DeclaredState
from gitops.records import ApplyReport, HostApply, OpResult

__all__ = ["lab_packages"]

_UNKNOWN = re.compile(r"Unable to locate package ([a-z0-9][a-z0-9+.-]*)")


def _hint(text: str, inventory: str) -> str | None:
    names = sorted(set(_UNKNOWN.findall(text)))
    if not names:
        return None
    return (f"hint: a lab host installs packages from the lab's mirror, which serves those "
            f"the inventory declares: add {', '.join(names)} to {inventory}: "
            f"`lab: {{packages: [{', '.join(names)}]}}`")


def lab_packages(state: DeclaredState, report: ApplyReport) -> ApplyReport:
    """``report`` with a hint after each failure where apt could not find a package on a
    lab host: the line to add to the inventory. Anything else is returned as it is."""
    if state.settings.source != "lab":
        return report
    inventory = f"inventories/{state.environment}.yml"

    def op(o: OpResult) -> OpResult:
        hint = _hint(o.stderr, inventory) if o.status == "failed" else None
        return o.model_copy(update={"stderr": f"{o.stderr}\n{hint}"}) if hint else o

    def host(h: HostApply) -> HostApply:
        ops = tuple(op(o) for o in h.ops)
        hint = _hint(h.error or "", inventory) if not any(
            o is not p for o, p in zip(ops, h.ops, strict=True)) else None
        return h.model_copy(update={"ops": ops, **({"error": f"{h.error}; {hint}"}
                                                     if hint else {})})

    return report.model_copy(update={"hosts": tuple(host(h) for h in report.hosts)})
