"""The loader with ``settings.source: lab`` (the sample's ``inventories/lab.yml``) when the lab
cannot give the hosts: one problem that says what to run, the other mistakes still found."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from builders import copy_sample, load_problems

from gitops.lab.hostsource import LAB

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample's deploys and inventories, with no lab up (an empty lab folder)."""
    monkeypatch.setenv("GITOPS_LAB_DIR", str(tmp_path / "labs"))
    monkeypatch.setenv("GITOPS_LAB_NAME", "nolab")
    return copy_sample(tmp_path / "snapshot", "deploys", "inventories")


def test_a_lab_that_is_not_up_is_one_problem_naming_the_command(sample: Path) -> None:
    """No lab `nolab`: one problem at settings.source saying `gitops lab up --name nolab`."""
    assert load_problems(sample, located=False, lab=LAB) == [
        "inventories/lab.yml:7 settings.source: lab nolab is not up: "
        "run `gitops lab up --name nolab`"]


def test_settings_lab_names_the_lab_over_the_environment(sample: Path) -> None:
    """`settings.lab: other` is the lab asked for, whatever $GITOPS_LAB_NAME says."""
    path = sample / "inventories/lab.yml"
    inventory = yaml.safe_load(path.read_text())
    inventory["settings"]["lab"] = "other"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    (problem,) = load_problems(sample, located=False, lab=LAB)
    assert "lab other is not up: run `gitops lab up --name other`" in problem


def test_invalid_settings_do_not_blame_every_host_for_its_address(sample: Path) -> None:
    """A bad settings field with source: lab reports that field and the hosts' real mistakes,
    not a missing address per host."""
    path = sample / "inventories/lab.yml"
    inventory = yaml.safe_load(path.read_text())
    inventory["settings"]["colour"] = "blue"
    inventory["groups"]["web"]["services"]["web"]["listen_port"] = "eighty"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    problems = load_problems(sample, located=False, lab=LAB)
    assert len(problems) == 2, problems
    assert "settings.colour: Extra inputs are not permitted" in problems[0]
    assert "groups.web.services.web.listen_port: Input should be a valid integer" in problems[1]


def test_a_declared_package_name_must_be_a_debian_name(sample: Path) -> None:
    """`lab.packages` takes Debian package names only: an option-like name is refused."""
    path = sample / "inventories/lab.yml"
    inventory = yaml.safe_load(path.read_text())
    inventory["lab"] = {"packages": ["postgresql", "-o=APT::Get::x"]}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    problems = load_problems(sample, located=False, lab=LAB)
    assert any("lab.packages.1: String should match pattern" in p for p in problems), problems
