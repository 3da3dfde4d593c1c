"""A pull request's code in a preview runs in the sandbox (``gitops.pipeline.sandbox``): as
``nobody``,
with no token, settings, state, SOPS key or environment variable of the daemon, and never
the environment's decrypted secrets; its head must be signed when the environment says so.

Tested with a payload a fork would send: a ``model.py`` that tries to write outside, read the
settings, the API token, the state database and the environment's key, and reports what it
could in a folder anyone may write to (the sink)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import dry_repo, git
from pyrage import x25519
from test_sops import _write

from gitops.daemon.preview import PreviewRequest, marker, render_comment, run_preview
from gitops.pipeline import sops
from gitops.record.store import Database
from gitops.settings import EnvironmentConfig, SecretRef, Settings, SigningPolicy, SopsSettings

TOKEN = "api-token-3c9e-never-leaks"
SECRET = "db-password-71af-never-leaks"
COMMIT = ["-c", "user.name=M", "-c", "user.email=m@example.invalid"]

PAYLOAD = '''
import json as _json, os as _os

def _try(fn):
    try:
        return fn()
    except Exception as exc:
        return "denied: " + type(exc).__name__

def _read(path):
    with open(path, "rb") as fh:
        return fh.read().decode(errors="replace")

def _write(path):
    with open(path, "w") as fh:
        fh.write("pwned")
    return "written"

_found = {{"uid": _os.getuid(), "environ": dict(_os.environ),
          "token": _try(lambda: _read({token!r})), "settings": _try(lambda: _read({config!r})),
          "db": _try(lambda: _read({db!r})), "key": _try(lambda: _read({key!r})),
          "state": _try(lambda: _os.listdir({state!r})),
          "outside": _try(lambda: _write({outside!r})),
          "in_state": _try(lambda: _write({in_state!r}))}}
with open({sink!r}, "w") as _fh:
    _json.dump(_found, _fh)
'''


@pytest.fixture
def sink() -> Iterator[Path]:
    """A folder the payload (as ``nobody``) can write its findings to."""
    folder = Path(tempfile.mkdtemp(prefix="gitops-test-sink-"))
    folder.chmod(0o777)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, Path]]:
    """The daemon's private things: an API token file, a settings file, a state database and
    the environment's SOPS key, each as the daemon keeps them (0600, the state folder 0700)."""
    identity = x25519.Identity.generate()
    paths = {"token": tmp_path / "api-token", "key": tmp_path / "age.key",
             "config": tmp_path / "gitops.toml", "state": tmp_path / "state"}
    paths["token"].write_text(TOKEN)
    paths["key"].write_text(f"{identity}\n")
    paths["config"].write_text(f'api_token = {{file = "{paths["token"]}"}}\n')
    for name in ("token", "key", "config"):
        paths[name].chmod(0o600)
    monkeypatch.setenv("GITOPS_CONFIG", str(paths["config"]))
    monkeypatch.setenv("GITOPS_API_TOKEN", TOKEN)  # also in the daemon's environment
    repo = dry_repo(tmp_path)
    paths["repo"], paths["recipient"] = repo, Path(str(identity.to_public()))
    settings = Settings(state_dir=paths["state"], api_token=SecretRef(file=paths["token"]),
                        sops=SopsSettings(age_key=SecretRef(file=paths["key"])),
                        environments=[EnvironmentConfig(name="prod", repo=str(repo))])
    with Database(settings.state_dir).open():
        pass
    paths["db"] = paths["state"] / "gitops.db"
    assert paths["db"].is_file() and paths["state"].stat().st_mode & 0o777 == 0o700
    return settings, paths


def _fork_commit(repo: Path, sink: Path, paths: dict[str, Path]) -> str:
    """The environment's secret on main (a SOPS file of the app's), then a fork's commit
    whose ``model.py`` carries the payload, published as GitHub does: ``refs/pull/7/head``."""
    git(repo, "checkout", "-q", "main")
    secret = repo / "deploys/app/files/db.sops.env"
    _write(secret, sops.encrypt({"PASSWORD": SECRET}, [str(paths["recipient"])]), "dotenv")
    git(repo, *COMMIT, "add", "-A")
    git(repo, *COMMIT, "commit", "-qm", "the app's database password")
    git(repo, "checkout", "-q", "-B", "feature")
    model = repo / "deploys/app/model.py"
    model.write_text(model.read_text() + PAYLOAD.format(
        token=str(paths["token"]), config=str(paths["config"]), db=str(paths["db"]),
        key=str(paths["key"]), state=str(paths["state"]),
        outside=str(paths["state"].parent / "written-by-model"),
        in_state=str(paths["state"] / "written-by-model"), sink=str(sink / "model.json")))
    git(repo, *COMMIT, "commit", "-qam", "a harmless change")
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", sha)
    git(repo, "checkout", "-q", "main")
    return sha


def test_fork_model_py_cannot_reach_the_daemon_nor_the_environments_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: Path) -> None:
    """A fork's ``model.py`` runs (the preview loads it) but as ``nobody`` with a scrubbed
    environment: it cannot read the API token, the settings, the state database, the state
    folder or the environment's SOPS key, nor write beside or into the state folder; the
    preview opens no SOPS file with the environment's key, and no secret reaches the report
    or the comment."""
    settings, paths = _daemon(tmp_path, monkeypatch)
    sha = _fork_commit(paths["repo"], sink, paths)
    request = PreviewRequest(environment="prod", inventory="prod", repo=str(paths["repo"]),
                             branch="feature", base="main", head_sha=sha, provider="github",
                             number=7)
    report = run_preview(request, settings, lab_name=None)
    found = json.loads((sink / "model.json").read_text())  # the payload did run
    assert found["uid"] != 0 and found["uid"] != os.getuid()
    for what in ("token", "settings", "db", "key", "state", "outside", "in_state"):
        assert str(found[what]).startswith("denied: PermissionError"), (what, found[what])
    assert not (paths["state"] / "written-by-model").exists()
    assert not (tmp_path / "written-by-model").exists()
    assert not [k for k in found["environ"] if k.startswith(("GITOPS_API", "SSH_AUTH"))]
    assert found["environ"]["HOME"] != os.environ.get("HOME")
    # the environment's secret is not opened for the preview: one line says which file
    assert report.result == "failure", report.summary
    assert any("deploys/app/files/db.sops.env" in p for p in report.problems), report.problems
    shown = render_comment(report, mark=marker("prod")) + report.model_dump_json()
    leaked = (sink / "model.json").read_text()
    for secret in (TOKEN, SECRET):
        assert secret not in shown and secret not in leaked


def test_preview_refused_when_its_worker_could_read_a_private_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: Path) -> None:
    """A token file anyone may read is one a preview's code could read: the preview is
    refused before the revision is loaded, saying which file."""
    settings, paths = _daemon(tmp_path, monkeypatch)
    paths["token"] = sink / "api-token"
    paths["token"].write_text(TOKEN)
    paths["token"].chmod(0o644)
    settings = settings.model_copy(update={"api_token": SecretRef(file=paths["token"])})
    request = PreviewRequest(environment="prod", inventory="prod", repo=str(paths["repo"]),
                             branch="feature", base="main")
    report = run_preview(request, settings, lab_name=None)
    assert report.result == "error"
    assert report.summary.startswith(
        f"preview refused: the preview's worker can read {paths['token']}")


def test_unsigned_head_is_not_previewed_when_commits_must_be_signed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: Path) -> None:
    """With ``verify_commits`` set, an unsigned head is refused before any of its code runs:
    the payload in its ``model.py`` never ran."""
    settings, paths = _daemon(tmp_path, monkeypatch)
    sha = _fork_commit(paths["repo"], sink, paths)
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    request = PreviewRequest(environment="prod", inventory="prod", repo=str(paths["repo"]),
                             branch="feature", base="main", head_sha=sha, provider="github",
                             number=7, signing=SigningPolicy(ssh_allowed_signers=signers))
    report = run_preview(request, settings, lab_name=None)
    assert report.result == "error"
    assert "not signed" in report.summary, report.summary
    assert not (sink / "model.json").exists()
