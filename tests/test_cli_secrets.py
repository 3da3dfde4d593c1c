"""What the command line says about its environment before it starts: a bad lab name from
``GITOPS_LAB_NAME`` and secret files others can read. Every command a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest
from clitools import gitops, sample_repo


def _settings(tmp_path: Path, extra: str = "") -> Path:
    repo = sample_repo(tmp_path)
    config = tmp_path / "gitops.toml"
    config.write_text(f'{extra}state_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:0"\n'
                      f'[[environments]]\nname = "lab"\nrepo = "{repo}"\n')
    return config


@pytest.mark.parametrize("command", [["run"], ["preview", "--branch", "feature"]])
def test_a_bad_lab_name_stops_with_one_line(tmp_path: Path, command: list[str]) -> None:
    """A ``GITOPS_LAB_NAME`` that is no lab name stops ``gitops run`` and ``gitops preview``
    (which name preview labs after it) with one line naming the variable, exit 2."""
    config = _settings(tmp_path)
    out = gitops("--config", str(config), *command, env={"GITOPS_LAB_NAME": "Bad!"},
                 timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: invalid lab name 'Bad!' (GITOPS_LAB_NAME): use 1 to 8 characters of [a-z0-9]"]


def test_a_secret_file_everyone_can_read_is_warned_of_once(tmp_path: Path) -> None:
    """A token file of mode 0644 is used, with one warning naming the file and its mode (as
    ssh says of a private key); mode 0600 gets none."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    config = _settings(tmp_path, f'api_token = {{file = "{token}"}}\n')
    out = gitops("--config", str(config), "suspend", "-e", "lab", "--reason", "x", timeout=60)
    warnings = [line for line in out.stderr.splitlines() if "secret file" in line]
    assert warnings == [f"warning: secret file {token} has mode 0644: everyone can reach it "
                        f"(chmod 600 {token})"], out.stderr
    assert "s3cret-token" not in out.stderr + out.stdout
    token.chmod(0o600)
    out = gitops("--config", str(config), "suspend", "-e", "lab", "--reason", "x", timeout=60)
    assert "secret file" not in out.stderr
