"""The checks of the verify worker: each service's ``checks.py`` loaded with pytest's assertion
rewriting, a check called with the arguments it asks for, and what happened as a
``CheckResult`` whose message says where and why."""

from __future__ import annotations

import ast
import copy
import inspect
import re
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _pytest.assertion import rewrite, util
from testinfra.backend.base import CommandResult

from gitops.model import DeclaredState
from gitops.records import CheckResult, CheckStatus

__all__ = ["CHECKS_FILE", "MAX_MESSAGE", "CheckFunction", "CheckSignatureError", "Suite",
           "bind_arguments", "compile_checks", "describe", "install_assertion_explanations",
           "load_suite", "load_suites", "run_check"]

CHECKS_FILE = "checks.py"
MAX_MESSAGE = 4000
"""Longest message kept per check; pytest-style explanations of big outputs get cut here."""

CheckFunction = Callable[..., object]


class CheckSignatureError(Exception):
    """A check asks for an argument the verify stage does not provide."""


@dataclass(frozen=True)
class Suite:
    """The checks of one service: its ``test_*`` functions, or why the file did not load."""

    service: str
    path: Path
    checks: tuple[tuple[str, CheckFunction], ...] = ()
    error: str | None = None


# --- assertion rewriting ------------------------------------------------------------------


class _QuietConfig:
    """The two things ``assertrepr_compare`` asks of pytest's Config, at default verbosity."""

    def get_verbosity(self, verbosity_type: str | None = None) -> int:
        return 0

    def get_terminal_writer(self) -> _QuietConfig:
        return self

    @staticmethod
    def _highlight(source: str, lexer: str = "python") -> str:
        return source


def _reprcompare(op: str, left: object, right: object) -> str | None:
    """pytest's detailed comparison explanations (string diffs, differing items, ...)."""
    compare: Any = util.assertrepr_compare
    try:
        if "config" in inspect.signature(compare).parameters:  # pytest < 9.2
            lines = compare(_QuietConfig(), op, left, right)
        else:  # pytest >= 9.2: keyword settings, lazy lines
            lines = list(compare(op, left, right, verbose=0,
                                 highlighter=_QuietConfig._highlight,
                                 assertion_text_diff_style="ndiff"))
    except Exception:  # an internal pytest API: without it the plain rewritten message stays
        return None
    if not lines:
        return None
    lines = [line.replace("\n", "\\n") for line in lines]
    return "\n~".join(lines).replace("%", "%%")


_OUTPUT_SHOWN = 300
"""Characters of a command's stdout and of its stderr (the last ones) a check message shows."""


def _tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_SHOWN else "..." + text[-_OUTPUT_SHOWN:]


def _command_repr(result: CommandResult) -> str:
    """A command's result as a check message shows it (``host.run(...).rc == 0`` failing,
    ``run_expect``, ``check_output``): the command, its exit code, the end of its output;
    not the dataclass's ``CommandResult(backend=<...ShellBackend object at 0x...>, ...)``."""
    try:
        command = result.command.decode(errors="replace") if isinstance(
            result.command, bytes) else str(result.command)
        out, err = result.stdout, result.stderr
    except Exception:  # undecodable output: the codes still say what ran
        return f"`{result.command!r}` (exit {result.exit_status})"
    return (f"`{command}` (exit {result.exit_status}, stdout: {_tail(out)!r}, "
            f"stderr: {_tail(err)!r})")


def install_assertion_explanations() -> None:
    """Make rewritten asserts explain comparisons as pytest does, and show a command's result
    as its command, exit code and output (process-wide)."""
    util._reprcompare = _reprcompare
    CommandResult.__repr__ = _command_repr


def compile_checks(source: bytes, path: str) -> types.CodeType:
    """Compile a checks file with pytest's assertion rewriting applied."""
    tree = ast.parse(source, filename=path)
    rewrite.rewrite_asserts(tree, source, path)
    return compile(tree, path, "exec", dont_inherit=True)


def load_suite(service: str, path: Path, index: int) -> Suite:
    """Import ``path`` as a fresh module and collect its ``test_*`` functions in order."""
    name = f"gitops_checks_{index}_{re.sub(r'[^0-9A-Za-z_]', '_', service)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        code = compile_checks(path.read_bytes(), str(path))
        exec(code, module.__dict__)
    except Exception as exc:
        return Suite(service, path, error=f"cannot load {path}: {describe(exc, path)}")
    checks = tuple(
        (attr, value)
        for attr, value in vars(module).items()
        if attr.startswith("test_") and inspect.isfunction(value)
    )
    return Suite(service, path, checks)


def load_suites(state: DeclaredState) -> dict[str, Suite]:
    """The suites of every service some host runs that has a ``checks.py``."""
    services = list(state.service_order)
    services += sorted({s for h in state.hosts for s in h.services} - set(services))
    suites = {}
    for index, service in enumerate(services):
        path = Path(state.root) / "deploys" / service / CHECKS_FILE
        if path.is_file():
            suites[service] = load_suite(service, path, index)
    return suites


def bind_arguments(func: CheckFunction, available: Mapping[str, object]) -> dict[str, object]:
    """The keyword arguments to call ``func`` with, taken by parameter name from ``available``.

    Raises CheckSignatureError naming a parameter without a default that is not available.
    """
    kwargs = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in available and param.kind != param.POSITIONAL_ONLY:
            kwargs[param.name] = available[param.name]
        elif param.default is param.empty:
            known = ", ".join(available)
            raise CheckSignatureError(
                f"unknown argument {param.name!r} (a check may take: {known})"
            )
    return kwargs


# --- running checks -----------------------------------------------------------------------


def _location(exc: BaseException, path: Path) -> str:
    """``deploys/<service>/checks.py:LINE`` of the deepest frame in that file, or ``""``."""
    shown = "/".join(path.parts[-3:])
    if isinstance(exc, SyntaxError) and exc.filename == str(path) and exc.lineno:
        return f"{shown}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f"{shown}:{frames[-1].lineno}" if frames else ""


def describe(exc: BaseException, path: Path | None = None) -> str:
    """One message for an exception: its text, SSH failures made readable, and where."""
    if isinstance(exc, AssertionError):
        text = str(exc) or "assertion failed"
    elif isinstance(exc, RuntimeError) and exc.args and isinstance(exc.args[0], CommandResult):
        result = exc.args[0]
        text = f"ssh failed (exit {result.rc}): {result.stderr.strip() or 'no message'}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    where = _location(exc, path) if path else ""
    message = f"{text}\n(at {where})" if where else text
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 20] + "\n... (truncated)"
    return message


def run_check(
    host_name: str, suite: Suite, name: str, func: CheckFunction, available: Mapping[str, object]
) -> CheckResult:
    """Call one check and turn what happened into a CheckResult (never raises)."""
    start = time.monotonic()
    status: CheckStatus
    try:
        kwargs = bind_arguments(func, available)
        if "params" in kwargs:
            kwargs["params"] = copy.deepcopy(kwargs["params"])
        func(**kwargs)
    except AssertionError as exc:
        status, message = "fail", describe(exc, suite.path)
    except Exception as exc:
        status, message = "error", describe(exc, suite.path)
    else:
        status, message = "pass", ""
    return CheckResult(
        host=host_name,
        service=suite.service,
        check=name,
        status=status,
        message=message,
        duration_s=round(time.monotonic() - start, 4),
    )
