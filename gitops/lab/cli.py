"""``gitops lab``: placeholder, replaced by the lab implementation."""

import click


@click.group()
def lab() -> None:
    """Disposable real Debian hosts for development, tests and CI."""
