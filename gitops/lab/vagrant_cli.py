"""``gitops vagrant box|up|down``: thin click commands over ``gitops.lab.vagrantvms``.

Registered in ``gitops.cli.root`` (``Main.LAZY``). Errors print one line (no traceback).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from gitops.lab import vagrantvms
from gitops.lab.clicall import call
from gitops.lab.vagrantbox import BOX_NAME

__all__ = ["vagrant"]

EXIT_CODES = """
Exit codes: 0 done; 1 runtime failure (a build, `vagrant up`, a VM that never answered SSH);
2 not root, missing tools (vagrant, vagrant-libvirt, libvirt, QEMU, debootstrap) or no
Vagrantfile.
"""

dir_option = click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
    envvar="GITOPS_VAGRANT_DIR", show_default=True,
    help="Folder of the Vagrantfile (GITOPS_VAGRANT_DIR, as for `source: vagrant`).",
)


@click.group(help="Vagrant VMs of a Vagrantfile under libvirt: build and add the Debian 12 "
             "box, bring the VMs up isolated, take them down.\n" + EXIT_CODES)
def vagrant() -> None:
    """Vagrant VMs under libvirt."""


@vagrant.command(help=f"Build the {BOX_NAME} libvirt box offline (debootstrap; cached, rebuilt "
                 "only when its recipe changes) and add it to Vagrant.\n" + EXIT_CODES)
@click.option("--force", is_flag=True, help="Rebuild and re-add even if cached.")
def box(force: bool) -> None:
    result = call(lambda: vagrantvms.add_box(progress=True, force=force))
    what = "built and added" if result.built else ("added" if result.added else "up to date")
    click.echo(f"box {BOX_NAME} {result.digest}: {what} ({result.seconds:.1f} s), "
               f"{result.path}")


@vagrant.command(help="Start libvirt if no service manager did, add the box, isolate the VM "
                 "networks (they reach this machine and each other only), then `vagrant up` "
                 "MACHINES (default: all), under KVM only where it is usable.\n" + EXIT_CODES)
@click.argument("machines", nargs=-1)
@dir_option
def up(machines: tuple[str, ...], folder: Path) -> None:
    start = time.monotonic()
    call(lambda: vagrantvms.up(folder, machines, progress=True))
    click.echo(f"vagrant VMs up ({time.monotonic() - start:.1f} s); next: "
               "gitops reconcile --once --repo . --environment vagrant")


@vagrant.command(help="`vagrant destroy -f`; then, once no libvirt VM runs, remove the network "
                 "isolation and set forwarding back to its value before `up`.\n" + EXIT_CODES)
@dir_option
def down(folder: Path) -> None:
    removed = call(lambda: vagrantvms.down(folder, progress=True))
    tail = "isolation removed" if removed else "other libvirt VMs run: isolation kept"
    click.echo(f"vagrant VMs destroyed; {tail}")
