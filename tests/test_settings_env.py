"""``GITOPS_*`` variables set but empty (as shells and CI templates leave them) count as unset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops import settings as settings_
from gitops.cli.context import load_settings
from gitops.lab.common import DEFAULT_NAME, resolve_name

FIELDS = sorted(settings_.Settings.model_fields)
OTHER = ["GITOPS_CONFIG", "GITOPS_LAB_NAME"]
VARIABLES = [f"GITOPS_{name.upper()}" for name in FIELDS] + OTHER
CONFIG = """\
[[environments]]
name = "prod"
repo = "/srv/state.git"
branch = "release"
"""


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = {k: v for k, v in os.environ.items() if k.startswith("GITOPS_")}
    for key in before:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("GITOPS_")]:
            del os.environ[key]
        os.environ.update(before)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(empty=st.sets(st.sampled_from(VARIABLES)))
def test_empty_variables_read_as_unset(tmp_path: Path, empty: set[str]) -> None:
    """Any set of GITOPS_* variables set to "" gives the settings of none set at all."""
    config = tmp_path / "gitops.toml"
    config.write_text(CONFIG)
    base = {"GITOPS_CONFIG": str(config)}
    with _environment(base):
        expected = load_settings()
        lab = resolve_name(None)
    cwd = os.getcwd()
    with _environment({**base, **{k: "" for k in empty}}):
        if "GITOPS_CONFIG" in empty:
            os.chdir(tmp_path)  # the settings file found in the working folder instead
        try:
            got = load_settings()
            assert resolve_name(None) == lab == DEFAULT_NAME
        finally:
            os.chdir(cwd)
    assert got == expected
    assert (got.repo, got.branch) == ("/srv/state.git", "release")
