"""The root command group ``gitops``: each command's module is imported only when the
command runs or its help is asked for (``Main.LAZY``); an error a user caused is one line,
never a traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, ClassVar

import click

from gitops.cli.options import EXIT_CODES, config_option
from gitops.cli.output import fail
from gitops.errors import EXIT_FAILED, EXIT_OK, GitopsError

__all__ = ["Main", "main"]


class Main(click.Group):
    """The command group: ``NO_COLOR`` turns colours off; an error a user caused (settings,
    a secret not set, an unwritable path, a damaged database) is one line, never a traceback.

    Every command is imported only when it is run or its help is asked for: ``gitops
    --help`` lists them with ``LAZY``'s short help (``tests/test_cli_start.py`` checks it is
    each command's own), so neither it nor ``import gitops.cli`` loads a command's module."""

    LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "approve": ("gitops.cli.approve", (
            "Approve the revision waiting for approval in ENVIRONMENT (SHA: it, or a prefix "
            "of 7 or more hex digits); the daemon applies it then. A newer revision waits "
            "for its own."
        )),
        "audit": ("gitops.cli.people", (
            "The audit trail: who did what, where, from which address, why, and how it "
            "ended."
        )),
        "digest": ("gitops.cli.delivery", (
            "The digest: the four keys per team against the previous period, incidents "
            "opened and restored, post-mortems not reviewed, open action items by team."
        )),
        "forget": ("gitops.cli.controls", (
            "Remove ENVIRONMENT's status record, controls and quarantine (e.g. one made "
            "by a typo); its runs stay in history, with a `forget` entry saying who."
        )),
        "history": ("gitops.cli.history", (
            "Recorded runs and operator actions, newest first (--run ID: one run in "
            "full)."
        )),
        "incidents": ("gitops.cli.incidents", (
            "Incidents (failed rollouts, rollbacks, drift corrections) with their "
            "timelines and post-mortems (annotate, action)."
        )),
        "metrics": ("gitops.cli.delivery", (
            "Delivery metrics from the recorded history: deployment frequency, lead time "
            "for changes, change failure rate and time to restore (the DORA four keys)."
        )),
        "notify": ("gitops.cli.notify", (
            "The notifiers: list them, or send one a test message."
        )),
        "plan": ("gitops.cli.pipeline", (
            "Show, per host and operation, what a reconcile would change (a dry run)."
        )),
        "preview": ("gitops.cli.preview", (
            "Preview a branch on disposable hosts: a lab shaped like the environment (at "
            "most settings.preview.hosts_per_group hosts per group) gets the base, then "
            "the change, then the checks; it is taken down afterwards. Without root or "
            "systemd-nspawn: a dry run (the change's plan against the environment's "
            "hosts). Prints the report (Markdown) and records it."
        )),
        "promote": ("gitops.cli.controls", (
            "Promote one revision to an environment by hand (one verified on every host "
            "of the environment it promotes from, unless --force); through the running "
            "daemon, else here."
        )),
        "reconcile": ("gitops.cli.pipeline", (
            "Reconcile now: through the running daemon (waiting for its run), or, with no "
            "daemon or --once, apply and verify here."
        )),
        "resume": ("gitops.cli.controls", (
            "Resume applies (and release a rollback hold): the branch head is reconciled "
            "again."
        )),
        "retry": ("gitops.cli.controls", (
            "Run the latest revision again on the hosts that failed, only those."
        )),
        "rollback": ("gitops.cli.controls", (
            "Apply an earlier verified revision (default: the one before the current) and "
            "hold it until gitops resume or a newer commit."
        )),
        "run": ("gitops.cli.run", (
            "Run the daemon: watch the configured environments and reconcile them "
            "continuously."
        )),
        "status": ("gitops.cli.status", (
            "Conditions (Ready / Reconciling / Stalled) and revisions per environment and "
            "host, the revisions quarantined there, and the promotion pipeline."
        )),
        "suspend": ("gitops.cli.controls", (
            "Stop all applies to an environment until gitops resume (reconcile --once, "
            "retry and rollback refuse it too, unless --force --reason)."
        )),
        "tokens": ("gitops.cli.people", (
            "API tokens for people and robots: create (shown once), list, revoke."
        )),
        "unquarantine": ("gitops.cli.controls", (
            "Release one quarantined revision of ENVIRONMENT (SHA: a unique prefix of 7 "
            "or more hex digits) whose rollout failed for a reason not the commit's; the "
            "daemon applies it again at its next cycle if it is still the branch head. "
            "Through a running daemon, else in the store."
        )),
        "validate": ("gitops.cli.pipeline", (
            "Validate the declared state of an environment; apply nothing."
        )),
        "verify": ("gitops.cli.pipeline", (
            "Run the checks of every service on every host (changes nothing); record the "
            "run."
        )),
        "lab": ("gitops.lab.cli", "Disposable real Debian hosts for development, tests and CI."),
        "vagrant": ("gitops.lab.vagrant_cli", (
            "Vagrant VMs of a Vagrantfile under libvirt: build and add the Debian 12 box, "
            "bring the VMs up isolated, take them down."
        )),
    }
    """Subcommands loaded on first use: name -> (module defining it by that name, the first
    paragraph of its help, which `gitops --help` shortens as click does)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            import importlib

            module = importlib.import_module(self.LAZY[cmd_name][0])
            self.add_command(getattr(module, cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str],
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's; a mistyped name's "Did you mean" (click >= 8.2) names the lazy ones too."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            name = getattr(exc, "command_name", None)
            if not isinstance(name, str):
                raise
            from click.exceptions import NoSuchCommand

            raise NoSuchCommand(name, possibilities=self.list_commands(ctx), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, as click writes it, without importing the lazy subcommands."""
        loaded = dict(self.commands)
        for name, (_, short) in self.LAZY.items():
            self.commands.setdefault(name, click.Command(name, help=short))
        try:
            super().format_commands(ctx, formatter)
        finally:
            self.commands = loaded

    def invoke(self, ctx: click.Context) -> Any:
        if os.environ.get("NO_COLOR"):
            ctx.color = False
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `gitops history | head -1`: the reader had enough
            _closed_pipe()
        except GitopsError as exc:
            fail(exc, False)
        except _database_errors() as exc:
            click.secho(f"error: the state database: {exc}", fg="red", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.secho(f"error: {exc.strerror or exc}{where}", fg="red", err=True)
            sys.exit(EXIT_FAILED)
        except Exception as exc:
            lab = sys.modules.get("gitops.lab.common")  # loaded if it raised: no import here
            if lab is None or not isinstance(exc, lab.LabError):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(int(getattr(exc, "exit_code", 2)))


def _database_errors() -> tuple[type[Exception], ...]:
    """The errors either database may raise mid-command (``store.database_errors``), looked
    up only when a command failed: the store is not loaded by ``gitops --help``."""
    from gitops.record.store import database_errors

    return database_errors()


def _closed_pipe() -> None:
    """End quietly with exit 0 when the reader of stdout closed it (``| head``): a normal
    end for a command line, not an error; what is left unwritten goes nowhere."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_OK)


@click.group(cls=Main, epilog=EXIT_CODES)
@click.version_option(package_name="gitops")
@config_option
def main() -> None:
    """GitOps for plain Linux hosts: Git -> validate -> plan -> apply -> verify -> record."""
