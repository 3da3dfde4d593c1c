"""``gitops lab up|down|status|list|prune``: thin click commands over the ``gitops.lab`` API.

Registered in ``gitops.cli.root`` (``Main.LAZY``: loaded on use). Errors print one line (no
traceback) to stderr.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import click

import gitops.lab as api
from gitops.lab import leftovers
from gitops.lab.clicall import call
from gitops.lab.common import DEFAULT_NAME, lab_parent
from gitops.lab.leftovers import LabEntry

__all__ = ["lab"]

EXIT_CODES = """
Exit codes: 0 done; 1 runtime failure or lab already up; 2 not root, missing tools
(apt-get install debootstrap systemd-container dpkg-dev) or bad usage.
"""

name_option = click.option(
    "--name",
    envvar="GITOPS_LAB_NAME",
    default=None,
    help="Lab name, [a-z0-9]{1,8}; prefix of everything the lab makes. Default: gitops.",
)


@click.group(help="Disposable real Debian hosts for development, tests and CI.\n" + EXIT_CODES)
def lab() -> None:
    """Disposable real Debian hosts for development, tests and CI."""


@lab.command(help="Boot N hosts (lab-1..lab-N), each answering SSH.\n" + EXIT_CODES)
@click.option("--hosts", "count", type=int, default=3, show_default=True, help="How many hosts.")
@click.option("--subnet", default=None, help="A /24 inside 10.213.0.0/16 (default: from name).")
@click.option("--sudo-user", default=None, metavar="USER",
              help="Also let USER in with the lab's key and password-less sudo; the lab's "
              "inventory.yml logs in as USER with _sudo: true (root login stays).")
@name_option
def up(count: int, subnet: str | None, sudo_user: str | None, name: str | None) -> None:
    start = time.monotonic()
    info = call(lambda: api.up(hosts=count, name=name, subnet=subnet, progress=True,
                               sudo_user=sudo_user))
    took = time.monotonic() - start
    click.echo(f"lab {info.name}: {len(info.hosts)} hosts answer SSH ({took:.1f} s)")
    for host in info.hosts:
        click.echo(f"  {host.name}  {host.address}")
    click.echo(f"ssh_config: {info.ssh_config}   (ssh -F {info.ssh_config} lab-1)")
    login = f"{sudo_user} with sudo" if sudo_user else "root"
    click.echo(f"inventory:  {info.inventory}   (hosts only, logging in as {login})")
    click.echo(f"mirror:     {info.mirror_url}")
    env = "" if info.name == DEFAULT_NAME else f"GITOPS_LAB_NAME={info.name} "
    click.echo(f"the sample on it (inventories/lab.yml, source: lab): "
               f"{env}gitops reconcile --once --repo . -e lab")


@lab.command(help="Remove every host, process, namespace, link and mount made.\n" + EXIT_CODES)
@name_option
def down(name: str | None) -> None:
    call(lambda: api.down(name=name))
    click.echo(f"lab {api.resolve_name(name)}: down")


@lab.command(help="List the lab's hosts and whether each answers SSH.\n" + EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@name_option
def status(as_json: bool, name: str | None) -> None:
    info = call(lambda: api.current(name))
    rows = call(lambda: api.status(name)) if info is not None else []
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


def _describe(entry: LabEntry) -> dict[str, object]:
    return {**asdict(entry), "files": list(entry.files),
            "held_by": [asdict(h) for h in entry.held_by]}


def _line(entry: LabEntry) -> str:
    if entry.up:
        state = f"up, {entry.running}/{entry.hosts} hosts running"
    elif entry.running:
        state = f"down, {entry.running} hosts running"
    else:
        state = "down"
    held = ", ".join(f"{h.what} pid {h.pid}" if h.pid else f"{h.what}, pid unknown"
                     for h in entry.held_by)
    kind = " (preview)" if entry.preview else ""
    return (f"  {entry.name:<8}  {state}{kind}; held by {held or 'no process'}; "
            f"files: {' '.join(entry.files) or '-'}")


@lab.command(name="list", help="Every lab in the lab folder: up or down, what of it is left "
             "(folder, lock files), which process holds it.\n" + EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_labs(as_json: bool) -> None:
    found = call(leftovers.labs)
    if as_json:
        click.echo(json.dumps([_describe(e) for e in found], indent=2))
        return
    if not found:
        click.echo(f"no lab in {lab_parent()}")
        return
    click.echo(f"labs in {lab_parent()}:")
    for entry in found:
        click.echo(_line(entry))


@lab.command(help="Take down every lab no process holds: each lab that is down (its folder "
             "and lock files) and each preview lab no preview holds. A lab that is up stays "
             "(`lab down` removes it); so does one whose up/down or preview runs.\n"
             + EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def prune(as_json: bool) -> None:
    removed, kept = call(leftovers.prune)
    if as_json:
        click.echo(json.dumps({"removed": [_describe(e) for e in removed],
                               "kept": [_describe(e) for e in kept]}, indent=2))
        return
    for entry in removed:
        click.echo(f"lab {entry.name}: taken down ({' '.join(entry.files) or 'nothing left'})")
    for entry in kept:
        click.echo(f"kept:{_line(entry)}")
    if not removed:
        click.echo("nothing to prune")
