"""What every ``gitops`` command pays before it starts: ``import gitops.cli`` (and so
``gitops --help`` and ``gitops status``) loads no GitPython, psycopg, croniter or lab code;
those load with the commands that use them. ``bench/cli_start.py`` measures the CPU time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gitops.cli import main
from gitops.cli.root import Main

HEAVY = ("git", "psycopg", "croniter", "gitops.lab")
"""Top-level packages (and their submodules) a command that does not use them must not load."""

HELP = "from gitops.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
"""``gitops --help`` in a fresh interpreter."""


def _loaded(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The modules of ``heavy`` that a fresh interpreter has loaded after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    modules = json.loads(out.splitlines()[-1])
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)]


def test_import_of_the_cli_loads_no_git_psycopg_croniter_or_lab() -> None:
    assert _loaded("import gitops.cli") == []


def test_help_loads_neither_the_pipeline_nor_the_settings() -> None:
    """``gitops --help`` needs no loader, fan-out or pydantic-settings (a command that runs
    loads them)."""
    heavy = ("gitops.pipeline.reconcile", "gitops.pipeline.load", "pydantic_settings", "yaml")
    assert _loaded(HELP, heavy) == []


@pytest.mark.parametrize("args", [["--help"], ["status", "--state-dir", "{tmp}"]])
def test_help_and_status_load_none_of_them(args: list[str], tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = ("from gitops.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert not exc.code\n")
    assert _loaded(code) == []


def test_help_loads_no_command_module() -> None:
    """``gitops --help`` lists every command from ``Main.LAZY``: none of their modules loads."""
    modules = tuple(sorted({module for module, _ in Main.LAZY.values()}))
    assert _loaded(HELP, modules) == []


@pytest.mark.parametrize("name", sorted(Main.LAZY))
def test_every_command_loads_and_lists_as_its_own_help_says(name: str) -> None:
    """Each command loads on use; ``gitops --help`` lists it with its own short help at every
    width click may cut it to."""
    ctx = click.Context(main)
    command = main.get_command(ctx, name)
    assert command is not None and command.name == name
    stub = click.Command(name, help=Main.LAZY[name][1])
    for limit in range(10, 140):
        assert stub.get_short_help_str(limit) == command.get_short_help_str(limit)
    assert name in main.list_commands(ctx)


def test_lab_still_runs() -> None:
    from gitops.lab.cli import lab

    assert main.get_command(click.Context(main), "lab") is lab
    result = subprocess.run([sys.executable, "-m", "gitops", "lab", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "Disposable real Debian hosts" in result.stdout
    assert "status" in result.stdout


def test_a_mistyped_lab_is_still_suggested() -> None:
    result = subprocess.run([sys.executable, "-m", "gitops", "labb"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "No such command 'labb'. Did you mean 'lab'?" in result.stderr
