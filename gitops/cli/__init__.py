"""The ``gitops`` command line: thin click commands that parse, call a stage, and print.

Exit codes: 0 all good; 1 apply or verify failed (or a temporary failure: Git remote, SSH,
lock held, the daemon unreachable mid-wait); 2 invalid declaration or usage (also an operator
control refusing the command); 0 also when the reader of stdout closes it (``| head``).
``--json`` prints one JSON document on stdout; progress goes
to stderr, live per host on a terminal, plain lines otherwise (``NO_COLOR`` is honoured).
Every command that records something ends with one line naming the run (``run #12:
succeeded, 3 changed, 42 checks passed``). Errors are one clear message, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import click

from gitops import freetext
from gitops.daemon import control
from gitops.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    GitopsError,
    InvalidDeclaration,
    TemporaryError,
    UsageError,
)
from gitops.record.store import Database, NoStore, Store, database_errors, open_store
from gitops.records import APPLY_KINDS, OpPlan, Plan

if TYPE_CHECKING:  # the pipeline (loader, SOPS, fan-out) and the settings (pydantic-settings)
    # are imported by the commands that use them: not by `gitops --help`
    from gitops.pipeline import reconcile as pipeline
    from gitops.settings import EnvironmentConfig, Settings

EXIT_CODES = ("Exit codes: 0 all good; 1 apply or verify failed, or a temporary failure "
              "(Git remote, SSH, the environment locked by another run or held by another "
              "controller, the daemon gone); "
              "2 invalid declaration, settings or usage, or refused by an operator control "
              "(suspended or held: --force --reason).")



def _settings(**overrides: Any) -> Settings:
    """The settings (``overrides``: the command line's); ``-e NAME`` naming one of the
    daemon's ``[[environments]]`` (by name or inventory) takes its repository, branch and
    inventory as defaults; with one entry and no environment named anywhere, that one."""
    from gitops import settings as settings_

    s = settings_.load(**overrides)
    entry = _entry(s, overrides.get("environment"))
    if entry is None:
        return s
    update: dict[str, Any] = {"environment": entry.environment}
    for name, value in (("repo", entry.repo), ("branch", entry.branch)):
        if overrides.get(name) is None and not os.environ.get(f"GITOPS_{name.upper()}"):
            update[name] = value
    return s.model_copy(update=update)


def _entry(s: Settings, given: str | None) -> EnvironmentConfig | None:
    name = given or s.environment
    for cfg in s.environments:
        if cfg.name == name:
            return cfg
    for cfg in s.environments:
        if cfg.environment == name:
            return cfg
    if given is None and "environment" not in s.model_fields_set and len(s.environments) == 1:
        return s.environments[0]
    return None


def _api_name(s: Settings) -> str:
    """The daemon's name for the environment ``s`` targets (its ``[[environments]]`` name)."""
    return next((c.name for c in s.environments if c.environment == s.environment),
                s.environment)


def _use_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        os.environ["GITOPS_CONFIG"] = str(value)
    return value


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` on every command: the settings file, as ``GITOPS_CONFIG`` says."""
    option = click.option(
        "--config", type=click.Path(path_type=Path, exists=True, dir_okay=False),
        expose_value=False, is_eager=True, callback=_use_config,
        help="Settings file (TOML) [GITOPS_CONFIG; ./gitops.toml; /etc/gitops/gitops.toml]")
    return option(func)


class _Finite(click.ParamType[float]):
    """A positive, finite number (``nan``, ``inf``, 0 and negatives are refused)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a positive number", param, ctx)
        return number


def _target(s: Settings) -> pipeline.Target:
    from gitops.lab.hostsource import LAB
    from gitops.pipeline import reconcile as pipeline

    return pipeline.Target(repo=s.repo, branch=s.branch, environment=s.environment,
                           state_dir=s.state_dir, vagrant_dir=s.vagrant_dir,
                           actor=control.who(), sops=s.sops, database=Database.of(s), lab=LAB)


def _target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--repo", "-r", help="State repository: URL or local path "
                        "[env GITOPS_REPO; default .]")(func)
    func = click.option("--branch", "-b", help="Branch to reconcile [GITOPS_BRANCH; main]")(func)
    func = click.option("--environment", "--inventory", "-e", "environment",
                        help="Environment: inventories/<NAME>.yml [GITOPS_ENVIRONMENT; lab]")(func)
    func = click.option("--state-dir", type=click.Path(path_type=Path),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    return config_option(func)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _progress(as_json: bool) -> LiveProgress:
    return LiveProgress(sys.stderr)


_BATCH = re.compile(r"^batch \d+/\d+(?: \(canary\))?: applying on ([^()]+?)(?: \(|$)")
_VERIFIED = re.compile(r"^([A-Za-z0-9_.-]+): (\d+) passed, (\d+) failed, (\d+) errors")
_UNREACHABLE = re.compile(r"^([A-Za-z0-9_.-]+): unreachable")


class LiveProgress:
    """LiveProgress on stderr: each line as it comes and, on a terminal, one live line below
    them with every host's state (waiting, applying, checks passed or failed)."""

    def __init__(self, stream: IO[str], tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.hosts: dict[str, str] = {}
        self.shown = False

    def __call__(self, line: str) -> None:
        self._track(line)
        self._clear()
        click.secho(f"· {line}", file=self.stream, dim=True)
        if self.tty and self.hosts:
            self.stream.write(self.status_line())
            self.stream.flush()
            self.shown = True

    def status_line(self) -> str:
        return "  ".join(f"{host} {state}" for host, state in self.hosts.items())

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def _track(self, line: str) -> None:
        if (m := _BATCH.match(line)) is not None:
            for host in m.group(1).split(", "):
                self.hosts[host.strip()] = "applying"
        elif (m := _VERIFIED.match(line)) is not None:
            bad = int(m.group(3)) + int(m.group(4))
            self.hosts[m.group(1)] = f"✗ {bad} failed" if bad else f"✓ {m.group(2)} passed"
        elif (m := _UNREACHABLE.match(line)) is not None:
            self.hosts[m.group(1)] = "✗ unreachable"


def _one_line(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: the option's text one clean line (``freetext.line``), else exit 2
    with one line naming the option."""
    return None if value is None else freetext.line(param.opts[0], value)


def _a_note(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: a post-mortem text, newlines allowed (``freetext.note``)."""
    return None if value is None else freetext.note(param.opts[0], value)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Main(click.Group):
    """The command group: ``NO_COLOR`` turns colours off; an error a user caused (settings,
    a secret not set, an unwritable path, a damaged database) is one line, never a traceback.

    ``lab`` (``gitops.lab.cli``) is imported only when it is run or its help is asked for:
    ``gitops --help`` lists it with ``LAZY``'s short help (``tests/test_cli_start.py`` checks
    it is the group's own)."""

    LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "lab": ("gitops.lab.cli", "Disposable real Debian hosts for development, tests and CI.")}
    """Subcommands loaded on first use: name -> (module defining it by that name, the first
    sentence of its help, which `gitops --help` shows)."""

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
            _fail(exc, False)
        except database_errors() as exc:
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


def _closed_pipe() -> None:
    """End quietly with exit 0 when the reader of stdout closed it (``| head``): a normal
    end for a command line, not an error; what is left unwritten goes nowhere."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_OK)


@click.group(cls=_Main, epilog=EXIT_CODES)
@click.version_option(package_name="gitops")
@config_option
def main() -> None:
    """GitOps for plain Linux hosts: Git -> validate -> plan -> apply -> verify -> record."""


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--worktree", is_flag=True,
              help="Validate the files on disk at --repo instead of the branch head.")
@json_option
def validate(as_json: bool, worktree: bool, **opts: Any) -> None:
    """Validate the declared state of an environment; apply nothing."""
    from gitops.pipeline import reconcile as pipeline
    from gitops.pipeline.load import load

    s = _settings(**opts)
    target = _target(s)
    try:
        if worktree:
            state = load(Path(s.repo), s.environment, keys=s.sops, lab=target.lab)
            where = f"{s.repo} (work tree)"
        else:
            revision, state = pipeline.declared(target, _progress(as_json), keep=False)
            where = revision.ref
    except InvalidDeclaration as exc:
        if as_json:
            _emit({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
        else:
            click.echo(str(exc), err=True)
        sys.exit(EXIT_INVALID)
    except GitopsError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit({"valid": True, "revision": where, "hosts": [h.name for h in state.hosts],
               "services": list(state.service_order), "warnings": list(state.warnings)})
    else:
        for warning in state.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        click.echo(f"{s.environment} at {where}: valid, {len(state.hosts)} hosts, "
                   f"services {', '.join(state.service_order)}")


EXIT_CHANGES = 3
"""``gitops plan --exit-code``: the plan succeeded and something would change."""


@main.command(epilog=EXIT_CODES[:-1] + "; with --exit-code, 3: the plan has changes.")
@_target_options
@click.option("--exit-code", "exit_code", is_flag=True,
              help="Exit 0 when nothing would change, 3 when something would (1 and 2 as "
              "always): for CI gates.")
@json_option
def plan(as_json: bool, exit_code: bool, **opts: Any) -> None:
    """Show, per host and operation, what a reconcile would change (a dry run).

    Operations that run only when another one changes (pyinfra's _if=, a restart when
    the unit changed) are counted when their condition would hold, and listed with what
    makes them run.
    """
    from gitops.pipeline import reconcile as pipeline

    progress = _progress(as_json)
    outcome = pipeline.plan(_target(_settings(**opts)), progress)
    progress.done()
    changes = outcome.plan.changes if outcome.plan is not None else 0
    if as_json:
        _emit({**outcome.as_dict(), "changes": changes})
    elif outcome.plan is not None:
        _print_plan(outcome.plan)
    if exit_code and outcome.exit_code == 0 and changes:
        sys.exit(EXIT_CHANGES)
    _finish(outcome, as_json)


force_options = [
    click.option("--force", is_flag=True, help="Act although the environment is suspended or "
                 "held by a rollback (needs --reason; recorded with who and why)."),
]


def _with_force(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in force_options:
        func = option(func)
    return func


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--once", is_flag=True, help="Run one reconcile here and now, even when a "
              "daemon is running (it waits for no one: a held lock is reported).")
@click.option("--changed-only", is_flag=True, help="Apply on each host only the services "
              "changed since its last apply that verified (all are still verified); the "
              "daemon does this for new commits.")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@click.option("--reason", callback=_one_line, default="", help="Why: recorded in history.")
@click.option("--lease-timeout", type=float, default=0.0, show_default=True,
              help="With the record in PostgreSQL: seconds to wait for the environment's "
              "lease while a daemon holds it, before refusing (exit 1).")
@_with_force
@json_option
def reconcile(as_json: bool, once: bool, changed_only: bool, no_wait: bool, reason: str,
              force: bool, lease_timeout: float, **opts: Any) -> None:
    """Reconcile now: through the running daemon (waiting for its run), or, with no daemon
    or --once, apply and verify here."""
    from gitops.pipeline import reconcile as pipeline

    s = _settings(**opts)
    if changed_only:
        once = True
    if _guard(s, "reconcile", force, reason):
        once = True  # a suspended daemon applies nothing: the forced run happens here
    if not once and _daemon_reconcile(s, reason, wait=not no_wait, as_json=as_json,
                                      force=force):
        return  # the daemon refuses outside the window, or (--force) records and runs
    _window_guard(s, force, reason)
    if not math.isfinite(lease_timeout) or lease_timeout < 0:
        raise UsageError("--lease-timeout: a number of seconds, 0 or more")
    _run_here(s, pipeline.Request(reason=reason, changed_only=changed_only,
                                  actor=control.who()), as_json, lease_timeout=lease_timeout)


def _run_here(s: Settings, request: pipeline.Request, as_json: bool, *,
              lease_timeout: float = 0) -> None:
    _known_environment(s, as_json)
    progress = _progress(as_json)
    outcome = _leased_run(s, _target(s), request, progress, lease_timeout)
    progress.done()
    _conclude(outcome, as_json)


def _leased_run(s: Settings, target: pipeline.Target, request: pipeline.Request,
                progress: Callable[[str], None], lease_timeout: float = 0) -> pipeline.Outcome:
    """``pipeline.run`` here; with the record in PostgreSQL, under the environment's lease
    (``lease.hold``): refused (``LeaseHeld``, exit 1) while a live daemon holds it, after
    waiting ``lease_timeout`` seconds; a lease lost mid-run stops it before its next batch.
    A verify changes nothing and takes no lease."""
    from gitops.pipeline import reconcile as pipeline

    if s.database is None or request.kind == "verify":
        return pipeline.run(target, request, progress)
    from gitops.record import lease

    holder = lease.controller_id(f"cli:{control.who()}@{socket.gethostname()}:{os.getpid()}")
    with lease.hold(Database.of(s), target.environment, holder, s.lease_ttl,
                    wait=lease_timeout) as lost:
        return pipeline.run(target, dataclasses.replace(request, stop=lost), progress)


def _guard(s: Settings, action: str, force: bool, reason: str) -> bool:
    """Refuse ``action`` on a suspended or held environment unless ``force`` (with a reason,
    recorded as an ``override`` event naming who and why). True when it was overridden."""
    if force and not reason.strip():
        raise UsageError("--force needs --reason: who overrode what, and why, is recorded")
    with open_store(s) as store:
        controls = store.controls(s.environment)
        if controls["suspended"]:
            why = (f"suspended by {controls['actor'] or '?'} since {controls['since'] or '?'}"
                   f": {controls['reason']}")
        elif controls["held_sha"]:
            why = (f"held at {str(controls['held_sha'])[:10]} by a rollback (by "
                   f"{controls['actor'] or '?'} since {controls['since'] or '?'})")
        else:
            return False
        if not force:
            raise UsageError(f"{s.environment} is {why}; `gitops resume` first, or "
                             f"`gitops {action} --force --reason WHY`")
        _override(store, s, action, f"while {why}", reason)
    return True


def _override(store: Store, s: Settings, action: str, why: str, reason: str) -> None:
    """Record who forced ``action`` over which control (``why``) and their ``reason`` as an
    ``override`` event, and say so on stderr."""
    event = store.record_event(s.environment, "override", actor=control.who(),
                               reason=f"{action} --force {why}: {reason}")
    click.echo(f"{s.environment}: {action} forced by {control.who()} {freetext.shown(why)} "
               f"(recorded as run #{event})", err=True)


def _window_guard(s: Settings, force: bool, reason: str) -> None:
    """Refuse a reconcile here outside the environment's maintenance window (the settings'
    ``windows`` of its ``[[environments]]`` entry, else the inventory's) unless ``force``
    (with a reason, recorded as an ``override`` event)."""
    from datetime import UTC

    from gitops.daemon.loop import declared_windows
    from gitops.schedule import window_state

    if force and not reason.strip():
        raise UsageError("--force needs --reason: who overrode what, and why, is recorded")
    entry = next((c for c in s.environments if c.environment == s.environment), None)
    windows = list(entry.windows) if entry is not None else []
    if not windows:
        windows = declared_windows(s.repo, s.branch, s.environment, s.state_dir)
    state = window_state(windows, datetime.now(UTC))
    if state.open:
        return
    why = f"outside its maintenance window: {state.describe()}"
    if not force:
        raise UsageError(f"{s.environment} is {why}; `gitops reconcile --force --reason WHY` "
                         "runs it now")
    with open_store(s) as store:
        _override(store, s, "reconcile", why, reason)


@main.command(epilog=EXIT_CODES)
@_target_options
@json_option
def verify(as_json: bool, **opts: Any) -> None:
    """Run the checks of every service on every host (changes nothing); record the run."""
    from gitops.pipeline import reconcile as pipeline

    s = _settings(**opts)
    _run_here(s, pipeline.Request(kind="verify", actor=control.who()), as_json)


def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    func = click.option("--environment", "--inventory", "-e", "environment",
                        help="Only this environment (default: all).")(func)
    return config_option(func)


def _store_environment(s: Settings, environment: str | None) -> str | None:
    """The store's name (inventory) of ``-e NAME``, which may name a daemon's entry."""
    if environment is None:
        return None
    entry = _entry(s, environment)
    return entry.environment if entry is not None else environment


@main.command(epilog=EXIT_CODES)
@_store_options
@json_option
def status(as_json: bool, environment: str | None, state_dir: Path | None) -> None:
    """Conditions (Ready / Reconciling / Stalled) and revisions per environment and host,
    the revisions quarantined there, and the promotion pipeline.

    --json: the status rows; each environment's own row (host empty) also has
    "quarantined" (sha, reason, since) and "pipeline" (its stage, or null when no
    environment promotes from another)."""
    from gitops.daemon import promotion

    s = _settings(state_dir=state_dir)
    name_ = _store_environment(s, environment)
    store = _reader(s, name_, as_json)
    if store is None:
        return
    from gitops.report.teams import environment_teams

    chain = promotion.links(s.environments)
    with store:
        owners = environment_teams(store, s.environments)
        rows = [row.as_dict() | {"team": owners.get(row.environment)}
                for row in store.status(name_)]
        quarantined: dict[str, list[dict[str, Any]]] = {}
        for q in store.quarantined(name_):
            quarantined.setdefault(q.environment, []).append(
                {"sha": q.sha, "reason": q.reason, "since": q.since.isoformat()})
        stages = (promotion.pipeline(store, chain) if any(link.upstream for link in chain)
                  else [])
        invalid = {row["environment"]: _invalid_run(store, row["environment"]) for row in rows
                   if not row["host"] and any(c["reason"] == "ValidationFailed"
                                              for c in row["conditions"])}
    stage_of = {link.environment: stage for link, stage in zip(chain, stages, strict=False)}
    for row in rows:
        if not row["host"]:
            row["quarantined"] = quarantined.get(row["environment"], [])
            row["pipeline"] = stage_of.get(row["environment"])
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no runs recorded yet")
        return
    for row in rows:
        name = row["environment"] + (f"/{row['host']}" if row["host"] else "")
        ready = next((c for c in row["conditions"] if c["type"] == "Ready"), None)
        flags = " ".join(f"{c['type']}={c['status']}" for c in row["conditions"])
        owner = f" team={row['team']}" if row["team"] and not row["host"] else ""
        click.echo(f"{name:<24} {flags:<32} {ready['reason'] if ready else '':<26} "
                   f"applied={_short(row['last_applied_revision'])}{owner}")
        for c in row["conditions"]:
            click.echo(f"    {c['type']}: {freetext.shown(c['message'])}")
        found = invalid.get(row["environment"]) if not row["host"] else None
        if found is not None:
            _print_problems(*found)
        held = row.get("held")
        if held:
            click.echo(f"    Held: {held['sha'][:10]} by {freetext.shown(held['actor'])} until "
                       f"`gitops resume` or a commit newer than {(held['head'] or '')[:10]}")
        _print_quarantined(row["environment"], row.get("quarantined") or [])
    _print_stages(stages)


_PROBLEMS_SHOWN = 10
"""Problems of an invalid revision ``gitops status`` prints (``history --run N``: all)."""


def _invalid_run(store: Store, environment: str) -> tuple[int, list[str]] | None:
    """The newest invalid run of ``environment`` among its last 50: its id and problems."""
    run = next((r for r in store.history(environment, 50) if r.result == "invalid"), None)
    if run is None:
        return None
    return run.id, [line.strip() for line in (run.error or "").splitlines()[1:] if line.strip()]


def _print_problems(run_id: int, problems: list[str]) -> None:
    """The problems that make the environment's revision invalid, where each one is."""
    click.echo(f"    Problems (run #{run_id}; all of them: gitops history --run {run_id}):")
    for line in problems[:_PROBLEMS_SHOWN]:
        click.secho(f"      {line}", fg="red")
    if len(problems) > _PROBLEMS_SHOWN:
        click.echo(f"      ... and {len(problems) - _PROBLEMS_SHOWN} more")


def _print_quarantined(environment: str, entries: list[dict[str, Any]]) -> None:
    """Each quarantined revision of ``environment``: which, since when, why, and the way out."""
    for q in entries:
        click.echo(f"    Quarantined: {q['sha'][:10]} since {q['since'][:19]}: "
                   f"{freetext.shown(q['reason'])}")
    if entries:
        click.echo(f"    (not applied again; a newer commit is applied as usual; `gitops "
                   f"unquarantine {environment} SHA --reason WHY` releases one; `gitops forget "
                   f"{environment}` clears the quarantine, with the status and controls)")


def _print_stages(stages: list[dict[str, Any]]) -> None:
    if not stages:
        return
    click.echo("pipeline:")
    for stage in stages:
        name = stage["environment"] + (f" <- {stage['promote_from']}"
                                       if stage["promote_from"] else "")
        click.echo(f"  {name:<30} applied={(stage['applied'] or '-')[:10]} "
                   f"verified everywhere={(stage['verified'] or '-')[:10]}"
                   + (f"; {stage['waiting']}" if stage["waiting"] else ""))


@main.command(epilog=EXIT_CODES)
@_store_options
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many runs.")
@click.option("--run", "run_id", type=click.IntRange(min=1),
              help="Show one run in full: hosts, operations, every check and its message.")
@click.option("--diff", "diffs", is_flag=True,
              help="With --run: also what each changed file operation wrote (its diff, "
                   "secrets redacted).")
@json_option
def history(as_json: bool, environment: str | None, state_dir: Path | None, limit: int,
            run_id: int | None, diffs: bool) -> None:
    """Recorded runs and operator actions, newest first (--run ID: one run in full)."""
    if diffs and run_id is None:
        raise UsageError("--diff shows the diffs of one run: give --run ID")
    s = _settings(state_dir=state_dir)
    name_ = _store_environment(s, environment)
    store = _reader(s, name_, as_json)
    if store is None:
        if run_id is not None:
            raise UsageError(f"no run {run_id} in {s.state_dir}")
        return
    with store:
        if run_id is not None:
            detail = store.run(run_id)
            if detail is None:
                raise UsageError(f"no run {run_id} in {s.state_dir}")
            if as_json:
                _emit(detail.as_dict())
            else:
                _print_run(detail.as_dict())
                _print_diffs(detail.as_dict(), diffs)
            return
        from gitops.report.teams import environment_teams

        owners = environment_teams(store, s.environments)
        runs = [r.as_dict() | {"team": owners.get(r.environment)}
                for r in store.history(name_, limit)]
    if as_json:
        _emit(runs)
        return
    for r in runs:
        sha = (r["sha"] or "")[:10] or "-"
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "running"
        failed = f" failed: {', '.join(r['failed_hosts'])}" if r["failed_hosts"] else ""
        why = f": {freetext.shown(r['reason'])}" if r["reason"] else ""
        click.echo(f"#{r['id']:<4} {r['started_at'][:19]} {r['environment']:<10} "
                   f"{r['kind']:<9} {sha:<10} {r['result'] or 'running':<11} {took:>7} "
                   f"changed={r['changed']} by {freetext.shown(r['actor'])}{failed}{why}")


def _reader(s: Settings, environment: str | None, as_json: bool,
            empty: Any = ()) -> Store | None:
    """The store opened read-only for a read command (creates nothing); None when the
    state folder holds no database yet ("no runs recorded yet" is printed). A missing state
    folder, or an environment the store does not know, is a usage error (exit 2)."""
    try:
        store = open_store(s, readonly=True)
    except NoStore as exc:
        if not exc.folder_exists:
            _fail(exc, as_json)
        if as_json:
            _emit(list(empty) if isinstance(empty, tuple) else empty)
        else:
            click.echo("no runs recorded yet")
        return None
    except GitopsError as exc:
        _fail(exc, as_json)
    if environment is not None:
        known = store.environments()
        if environment not in known:
            store.close()
            _fail(UsageError(f"unknown environment {environment!r}; known: "
                             f"{', '.join(known) or 'none recorded yet'}"), as_json)
    return store


def _known_environment(s: Settings, as_json: bool) -> None:
    """``-e typo``: a usage error listing the inventories the branch head declares, before
    anything is recorded (else a run and a Stalled status of "typo" would stay). A source
    that cannot be read is left to the run, which records why."""
    from gitops.pipeline import source
    from gitops.pipeline.load import environments

    try:
        revision = source.fetch(s.repo, s.branch, s.state_dir)
        snap = source.snapshot(s.repo, revision, s.state_dir)
    except GitopsError:
        return
    known = environments(Path(snap.path))
    if s.environment not in known:
        _fail(UsageError(f"no inventory inventories/{s.environment}.yml in {revision.ref}; "
                         f"inventories there: {', '.join(known) or 'none'}"), as_json)


def _short(ref: str | None) -> str:
    if not ref:
        return "-"
    branch, _, sha = ref.partition("@sha1:")
    return f"{branch}@{sha[:10]}"


def _print_plan(plan: Plan) -> None:
    def show(op: OpPlan, suffix: str = "") -> None:
        click.secho(f"  ~ {op.name}{suffix}", fg="yellow")
        for line in (op.diff or "").splitlines():
            click.echo(f"      {line}")

    errors: dict[str, list[str]] = {}
    for host in plan.hosts:
        if host.error:
            errors.setdefault(host.error, []).append(host.host)
    for error, names in errors.items():  # a deploy's exception is the same on every host
        click.secho(f"{', '.join(names)}: cannot plan: {error}", fg="red")
    for host in plan.hosts:
        if host.error:
            continue
        click.echo(f"{host.host}: {host.changes} of {len(host.ops)} operation(s) would change")
        for removal in (r for r in plan.removals if r.host == host.host):
            last = f" (last applied {_short(removal.revision)})" if removal.revision else ""
            click.secho(f"  - {removal.note}{last}",
                        fg="red" if removal.action == "remove" else "yellow")
        follow = [op for op in host.ops if op.would_change and op.depends_on]
        for op in host.ops:
            if op.would_change and not op.depends_on:
                show(op)
        if follow:
            click.echo("  and, because of those changes:")
            for op in follow:
                show(op, f"  (runs if {' or '.join(op.depends_on)} changes)")
        if host.guard_restores:
            click.echo(f"  guarded: a revert would restore {', '.join(host.guard_restores)}")
    if plan.guarded:
        click.echo(f"guarded services: {', '.join(plan.guarded)} (a host they change reverts "
                   f"by itself unless the controller reaches it again within "
                   f"{plan.confirm_timeout} s)")
    planned = [h for h in plan.hosts if not h.error]
    changes = sum(h.changes for h in planned)
    hosts = sum(1 for h in planned if h.changes)
    removing = sum(1 for r in plan.removals if r.action == "remove")
    kept = len(plan.removals) - removing
    click.echo((f"plan: {changes} change(s) on {hosts} of {len(plan.hosts)} host(s)"
                if changes else "plan: no changes")
               + (f"; {removing} removal(s)" if removing else "")
               + (f"; {kept} service(s) no longer declared stay on their host" if kept else "")
               + (f"; {len(plan.hosts) - len(planned)} host(s) cannot plan"
                  if len(planned) < len(plan.hosts) else ""))


_MESSAGE_LINES = 15
"""Lines of a failing check's message shown in a run's output (all of them in --json)."""


def _check_failure(host: str, service: str, check: str, status: str, message: str) -> None:
    """A failing check with its message: the assertion, pytest's explanation, where."""
    lines = message.strip().splitlines() or [""]
    click.secho(f"  ✗ {host} {service}/{check}: {status}: {freetext.shown(lines[0])}", fg="red")
    for line in lines[1:_MESSAGE_LINES]:
        click.echo(f"      {freetext.shown(line)}")
    if len(lines) > _MESSAGE_LINES:
        click.echo(f"      ... ({len(lines) - _MESSAGE_LINES} more line(s): gitops history "
                   "--run ID --json)")


def _print_outcome(outcome: pipeline.Outcome) -> None:
    if outcome.revision is not None:
        click.echo(f"revision {outcome.revision.ref}")
    if outcome.apply is not None:
        for h in outcome.apply.hosts:
            colour = "green" if h.status == "ok" else "red"
            click.secho(f"{h.host}: {h.status}, {h.changed} change(s)", fg=colour)
            for op in h.ops:
                if op.status == "changed":
                    click.echo(f"  ~ {op.name}")
                elif op.status == "failed":
                    click.secho(f"  ✗ {op.name}", fg="red")
                    for line in op.stderr.splitlines()[-5:]:
                        click.echo(f"      {freetext.shown(line)}")
            if h.error:
                click.secho(f"  {h.error}", fg="red")
        if outcome.apply.stopped:
            click.secho(f"rollout stopped: {outcome.apply.stopped}", fg="red")
    if outcome.verify is not None:
        v = outcome.verify
        passed = sum(1 for r in v.results if r.status == "pass")
        waiting = sum(1 for r in v.results if r.status == "DependencyNotReady")
        click.echo(f"checks: {passed} passed, {len(v.failed) - waiting} failed"
                   + (f", {waiting} service(s) DependencyNotReady" if waiting else "")
                   + (f", {len(v.host_errors)} host(s) unreachable" if v.host_errors else ""))
        for r in v.failed:
            _check_failure(r.host, r.service, r.check, r.status, r.message)
        for host, why in v.host_errors.items():
            click.secho(f"  ✗ {host}: {why}", fg="red")


def _summary(run_id: int | None, result: str, changed: int, passed: int, failed: int,
             unreachable: int = 0) -> str:
    """``run #12: succeeded, 3 changed, 42 checks passed`` (failures and hosts when any)."""
    parts = [f"{changed} changed", f"{passed} checks passed"]
    if failed:
        parts.append(f"{failed} failed")
    if unreachable:
        parts.append(f"{unreachable} host(s) unreachable")
    return f"run #{run_id if run_id is not None else '-'}: {result}, {', '.join(parts)}"


def _outcome_summary(outcome: pipeline.Outcome) -> str:
    v = outcome.verify
    if v is None and outcome.apply is None:
        return f"run #{outcome.run_id}: {outcome.result}, nothing applied"
    unchecked = v.not_verified(outcome.apply) if v else []
    return _summary(outcome.run_id, outcome.result,
                    outcome.apply.changed if outcome.apply else 0,
                    sum(1 for r in v.results if r.status == "pass") if v else 0,
                    len(v.failed) if v else 0, len(v.host_errors) if v else 0) + (
        f"; applied, not verified on {', '.join(unchecked)}: no check ran there"
        if unchecked else "")


def _print_run(run: dict[str, Any]) -> None:
    """One recorded run in full: what the JSON says, as text."""
    click.echo(f"run #{run['id']} {run['kind']} of {run['environment']} by "
               f"{freetext.shown(run['actor'])}: "
               f"{run['result'] or 'running'} ({run['sha'] or '-'})")
    click.echo(f"  started {run['started_at'][:19]}"
               + (f", took {run['duration_s']:.1f}s" if run["duration_s"] is not None else "")
               + (f"; reason: {freetext.shown(run['reason'])}" if run["reason"] else ""))
    if run.get("message"):
        click.echo(f"  commit: {freetext.shown(run['message'].splitlines()[0])} "
                   f"({freetext.shown(run.get('author') or '?')})")
    if run["error"]:
        click.echo(f"  error: {freetext.shown_text(run['error'])}")
    ops: dict[str, list[dict[str, Any]]] = {}
    for op in run.get("operations", []):
        ops.setdefault(op["host"], []).append(op)
    checks: dict[str, list[dict[str, Any]]] = {}
    for c in run["checks"]:
        checks.setdefault(c["host"], []).append(c)
    for h in run["hosts"]:
        click.echo(f"  {h['host']}: apply={h['apply_status'] or '-'} changed={h['changed']} "
                   f"verify={h['verify_status'] or '-'}"
                   + (f" error={freetext.shown(h['error'])}" if h["error"] else ""))
        for op in ops.get(h["host"], []):
            service = f"{op['service']}: " if op["service"] else ""
            click.echo(f"    {op['status']:<9} {service}{op['name']}")
            if op["status"] == "failed":
                for line in op["stderr"].splitlines()[-5:]:
                    click.echo(f"          {freetext.shown(line)}")
        for c in checks.get(h["host"], []):
            mark = "✓" if c["status"] == "pass" else "✗"
            click.echo(f"    {mark} {c['service']}/{c['check']}: {c['status']}")
            for line in c["message"].strip().splitlines():
                click.echo(f"          {freetext.shown(line)}")
    passed = sum(1 for c in run["checks"] if c["status"] == "pass")
    if run["kind"] in (*APPLY_KINDS, "verify"):
        click.echo(_summary(run["id"], run["result"] or "running", run["changed"], passed,
                            len(run["checks"]) - passed))


def _print_diffs(run: dict[str, Any], shown: bool) -> None:
    """The diffs of a run's changed files (``--diff``), the same diff on several hosts once;
    without ``--diff``, how many there are and how to see them."""
    from gitops.report.incidents import changed_files

    plan = run.get("plan") or {"hosts": []}
    found = changed_files([{"host": h["host"], "diffs": [
        {"change": f"{op['service'] or '-'}: {op['name']}", "diff": op["diff"]}
        for op in h["ops"] if op["would_change"] and op.get("diff")]} for h in plan["hosts"]])
    if found and not shown:
        click.echo(f"  {len(found)} file diff(s): gitops history --run {run['id']} --diff")
    for change, hosts, diff in found if shown else []:
        click.echo(f"diff of {change} on {', '.join(hosts)}:")
        for line in diff.splitlines():
            click.echo(f"    {line}")


def _fail(exc: GitopsError, as_json: bool) -> None:
    if as_json:
        _emit({"result": "error", "error": str(exc)})
    else:
        click.secho(f"error: {freetext.shown_text(exc)}", fg="red", err=True)
    sys.exit(exc.exit_code)


def _conclude(outcome: pipeline.Outcome, as_json: bool) -> None:
    """Print a run's outcome (JSON or text) and exit with its code."""
    if as_json:
        _emit(outcome.as_dict())
    else:
        _print_outcome(outcome)
    _finish(outcome, as_json)


def _finish(outcome: pipeline.Outcome, as_json: bool) -> None:
    if outcome.error is not None and not as_json:
        click.secho(f"error: {outcome.error}" if not isinstance(outcome.error, InvalidDeclaration)
                    else str(outcome.error), fg="red", err=True)
    if not as_json and outcome.run_id is not None:
        click.secho(_outcome_summary(outcome),
                    fg="green" if outcome.result == "succeeded" else "red")
    elif not as_json and outcome.result != "succeeded" and outcome.error is None:
        click.secho(f"{outcome.result}", fg="red", err=True)
    sys.exit(outcome.exit_code)


# -- the daemon and operator controls ------------------------------------------------------


class _Daemon:
    """The running daemon's HTTP API at the settings' ``listen`` address (its token if set)."""

    def __init__(self, s: Settings) -> None:
        from gitops.web.server import parse_listen

        host, self.port = parse_listen(s.listen)
        self.host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self.tls_cert = s.tls_cert
        """With TLS: the daemon's own certificate, the one trusted (hostnames unchecked)."""
        self.headers = {"Content-Type": "application/json"}
        self.date: str | None = None
        """The Date header of the last answer: the daemon's clock."""
        if s.api_token is not None:
            self.headers["Authorization"] = f"Bearer {s.api_token.reveal()}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10) -> tuple[int, Any]:
        """(status, JSON answer); ``OSError`` or ``ValueError`` when no daemon answers."""
        import http.client

        conn: http.client.HTTPConnection
        if self.tls_cert is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls_cert))
            context.check_hostname = False  # the listen address, not the certificate's name
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=self.headers)
            response = conn.getresponse()
            self.date = response.getheader("date")
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()


def _http_date(value: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None


def _ask_daemon(s: Settings, environment: str, action: str, body: dict[str, Any],
                daemon: _Daemon | None = None) -> dict[str, Any] | None:
    """POST to the running daemon's API; None when no daemon answers on ``s.listen``."""
    daemon = daemon or _Daemon(s)
    try:
        status, data = daemon.call("POST", f"/api/environments/{environment}/{action}",
                                   {**body, "actor": control.who()})
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        data = {}
    if status == 404 and "unknown environment" in str(data.get("error", "")):
        return None  # the daemon does not watch this environment: act here
    if status >= 500:
        raise TemporaryError(f"daemon at {s.listen}: {data.get('error', status)}")
    if status >= 400:  # refused: wrong token, a bad request, the environment's state
        raise UsageError(f"daemon at {s.listen}: {data.get('error', status)}")
    return data


_POLL = 0.5
_IDLE_GIVE_UP = 15.0
"""Seconds the daemon may sit idle, with no run for the request, before the wait gives up."""


def _daemon_reconcile(s: Settings, reason: str, *, wait: bool, as_json: bool,
                      force: bool = False) -> bool:
    """Ask the running daemon to reconcile and (``wait``) follow its run to the end through
    its API (``/api/runs``), printing each host as it is recorded, then the outcome; exits
    with a local run's codes. ``force``: even outside the maintenance window (recorded).
    False when no daemon watches the environment."""
    body: dict[str, Any] = {"reason": reason, **({"force": True} if force else {})}
    return _through_daemon(s, "reconcile", body, wait=wait, as_json=as_json)


def _through_daemon(s: Settings, action: str, body: dict[str, Any], *, wait: bool,
                    as_json: bool) -> bool:
    """``action`` (reconcile, rollback, retry) by the running daemon, its run followed to
    the end unless not ``wait``; exits with the run's code. False: no daemon here."""
    name = _api_name(s)
    daemon = _Daemon(s)
    try:
        before = max((r["id"] for r in _recent(daemon, s.environment, 1)), default=0)
    except (OSError, ValueError):
        before = 0
    actor = control.who()
    answer = _ask_daemon(s, name, action, body, daemon)
    if answer is None:
        return False
    # reconcile says whether it was queued or folded into a pending one; the others queue
    triggered = bool(answer.get("triggered", True))
    asked_at = _http_date(daemon.date)
    if not wait:
        if as_json:
            _emit(answer)
        else:
            click.echo(_daemon_answer(name, action, answer))
        return True
    if not as_json:
        click.echo(f"{_daemon_answer(name, action, answer)}; waiting for its run "
                   "(Ctrl-C stops waiting, not the run)", err=True)
    try:
        run = _follow(daemon, s.environment, name, before, actor,
                      asked_at if triggered else None, as_json)
    except KeyboardInterrupt:
        click.echo("stopped waiting; the daemon's run goes on (gitops history)", err=True)
        sys.exit(EXIT_FAILED)
    except (OSError, ValueError) as exc:
        click.secho(f"error: lost the daemon at {s.listen} while waiting: {exc}", fg="red",
                    err=True)
        sys.exit(EXIT_FAILED)
    code = _run_exit_code(daemon, run)
    if as_json:
        _emit({**run, "exit_code": code})
    else:
        passed = sum(1 for c in run["checks"] if c["status"] == "pass")
        for c in run["checks"]:
            if c["status"] != "pass":
                _check_failure(c["host"], c["service"], c["check"], c["status"], c["message"])
        if run["error"]:
            click.secho(f"error: {freetext.shown_text(run['error'])}", fg="red", err=True)
        click.secho(_summary(run["id"], run["result"], run["changed"], passed,
                             len(run["checks"]) - passed),
                    fg="green" if run["result"] == "succeeded" else "red")
    sys.exit(code)


def _daemon_answer(name: str, action: str, answer: dict[str, Any]) -> str:
    event = f" (recorded as run #{answer['event']})" if answer.get("event") else ""
    if action == "rollback":
        return f"{name}: the daemon holds {str(answer.get('held_sha'))[:10]}{event}"
    if action == "retry":
        return f"{name}: the daemon retries {', '.join(answer.get('retrying', []))}"
    if action == "promote":
        return (f"{name}: promoted {str(answer.get('sha'))[:10]} from "
                f"{answer.get('promote_from')}{' (forced)' if answer.get('forced') else ''}"
                f"{event}")
    return (f"{name}: the daemon will reconcile now" if answer.get("triggered") else
            f"{name}: a reconcile is already pending in the daemon")


def _follow(daemon: _Daemon, environment: str, name: str, before: int, actor: str,
            asked_at: datetime | None, as_json: bool) -> dict[str, Any]:
    """The daemon's run for this request, once finished; each host printed as recorded.

    Ours is the first apply run of the environment after ``before`` by ``actor`` started
    since ``asked_at`` (the daemon's clock, to the second); None (the request was coalesced
    into a pending one): the first apply run after ``before``."""
    mine: int | None = None
    idle_since: float | None = None
    shown: set[str] = set()
    while True:
        if mine is None:
            found = sorted((r for r in _recent(daemon, environment, 20) if r["id"] > before
                            and r["kind"] in APPLY_KINDS and not _event(r) and (
                                asked_at is None or (r["actor"] == actor
                                                     and _since(r, asked_at)))),
                           key=lambda r: int(r["id"]))
            if found:
                mine = int(found[0]["id"])
                if not as_json:
                    click.echo(f"run #{mine}: {found[0]['kind']} of "
                               f"{(found[0]['sha'] or '')[:10] or 'the branch head'} started",
                               err=True)
                continue
            _, health = daemon.call("GET", "/healthz")
            state = ((health or {}).get("environments") or {}).get(name) or {}
            busy = state.get("pending") or str(state.get("running") or "").startswith(
                tuple(APPLY_KINDS))
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > _IDLE_GIVE_UP:
                raise UsageError(f"{name}: the daemon started no run for this request (is the "
                                 "environment suspended, or its head quarantined? gitops status)")
            time.sleep(_POLL)
            continue
        status, run = daemon.call("GET", f"/api/runs/{mine}")
        if status != 200 or not isinstance(run, dict):
            raise ValueError(f"run {mine}: HTTP {status}")
        if not as_json:
            for h in run["hosts"]:
                if h["host"] not in shown and (h["verify_status"] or h["apply_status"]
                                               not in (None, "ok")):
                    shown.add(h["host"])
                    bad = h["apply_status"] not in (None, "ok") or h["verify_status"] == "fail"
                    click.secho(f"{h['host']}: apply {h['apply_status'] or '-'}, "
                                f"{h['changed']} change(s), checks {h['verify_status'] or '-'}",
                                fg="red" if bad else "green")
        if run["result"] is not None:
            return run
        time.sleep(_POLL)


def _recent(daemon: _Daemon, environment: str, limit: int) -> list[dict[str, Any]]:
    """The environment's newest runs from the daemon's API (``GET /api/runs``)."""
    from urllib.parse import quote

    status, runs = daemon.call("GET", f"/api/runs?environment={quote(environment)}"
                                      f"&limit={limit}")
    if status != 200 or not isinstance(runs, list):
        raise ValueError(f"GET /api/runs: HTTP {status}")
    return [r for r in runs if isinstance(r, dict) and "id" in r]


def _event(run: dict[str, Any]) -> bool:
    """An operator action (``Store.record_event``: a rollback hold), not a run: it finished
    as it started."""
    return run.get("finished_at") is not None and run.get("finished_at") == run.get(
        "started_at")


def _since(run: dict[str, Any], asked_at: datetime) -> bool:
    try:
        started = datetime.fromisoformat(run["started_at"])
    except (TypeError, ValueError):
        return True
    return started >= asked_at


def _run_exit_code(daemon: _Daemon, run: dict[str, Any]) -> int:
    """A local run's exit code for a run the daemon made: permanent errors stall (2)."""
    if run["result"] == "succeeded":
        return 0
    if run["result"] == "invalid":
        return EXIT_INVALID
    if run["result"] == "error":
        try:
            _, rows = daemon.call("GET", "/api/status")
        except (OSError, ValueError):
            return EXIT_FAILED
        for row in rows if isinstance(rows, list) else []:
            if row.get("environment") == run["environment"] and row.get("host") == "" and any(
                    c["type"] == "Stalled" and c["status"] == "True"
                    for c in row.get("conditions", [])):
                return EXIT_INVALID
    return EXIT_FAILED


@main.command(epilog=EXIT_CODES)
@click.option("--branch", "-b", required=True, help="The branch to preview.")
@click.option("--base", help="The branch it would merge into [the environment's branch].")
@click.option("--repo", "-r", help="State repository: URL or local path [GITOPS_REPO; .]")
@click.option("--environment", "--inventory", "-e", "environment",
              help="Environment whose shape the preview lab takes [GITOPS_ENVIRONMENT; lab]")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")
@config_option
@json_option
def preview(as_json: bool, branch: str, base: str | None, **opts: Any) -> None:
    """Preview a branch on disposable hosts: a lab shaped like the environment (at most
    settings.preview.hosts_per_group hosts per group) gets the base, then the change, then
    the checks; it is taken down afterwards. Without root or systemd-nspawn: a dry run (the
    change's plan against the environment's hosts). Prints the report (Markdown) and
    records it."""
    from gitops.daemon import preview as preview_

    s = _settings(**opts)
    signing = next((e.verify_commits for e in s.environments if e.name == _api_name(s)), None)
    request = preview_.PreviewRequest(
        environment=_api_name(s), inventory=s.environment, repo=s.repo, branch=branch,
        base=base or s.branch, signing=signing)
    progress = _progress(as_json)
    with open_store(s) as store:
        preview_id = store.start_preview(request.environment, provider="cli", number=None,
                                         branch=branch, base=request.base, head_sha=None)
    with preview_.cli_slot(s) as lab_name:
        with open_store(s) as store:
            store.preview_running(preview_id, lab_name)
        report = preview_.run_preview(request, s, lab_name=lab_name, say=progress)
    progress.done()
    with open_store(s) as store:
        store.finish_preview(preview_id, report)
    if as_json:
        _emit({"id": preview_id, **report.model_dump(mode="json")})
    else:
        click.echo(preview_.render_comment(report, mark=preview_.marker(request.environment)))
        click.echo(f"preview #{preview_id}: {report.result}: {report.summary}")
    sys.exit(EXIT_OK if report.result == "success" else
             EXIT_INVALID if report.problems else EXIT_FAILED)


@main.command(epilog=EXIT_CODES)
@config_option
def run() -> None:
    """Run the daemon: watch the configured environments and reconcile them continuously.

    Serves webhooks, the operator API, the status page and /healthz on the listen address.
    SIGTERM or Ctrl-C: the batch in progress finishes, the run is recorded as interrupted,
    then exit.
    """
    import logging
    import signal

    from gitops.daemon.loop import Daemon
    from gitops.web import metrics, page, server
    from gitops.web.limits import HttpLimits
    from gitops.web.sessions import Sessions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = _settings()
    try:
        daemon = Daemon(s)
        authorize = server.make_authorize(s)
        app = server.create_app(daemon, s, extra_routes=[
            *metrics.routes(s.state_dir, authorize, Database.of(s)),
            *page.routes(s.state_dir, authorize, Database.of(s), chain=daemon.chain,
                         sessions=Sessions(s.session_hours * 3600))],
            previews=daemon.previews)
        http, thread = server.start_in_thread(
            app, s.listen, limits=HttpLimits(per_client=s.max_client_requests))
    except GitopsError as exc:
        _fail(exc, False)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)  # only a flag: locks are not safe in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    click.echo(f"gitops daemon: watching {', '.join(e.name for e in s.environments)}; "
               f"{'https' if s.tls_cert else 'http'}://{s.listen}/healthz", err=True)
    while not stopping:
        time.sleep(0.2)
    click.echo("gitops daemon: stopping (the batch in progress finishes)", err=True)
    daemon.stop()
    server.stop(http, thread)


def _control(action: str, environment: str | None, state_dir: Path | None, as_json: bool,
             **body: Any) -> None:
    s = _settings(environment=environment, state_dir=state_dir)
    answer = _ask_daemon(s, _api_name(s), action, body)
    if answer is None:  # no daemon: the store is the shared record
        store = open_store(s)
        try:
            if action == "suspend":
                answer = control.suspend(store, s.environment, actor=control.who(),
                                         reason=body["reason"]).as_dict()
            else:
                answer = control.resume(store, s.environment, actor=control.who(),
                                        reason=body.get("reason", "")).as_dict()
        except GitopsError as exc:
            _fail(exc, as_json)
        finally:
            store.close()
    assert answer is not None
    event = f" (recorded as run #{answer['event']})" if answer.get("event") else ""
    if as_json:
        _emit(answer)
    elif action == "suspend":
        click.echo(f"{s.environment}: suspended by {freetext.shown(answer.get('actor'))}: "
                   f"{freetext.shown(answer.get('reason'))}{event}")
    else:
        click.echo(f"{s.environment}: resumed{event}")


env_option = click.option("--environment", "--inventory", "-e", "environment",
                          help="Environment [GITOPS_ENVIRONMENT; lab]")
state_option = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                            help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")


@main.command(epilog=EXIT_CODES)
@env_option
@state_option
@config_option
@click.option("--reason", callback=_one_line, required=True,
              help="Why (shown in status and history).")
@json_option
def suspend(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Stop all applies to an environment until gitops resume (reconcile --once, retry and
    rollback refuse it too, unless --force --reason)."""
    _control("suspend", environment, state_dir, as_json, reason=reason)


@main.command(epilog=EXIT_CODES)
@env_option
@state_option
@config_option
@click.option("--reason", callback=_one_line, default="", help="Why (shown in history).")
@json_option
def resume(environment: str | None, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Resume applies (and release a rollback hold): the branch head is reconciled again."""
    _control("resume", environment, state_dir, as_json, reason=reason)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.argument("revision", required=False)
@click.option("--reason", callback=_one_line, default="", help="Why: recorded in history.")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@_with_force
@json_option
def rollback(revision: str | None, reason: str, no_wait: bool, force: bool, as_json: bool,
             **opts: Any) -> None:
    """Apply an earlier verified revision (default: the one before the current) and hold it
    until gitops resume or a newer commit."""
    from gitops.pipeline import reconcile as pipeline

    s = _settings(**opts)
    forced = _guard(s, "rollback", force, reason)
    if not forced and _through_daemon(s, "rollback", {"revision": revision, "reason": reason},
                                      wait=not no_wait, as_json=as_json):
        return
    target = _target(s)
    with open_store(s) as store:
        try:
            held = control.hold_rollback(
                store, s.environment, repo=s.repo, branch=s.branch, state_dir=s.state_dir,
                revision=revision, actor=control.who(), reason=reason)
        except GitopsError as exc:
            _fail(exc, as_json)
            return
    sha = str(held.held_sha)
    progress = _progress(as_json)
    outcome = _leased_run(s, target, pipeline.Request(
        kind="rollback", revision=sha, reason=reason or f"rollback to {sha[:10]}",
        actor=control.who()), progress)
    progress.done()
    if not as_json:
        click.echo(f"{s.environment} holds {sha[:10]} until `gitops resume` or a newer commit",
                   err=True)
    _conclude(outcome, as_json)


@main.command(epilog=EXIT_CODES)
@click.option("--environment", "-e", "environment", required=True,
              help="The environment to promote to: an [[environments]] entry with promote_from.")
@click.option("--revision", required=True, help="The commit (SHA) to promote.")
@click.option("--reason", callback=_one_line, required=True,
              help="Why: recorded in history with who.")
@click.option("--force", is_flag=True, help="Promote a revision that is not verified on "
              "every host of the upstream environment (recorded as forced).")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@state_option
@config_option
@json_option
def promote(environment: str, revision: str, reason: str, force: bool, no_wait: bool,
            state_dir: Path | None, as_json: bool) -> None:
    """Promote one revision to an environment by hand (one verified on every host of the
    environment it promotes from, unless --force); through the running daemon, else here."""
    from gitops.daemon import promotion
    from gitops.pipeline import reconcile as pipeline

    s = _settings(environment=environment, state_dir=state_dir)
    link = next((x for x in promotion.links(s.environments)
                 if environment in (x.name, x.environment)), None)
    if link is None:
        raise UsageError(f"no [[environments]] entry named {environment!r} in the settings")
    if link.upstream is None:
        raise UsageError(f"{link.name} does not promote from another environment (set "
                         "promote_from in its [[environments]] entry)")
    if not reason.strip():
        raise UsageError("--reason is empty: who promoted what, and why, is recorded")
    body: dict[str, Any] = {"revision": revision, "reason": reason,
                            **({"force": True} if force else {})}
    if _through_daemon(s, "promote", body, wait=not no_wait, as_json=as_json):
        return
    with open_store(s) as store:
        try:
            answer = promotion.promote(store, link, repo=s.repo, branch=s.branch,
                                       state_dir=s.state_dir, revision=revision,
                                       actor=control.who(), reason=reason, force=force)
        except GitopsError as exc:
            _fail(exc, as_json)
            return
    if not as_json:
        click.echo(_daemon_answer(link.name, "promote", answer).replace(
            ": promoted", ": promoting", 1), err=True)
    target = dataclasses.replace(_target(s), upstream=link.upstream_environment)
    progress = _progress(as_json)
    outcome = _leased_run(s, target, pipeline.Request(
        kind="reconcile", revision=answer["sha"], actor=control.who(),
        reason=f"promoted by {control.who()}: {answer['reason']}"), progress)
    progress.done()
    _conclude(outcome, as_json)


@main.command(epilog=EXIT_CODES)
@_target_options
@click.option("--failed", is_flag=True, required=True,
              help="Retry the hosts that failed in the latest run (required).")
@click.option("--reason", callback=_one_line, default="",
              help="Why: recorded in history (needed with --force).")
@click.option("--no-wait", is_flag=True, help="Through a running daemon: return once it "
              "has the request, without waiting for the run.")
@_with_force
@json_option
def retry(failed: bool, reason: str, no_wait: bool, force: bool, as_json: bool,
          **opts: Any) -> None:
    """Run the latest revision again on the hosts that failed, only those."""
    from gitops.pipeline import reconcile as pipeline

    s = _settings(**opts)
    forced = _guard(s, "retry", force, reason)
    if not forced and _through_daemon(s, "retry", {"reason": reason}, wait=not no_wait,
                                      as_json=as_json):
        return
    with open_store(s) as store:
        hosts = control.failed_hosts(store, s.environment)
        last = next((r for r in store.history(s.environment, 50)
                     if r.kind in APPLY_KINDS), None)
    if not hosts or last is None:
        raise UsageError(f"{s.environment}: no failed hosts to retry")
    _run_here(s, pipeline.Request(
        kind="retry", revision=last.sha, hosts=frozenset(hosts),
        reason=reason or f"retry of {', '.join(hosts)}", actor=control.who()), as_json)


@main.command(epilog=EXIT_CODES)
@click.argument("environment")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")
@click.option("--reason", callback=_one_line, default="", help="Why: recorded in history with who.")
@config_option
@json_option
def forget(environment: str, state_dir: Path | None, reason: str, as_json: bool) -> None:
    """Remove ENVIRONMENT's status record, controls and quarantine (e.g. one made by a typo);
    its runs stay in history, with a `forget` entry saying who."""
    s = _settings(state_dir=state_dir)
    store = _reader(s, environment, as_json)
    if store is None:
        sys.exit(EXIT_INVALID)
    store.close()
    with open_store(s) as store:
        removed = store.forget(environment, actor=control.who(), reason=reason)
    if as_json:
        _emit({"environment": environment, "removed": {k: v for k, v in removed.items()
                                                       if k != "runs"},
               "runs_kept": removed["runs"]})
        return
    click.echo(f"{environment}: status, controls and quarantine removed; its "
               f"{removed['runs']} run(s) stay in history (gitops history -e {environment})")


@main.command(epilog=EXIT_CODES)
@click.argument("environment")
@click.argument("sha")
@click.option("--reason", callback=_one_line, required=True,
              help="Why (e.g. a host was down, not the commit's "
              "fault): recorded in history with who.")
@state_option
@config_option
@json_option
def unquarantine(environment: str, sha: str, reason: str, state_dir: Path | None,
                 as_json: bool) -> None:
    """Release one quarantined revision of ENVIRONMENT (SHA: a unique prefix of 7 or more
    hex digits) whose rollout failed for a reason not the commit's; the daemon applies it
    again at its next cycle if it is still the branch head. Through a running daemon, else
    in the store."""
    if not reason.strip():
        _fail(UsageError("--reason is empty: who released what, and why, is recorded"),
              as_json)
    try:
        control.sha_prefix(sha)  # before asking anyone
    except GitopsError as exc:
        _fail(exc, as_json)
    s = _settings(environment=environment, state_dir=state_dir)
    try:
        answer = _ask_daemon(s, _api_name(s), "unquarantine",
                             {"revision": sha, "reason": reason})
    except GitopsError as exc:
        _fail(exc, as_json)
    if answer is None:  # no daemon watches it: the store is the shared record
        try:
            with open_store(s, readonly=True) as reader:
                known = reader.environments()
        except NoStore:
            known = []
        except GitopsError as exc:
            _fail(exc, as_json)
        if s.environment not in known:
            _fail(UsageError(f"unknown environment {s.environment!r}; known: "
                             f"{', '.join(known) or 'none recorded yet'}"), as_json)
        with open_store(s) as store:
            try:
                answer = control.unquarantine(store, s.environment, sha,
                                              actor=control.who(), reason=reason)
            except GitopsError as exc:
                _fail(exc, as_json)
    assert answer is not None
    if as_json:
        _emit(answer)
        return
    click.echo(f"{s.environment}: {str(answer['sha'])[:10]} released from quarantine by "
               f"{freetext.shown(answer.get('actor'))}: {freetext.shown(answer.get('reason'))} "
               "(recorded as run "
               f"#{answer.get('event')}); applied again at the daemon's next cycle if it is "
               "still the branch head")


@main.command(epilog=EXIT_CODES)
@_store_options
@click.option("--days", default=90.0, show_default=True, type=_Finite(),
              help="The window, in days (a positive number).")
@click.option("--by", type=click.Choice(["team", "environment"]),
              help="Side by side per owning team (or environment), each key with its trend "
                   "against the previous window.")
@json_option
def metrics(environment: str | None, state_dir: Path | None, days: float, by: str | None,
            as_json: bool) -> None:
    """Delivery metrics from the recorded history: deployment frequency, lead time for
    changes, change failure rate and time to restore (the DORA four keys)."""
    from gitops.report.delivery import delivery_metrics

    _max_days(days)
    s = _settings(state_dir=state_dir)
    name_ = _store_environment(s, environment)
    store = _reader(s, name_, as_json, empty={})
    if store is None:
        return
    if by is not None:
        with store:
            _compare(store, s, by, days, as_json)
        return
    with store:
        result = delivery_metrics(store, environment=name_, days=days)
    if as_json:
        _emit({name: m.as_dict() for name, m in result.items()})
        return
    if not result:
        click.echo("no runs recorded yet")
    for name, m in result.items():
        d = m.as_dict()
        rate = d["change_failure_rate"]
        click.echo(f"{name} (last {days:g} days)")
        click.echo(f"  deployment frequency  {d['deployment_frequency_per_day']:.2f}/day "
                   f"({d['deployments']} verified rollouts)")
        click.echo(f"  lead time for changes median {_duration(d['lead_time_median_s'])}, "
                   f"p90 {_duration(d['lead_time_p90_s'])}")
        click.echo("  change failure rate   "
                   + (f"{rate:.0%} ({d['failed_rollouts']} of {d['rollouts']} rollouts)"
                      if rate is not None else "-")
                   + (f"; {d['rollouts_pending']} not counted yet (errored, interrupted or "
                      "running: counted once verified or failed)"
                      if d["rollouts_pending"] else "")
                   + (f"; {d['short_of_checks']} short of a new check (checks failed, nothing "
                      "changed on the hosts: not a failed change)"
                      if d["short_of_checks"] else ""))
        click.echo(f"  time to restore       median {_duration(d['time_to_restore_median_s'])}"
                   + (f"; unrestored since {d['unrestored_since']}"
                      if d["unrestored_since"] else ""))
        for stage in d.get("stages", []):
            click.echo(f"  lead time, {stage['stage']}: median {_duration(stage['median_s'])}, "
                       f"p90 {_duration(stage['p90_s'])} ({stage['count']} revision(s))")


@main.group(epilog=EXIT_CODES, invoke_without_command=True)
@_store_options
@click.option("--write", "folder",
              type=click.Path(path_type=Path, file_okay=False, writable=True),
              help="Also write one Markdown report per incident into this folder.")
@json_option
@click.pass_context
def incidents(ctx: click.Context, environment: str | None, state_dir: Path | None,
              folder: Path | None, as_json: bool) -> None:
    """Incidents (failed rollouts, rollbacks, drift corrections) with their timelines and
    post-mortems (annotate, action)."""
    from gitops.report import incidents as incidents_

    if ctx.invoked_subcommand is not None:
        return
    s = _settings(state_dir=state_dir)
    name_ = _store_environment(s, environment)
    store = _reader(s, name_, as_json)
    if store is None:
        return
    with store:
        found = incidents_.incidents(store, name_)
        if folder is not None:
            incidents_.write_reports(store, folder)
    if as_json:
        _emit([i.as_dict() for i in found])
        return
    if not found:
        click.echo("no incidents")
    for i in found:
        d = i.as_dict()
        pm = d["postmortem"]
        review = "reviewed" if d["reviewed"] else "not reviewed"
        actions = f", {pm['open_actions']} open action(s)" if pm.get("open_actions") else ""
        click.echo(f"{d['id']:<16} {d['status']:<7} {d['cause']:<17} "
                   f"{(d['commit'].get('sha') or '')[:10]:<10} opened {d['opened_at'][:19]} "
                   f"{'restored after ' + _duration(d['duration_s']) if d['closed_at'] else ''}"
                   f" [{d['team'] or 'no team'}; {review}{actions}]")
    if folder is not None:
        click.echo(f"reports written to {folder}")


def _writer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Where runs, snapshots and locks live [GITOPS_STATE_DIR]")(func)
    return json_option(config_option(func))


def _recorded(s: Settings, as_json: bool) -> None:
    """A post-mortem writes only into a record that has incidents: a missing state folder or
    one with no record yet is one usage error (exit 2), nothing else printed."""
    try:
        store = open_store(s, readonly=True)
    except NoStore as exc:
        _fail(exc if not exc.folder_exists else UsageError(
            f"no runs recorded in {s.state_dir}: no incident to write into"), as_json)
    except GitopsError as exc:
        _fail(exc, as_json)
    store.close()


def _rewrite_report(s: Settings, store: Store, incident_id: str) -> None:
    """The incident's report in ``reports/`` says what was just written (a folder that
    cannot be written is said on stderr: the entry is recorded all the same)."""
    from gitops.report import reports

    try:
        reports.after_postmortem(s, store, incident_id)
    except OSError as exc:
        click.secho(f"warning: cannot write the incident report: {exc}", fg="yellow", err=True)


def _print_postmortem(incident: Any) -> None:
    from gitops.report.incidents import SECTIONS

    d = incident.as_dict()
    pm = d["postmortem"]
    click.echo(f"{d['id']}: post-mortem {'reviewed' if d['reviewed'] else 'not reviewed yet'}")
    for key, title in SECTIONS.items():
        value = pm[key]
        entries = value if isinstance(value, list) else ([value] if value else [])
        for e in entries:
            click.echo(f"  {title}: {freetext.shown_text(e['text'])} "
                       f"({freetext.shown(e['by'])}, {e['at'][:16]})")
    for a in pm["actions"]:
        click.echo(f"  action {a['id']} [{a['state']}] {freetext.shown_text(a['text'])} "
                   f"(team: {a['team'] or 'no owner yet'})")


@incidents.command(epilog=EXIT_CODES)
@click.argument("incident_id", metavar="ID")
@click.option("--summary", callback=_a_note,
              help="What happened, in a few sentences (replaces the last).")
@click.option("--impact", callback=_a_note,
              help="What users or other teams noticed (replaces the last).")
@click.option("--causes", callback=_a_note,
              help="One contributing cause: what, not who (added to the list).")
@click.option("--went-well", "went_well", callback=_a_note,
              help="One thing that went well (added to the list).")
@_writer_options
def annotate(incident_id: str, summary: str | None, impact: str | None, causes: str | None,
             went_well: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Write into incident ID's post-mortem (recorded with who and when)."""
    from gitops.report import incidents as incidents_

    s = _settings(state_dir=state_dir)
    sections = {k: v for k, v in (("summary", summary), ("impact", impact), ("causes", causes),
                                  ("went_well", went_well)) if v is not None}
    _recorded(s, as_json)
    with open_store(s) as store:
        found = incidents_.annotate(store, incident_id, sections, actor=control.who())
        _rewrite_report(s, store, found.id)
    if as_json:
        _emit(found.as_dict())
        return
    _print_postmortem(found)


@incidents.command(epilog=EXIT_CODES)
@click.argument("incident_id", metavar="ID")
@click.option("--add", "text", callback=_a_note,
              help="A new action item (with --team: the team that owns it).")
@click.option("--done", "done", type=click.IntRange(min=1), metavar="N",
              help="Mark action item N done.")
@click.option("--reopen", type=click.IntRange(min=1), metavar="N",
              help="Mark action item N open again.")
@click.option("--assign", type=click.IntRange(min=1), metavar="N",
              help="Give action item N the owning --team.")
@click.option("--team", callback=_one_line,
              help="The owning team (one of the settings' teams or a recorded owner).")
@_writer_options
def action(incident_id: str, text: str | None, done: int | None, reopen: int | None,
           assign: int | None, team: str | None, state_dir: Path | None,
           as_json: bool) -> None:
    """Add an action item to incident ID's post-mortem, or mark one done (--done N)."""
    from gitops.report import incidents as incidents_

    chosen = [name for name, v in (("--add", text), ("--done", done), ("--reopen", reopen),
                                   ("--assign", assign)) if v is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --add TEXT, --done N, --reopen N, --assign N")
    if assign is not None and team is None:
        raise UsageError("--assign N needs --team TEAM")
    s = _settings(state_dir=state_dir)
    who = control.who()
    _recorded(s, as_json)
    with open_store(s) as store:
        teams = incidents_.known_teams(store, s.teams)
        if text is not None:
            item = incidents_.add_action(store, incident_id, text, team, actor=who, teams=teams)
        else:
            number = done or reopen or assign
            assert number is not None
            item = incidents_.update_action(
                store, incident_id, number, actor=who, teams=teams, team=team,
                done=True if done else (False if reopen else None))
        found = incidents_.find(store, incident_id)
        _rewrite_report(s, store, found.id)
    if as_json:
        _emit({"action": item.as_dict(), "incident": found.as_dict()})
        return
    click.echo(f"action {item.id} [{item.state}] {freetext.shown_text(item.text)} "
               f"(team: {item.team or 'no owner yet'})")
    _print_postmortem(found)


@main.command(epilog=EXIT_CODES)
@_writer_options
@click.option("--days", type=_Finite(), help="The period (default: the digest settings').")
@click.option("--send", is_flag=True, help="Also send it to the digest's notifiers.")
def digest(state_dir: Path | None, as_json: bool, days: float | None, send: bool) -> None:
    """The digest: the four keys per team against the previous period, incidents opened and
    restored, post-mortems not reviewed, open action items by team."""
    from gitops.daemon import digest as digest_

    if days is not None:
        _max_days(days)
    s = _settings(state_dir=state_dir)
    store = _reader(s, None, as_json, empty={})
    if store is None:
        return
    with store:
        found = digest_.build(store, s, days=days)
    if send:
        deliveries = digest_.send(found, digest_.receivers(s))
        failed = [d for d in deliveries if not d.ok]
        for d in deliveries:
            click.echo(str(d), err=True)
        if failed:
            if as_json:
                _emit(found.as_json())
            sys.exit(1)
    if as_json:
        _emit(found.as_json())
        return
    click.echo(freetext.shown_text(found.text()))


MAX_DAYS = 36600
"""The longest window ``--days`` takes (a hundred years; the previous window is as long)."""


def _max_days(days: float) -> None:
    if days > MAX_DAYS:
        raise UsageError(f"--days: at most {MAX_DAYS} (a hundred years)")


def _trend_text(key: str, t: dict[str, Any]) -> str:
    from gitops.daemon.digest import figure

    if t["direction"] is None:
        return ("no figure to compare" if t["previous"] is None
                else f"none now, {figure(key, t['previous'])} before")
    if t["direction"] == "same":
        return "same as before"
    arrow = "up" if t["direction"] == "up" else "down"
    return (f"{arrow} from {figure(key, t['previous'])} "
            f"({'better' if t['better'] else 'worse'})")


def _compare(store: Store, s: Settings, by: str, days: float, as_json: bool) -> None:
    """``gitops metrics --by team|environment``: the groups side by side, with trends."""
    from gitops.daemon.digest import KEY_LABELS, figure
    from gitops.report.delivery import DORA_BANDS, compare
    from gitops.report.teams import environment_teams

    groups = compare(store, environment_teams(store, s.environments), by=by, days=days)
    if as_json:  # the shape of GET /api/delivery?by=...
        _emit({"by": by, "days": days, "groups": {n: g.as_dict() for n, g in groups.items()},
               "bands": DORA_BANDS})
        return
    if not groups:
        click.echo("no runs recorded yet")
    for name, g in groups.items():
        d = g.as_dict()
        envs = f" (environments: {', '.join(g.environments)})" if by == "team" else ""
        click.echo(f"{by} {name}{envs}: last {days:g} days, against the {days:g} before")
        for key, label in KEY_LABELS.items():
            extra = ""
            if key == "deployment_frequency_per_day":
                extra = f" ({d['deployments']})"
            elif key == "change_failure_rate" and d["rollouts"]:
                extra = f" ({d['failed_rollouts']} of {d['rollouts']})"
            click.echo(f"  {label:<26} {figure(key, d[key]) + extra:<16} "
                       f"{_trend_text(key, d['trends'][key])}")
    click.echo("what good looks like (DORA 2021 bands; a reference, not a verdict):")
    for key, label in KEY_LABELS.items():
        bands = "; ".join(f"{band}: {text}" for band, text in DORA_BANDS[key])
        click.echo(f"  {label}: {bands}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
