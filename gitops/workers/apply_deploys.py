"""Loading the deploy files in the apply worker: one service's ``deploy.py`` (or
``remove.py``) into pyinfra's State for its hosts, as the ``pyinfra`` CLI loads a file, with
a deploy's errors reported at the user's line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import gevent
from pyinfra import local as pyinfra_local
from pyinfra.api.command import FunctionCommand
from pyinfra.api.config import Config
from pyinfra.api.state import State
from pyinfra.context import ctx_config, ctx_host
from pyinfra_cli.exceptions import UnexpectedExternalError
from pyinfra_cli.util import exec_file

from gitops.model import DeclaredHost
from gitops.workers import factcheck
from gitops.workers.apply_guards import Guards

__all__ = ["deploy_error", "describe", "include", "load_service"]


def describe(exc: BaseException) -> str:
    """An exception as one line; some of pyinfra's (click-based) errors fail in ``str()``."""
    try:
        text = str(exc)
    except Exception:
        text = ", ".join(str(a) for a in getattr(exc, "args", ()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def deploy_error(exc: BaseException, root: Path) -> str:
    """An exception a deploy raised, at the user's line: ``deploys/web/deploy.py:12: NameError:
    name 'x' is not defined``, the deepest frame inside the repository (an included task file,
    not pyinfra's internals), paths relative to the repository, not to the snapshot."""
    while isinstance(exc, UnexpectedExternalError):  # pyinfra's wrapper, once per exec'd file
        exc = exc.exception
    prefix = f"{root}{os.sep}"
    where: tuple[str, int | None] | None = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = (exc.filename, exc.lineno)
        text = f"SyntaxError: {exc.msg}"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename.startswith(prefix):
                where = (frame.filename, frame.lineno)
        text = describe(exc)
    text = text.replace(prefix, "")
    if where is None or not where[0].startswith(prefix):
        return text
    return f"{where[0].removeprefix(prefix)}:{where[1]}: {text}"


def load_service(
    state: State,
    config: Config,
    index: int,
    root: Path,
    service: str,
    targets: list[DeclaredHost],
    by_name: dict[str, Any],
    guards: Guards | None = None,
    dry: bool = True,
    script: str = "deploy.py",
    watch: factcheck.Recorder | None = None,
) -> None:
    """Load ``deploys/<service>/<script>`` (``deploy.py``, or ``remove.py`` for a removal)
    for each target host, as the CLI loads a file.

    Relative paths in the deploy (``local.include("tasks/web.py")``,
    ``files.template(src="templates/site.j2")``) resolve against the service's folder, as
    the ``pyinfra`` CLI run in that folder resolves them, also when an apply executes them.
    """
    folder = str(root / "deploys" / service)
    filename = str(Path(folder) / script)
    config.lock_current_state()
    state.current_op_file_number = index
    state.current_deploy_filename = filename
    state.cwd = folder
    known = {h.name: set(state.ops[by_name[h.name]]) for h in targets}
    calls: dict[str, str] = {}
    record = state.set_op_data_for_host

    def recording(host: Any, op_hash: str, op_data: Any) -> None:
        calls.setdefault(op_hash, _call_site(root))
        if guards is not None:
            guards.note(host.name, op_hash, service)
        record(host, op_hash, op_data)

    state.set_op_data_for_host = recording  # type: ignore[method-assign]

    def load(declared: DeclaredHost) -> BaseException | None:
        host = by_name[declared.name]
        try:
            with (
                ctx_config.use(state.config.copy()),
                ctx_host.use(host),
                host.deploy(service, None, dict(declared.services[service])),
                watch.deploying_on(declared.name) if watch else contextlib.nullcontext(),
            ):
                exec_file(filename)
        except BaseException as exc:  # reported per host below
            return exc
        return None

    greenlets = {state.pool.spawn(load, h): h for h in targets}
    failed = set()
    for greenlet in gevent.iwait(list(greenlets)):
        exc = greenlet.get()
        if exc is not None:
            host = by_name[greenlets[greenlet].name]
            host.log(deploy_error(exc, root), logging.getLogger("pyinfra").error)
            failed.add(host)
    config.reset_locked_state()
    del state.set_op_data_for_host
    for declared in targets:
        for op_hash, data in state.ops[by_name[declared.name]].items():
            if op_hash not in known[declared.name]:
                data.command_generator = _in_folder(state, folder, data.command_generator,
                                                     root, calls.get(op_hash, ""))
                if watch is not None:
                    data.command_generator = watch.body(declared.name, data.command_generator)
                if guards is not None and not dry:
                    data.command_generator = guards.wrap(declared.name, op_hash,
                                                         data.command_generator)
    if failed:
        state.fail_hosts(failed)


def _call_site(root: Path) -> str:
    """``deploys/<svc>/FILE:LINE`` of the innermost repository frame calling an operation."""
    prefix = f"{root}{os.sep}"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(prefix):
            return f"{frame.f_code.co_filename.removeprefix(prefix)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _in_folder(state: State, folder: str, generator: Any, root: Path, call: str) -> Any:
    """``generator`` run with ``state.cwd`` at ``folder``: an apply runs an operation's body
    (where pyinfra joins relative paths with ``state.cwd``) only when it executes it. An
    exception there (a template that is not in the repository) fails that operation on that
    host, reported at the user's line, instead of ending the whole apply."""

    def in_folder() -> Any:
        state.cwd = folder
        try:
            yield from generator()
        except Exception as exc:
            error = deploy_error(exc, root)
            if call and not error.startswith("deploys/"):
                error = f"{call}: {error}"
            yield FunctionCommand(_fail_operation, (error,), {})

    return in_folder


def _fail_operation(state: State, host: Any, message: str) -> bool:
    host.log(message, logging.getLogger("pyinfra").error)
    return False


_pyinfra_include = pyinfra_local.include


def include(filename: str, data: dict[str, Any] | None = None) -> None:
    """``local.include`` that hands the service's parameters on to the included file.

    The parameters are the service's pyinfra deploy data, and pyinfra's own ``include``
    replaces the deploy data with ``data`` (none by default): a task file would lose
    ``host.data.port``. Given ``data`` is merged over them.
    """
    current = ctx_host.get().current_deploy_data or {}
    _pyinfra_include(filename, {**current, **(data or {})})
