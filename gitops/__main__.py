"""``python -m gitops``: the same as the ``gitops`` console script."""

from gitops.cli import main

main()
