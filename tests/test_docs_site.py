"""The manual is a site (``mkdocs.yml``, ``docs/``): it builds with ``mkdocs build --strict``
(a broken link, a missing anchor or a page left out of the navigation fails it); its CLI
reference is generated from ``gitops.cli.main`` and its settings and inventory reference from
the pydantic models, so neither can drift; and the README stays a front page of at most 150
lines that points into it."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gitops.cli import main
from gitops.model import InventoryFile, ServiceMeta
from gitops.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README_LINES = 150


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with --strict into a temporary folder."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: install the project's docs extra")
        pytest.skip("mkdocs is not installed (the project's docs extra; ./test.sh installs it)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _text(page: Path) -> str:
    """A built page's text, tags removed."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_site_builds_strictly_with_every_section(site: Path) -> None:
    """--strict passes, and each section of the manual has its pages."""
    for page in ("get-started/demo", "get-started/first-service", "write-state/inventories",
                 "write-state/secrets", "operate/daemon", "operate/previews", "security",
                 "scale/postgresql", "scale/fanout", "observe/metrics", "observe/incidents",
                 "develop/architecture", "develop/benchmarks"):
        assert (site / page / "index.html").is_file(), page


def test_the_cli_reference_is_generated_from_the_commands(site: Path) -> None:
    """Every subcommand of ``gitops``, lazily loaded ones too, and their options."""
    text = _text(site / "reference" / "cli" / "index.html")
    ctx = click.Context(main, info_name="gitops")
    names = main.list_commands(ctx)
    assert "reconcile" in names and "lab" in names
    for name in names:
        assert f"gitops {name}" in text, name
    assert "--changed-only" in text
    assert "--lease-timeout" in text
    assert "Sentinel" not in text
    assert "inventories/<NAME>.yml" in text  # a placeholder of the help, shown as written


def test_the_settings_reference_is_generated_from_the_models(site: Path) -> None:
    """Each field of ``Settings`` and of the models nested in it, with its description."""
    text = _text(site / "reference" / "settings" / "index.html")
    for name in Settings.model_fields:
        assert name in text, name
    assert "api_token" in text
    assert "Bearer token for the operator API" in text
    for nested in ("EnvironmentConfig", "PreviewSettings", "FanoutSettings", "SecretRef"):
        assert nested in text, nested
    assert "lease_ttl" in text and "start_timeout" in text


def test_the_inventory_reference_is_generated_from_the_models(site: Path) -> None:
    """Each field of an inventory, of ``service.yml`` and of the models nested in them."""
    text = _text(site / "reference" / "inventory" / "index.html")
    for model in (InventoryFile, ServiceMeta):
        for name in model.model_fields:
            assert name in text, f"{model.__name__}.{name}"
    for field in ("fail_percent", "confirm_timeout", "host_key_checking", "require_checks"):
        assert field in text, field


def test_the_readme_is_a_front_page() -> None:
    """At most 150 lines; its links into docs/ name pages that exist."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_LINES
    links = re.findall(r"\]\((docs/[^)#]*)", text)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link
