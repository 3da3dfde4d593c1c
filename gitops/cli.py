"""The ``gitops`` command line: thin click commands that parse, call a stage, and print.

Exit codes: 0 all good; 1 apply or verify failed; 2 invalid declaration or usage.
"""

from __future__ import annotations

import click

from gitops.lab.cli import lab


@click.group()
@click.version_option(package_name="gitops")
def main() -> None:
    """GitOps for plain Linux hosts: Git -> validate -> plan -> apply -> verify -> record."""


main.add_command(lab)
