"""``gitops lab up|down|status``: thin click commands over the ``gitops.lab`` API.

Registered in ``gitops.cli``. Errors print one line (no traceback) to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

import click

import gitops.lab as api
from gitops.lab.common import DEFAULT_NAME, LabError

EXIT_CODES = """
Exit codes: 0 done; 1 runtime failure or lab already up; 2 not root, missing tools
(apt-get install debootstrap systemd-container dpkg-dev) or bad usage.
"""

T = TypeVar("T")

name_option = click.option(
    "--name",
    envvar="GITOPS_LAB_NAME",
    default=None,
    help="Lab name, [a-z0-9]{1,8}; prefix of everything the lab makes. Default: gitops.",
)


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except LabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


@click.group(help="Disposable real Debian hosts for development, tests and CI.\n" + EXIT_CODES)
def lab() -> None:
    """Disposable real Debian hosts for development, tests and CI."""


@lab.command(help="Boot N hosts (lab-1..lab-N), each answering SSH.\n" + EXIT_CODES)
@click.option("--hosts", "count", type=int, default=3, show_default=True, help="How many hosts.")
@click.option("--subnet", default=None, help="A /24 inside 10.213.0.0/16 (default: from name).")
@name_option
def up(count: int, subnet: str | None, name: str | None) -> None:
    start = time.monotonic()
    info = _call(lambda: api.up(hosts=count, name=name, subnet=subnet, progress=True))
    took = time.monotonic() - start
    click.echo(f"lab {info.name}: {len(info.hosts)} hosts answer SSH ({took:.1f} s)")
    for host in info.hosts:
        click.echo(f"  {host.name}  {host.address}")
    click.echo(f"ssh_config: {info.ssh_config}   (ssh -F {info.ssh_config} lab-1)")
    click.echo(f"inventory:  {info.inventory}   (hosts only)")
    click.echo(f"mirror:     {info.mirror_url}")
    env = "" if info.name == DEFAULT_NAME else f"GITOPS_LAB_NAME={info.name} "
    click.echo(f"the sample on it (inventories/lab.yml, source: lab): "
               f"{env}gitops reconcile --once --repo . -e lab")


@lab.command(help="Remove every host, process, namespace, link and mount made.\n" + EXIT_CODES)
@name_option
def down(name: str | None) -> None:
    _call(lambda: api.down(name=name))
    click.echo(f"lab {api.resolve_name(name)}: down")


@lab.command(help="List the lab's hosts and whether each answers SSH.\n" + EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@name_option
def status(as_json: bool, name: str | None) -> None:
    info = _call(lambda: api.current(name))
    rows = _call(lambda: api.status(name)) if info is not None else []
    if as_json:
        doc = {
            "name": api.resolve_name(name),
            "up": info is not None,
            "ssh_config": str(info.ssh_config) if info else None,
            "inventory": str(info.inventory) if info else None,
            "hosts": [asdict(r) for r in rows],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    if info is None:
        click.echo(f"lab {api.resolve_name(name)}: not up")
        return
    click.echo(f"lab {info.name}: {len(rows)} hosts, ssh_config {info.ssh_config}")
    for r in rows:
        state = "ssh ok" if r.ssh else ("running, no ssh" if r.running else "not running")
        click.echo(f"  {r.name}  {r.address}  {state}")
