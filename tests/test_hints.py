"""Hints on failures a new user cannot explain from the tool's message alone."""

from __future__ import annotations

from typing import Literal

from gitops.model import DeclaredState, EnvironmentSettings
from gitops.pipeline.hints import lab_packages
from gitops.records import ApplyReport, HostApply, OpResult

APT = ("Reading package lists...\nBuilding dependency tree...\n"
       "E: Unable to locate package redis-server")


def _state(source: Literal["inventory", "vagrant", "lab"]) -> DeclaredState:
    return DeclaredState(environment="lab", root="/nowhere",
                         settings=EnvironmentSettings(source=source), hosts=(),
                         service_order=())


def _report() -> ApplyReport:
    return ApplyReport(hosts=(HostApply(host="lab-1", status="failed", error="apt failed", ops=(
        OpResult(name="Install redis", service="redis", status="failed", stderr=APT),
        OpResult(name="redis.conf", service="redis", status="skipped"))),))


def test_an_unknown_package_on_a_lab_host_names_the_line_to_add() -> None:
    """apt's ``Unable to locate package X`` on a lab host says that lab packages are declared
    in the inventory, with the line to add; elsewhere apt's message stays as it is."""
    [host] = lab_packages(_state("lab"), _report()).hosts
    assert host.ops[0].stderr == APT + (
        "\nhint: a lab host installs packages from the lab's mirror, which serves those the "
        "inventory declares: add redis-server to inventories/lab.yml: "
        "`lab: {packages: [redis-server]}`")
    assert host.ops[1] == _report().hosts[0].ops[1]
    assert lab_packages(_state("inventory"), _report()) == _report()
