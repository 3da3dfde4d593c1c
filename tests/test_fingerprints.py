"""What a changed-only apply compares: per host and service, a keyed fingerprint of what
that service's apply reads (gitops.pipeline.load service digests +
gitops.pipeline.reconcile.fingerprints)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from mutations import explicit_hosts

from gitops.pipeline.load import load
from gitops.pipeline.reconcile import fingerprints

REPO = Path(__file__).resolve().parent.parent
KEY = b"k" * 32


def _copy(dest: Path) -> Path:
    shutil.copytree(REPO / "deploys", dest / "deploys")
    (dest / "inventories").mkdir()
    (dest / "inventories/lab.yml").write_text(
        explicit_hosts((REPO / "inventories/lab.yml").read_text()))
    return dest


def _prints(root: Path, key: bytes = KEY) -> dict[str, dict[str, str]]:
    return fingerprints(load(root, "lab"), key)


def _changed(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> set[tuple[str, str]]:
    return {(h, s) for h in a for s in a[h] if a[h][s] != b[h][s]}


def test_a_file_of_one_service_changes_only_that_service(tmp_path: Path) -> None:
    """Editing the web site's files makes web, and only web, differ on every host."""
    root = _copy(tmp_path)
    before = _prints(root)
    assert _prints(root) == before  # loading again changes nothing
    site = root / "deploys/web/files/site/index.html"
    site.write_text(site.read_text() + "<!-- edit -->\n")
    after = _prints(root)
    assert _changed(before, after) == {(h, "web") for h in before}


def test_parameters_of_one_host_change_only_that_host(tmp_path: Path) -> None:
    """A parameter set for one host changes that host's service, not the others'."""
    root = _copy(tmp_path)
    before = _prints(root)
    inv_file = root / "inventories/lab.yml"
    inv = yaml.safe_load(inv_file.read_text())
    host = next(iter(inv["hosts"]))
    inv["hosts"][host].setdefault("services", {})["app"] = {"message": "only here"}
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    assert _changed(before, _prints(root)) == {(host, "app")}


def test_a_file_outside_deploys_changes_every_service(tmp_path: Path) -> None:
    """A deploy may read any file outside deploys/: a new one makes everything differ."""
    root = _copy(tmp_path)
    before = _prints(root)
    (root / "shared.txt").write_text("read by any deploy\n")
    assert _changed(before, _prints(root)) == {(h, s) for h in before for s in before[h]}


def test_fingerprints_are_keyed(tmp_path: Path) -> None:
    """Parameters may hold secrets: without the state folder's key a digest says nothing."""
    root = _copy(tmp_path)
    one, other = _prints(root), _prints(root, b"o" * 32)
    assert _changed(one, other) == {(h, s) for h in one for s in one[h]}
