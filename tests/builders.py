"""Builders the test files share: Git state repositories (made from files or from this
project's sample), loopback ports nothing listens on, and the problems a load reports."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from gitops.errors import InvalidDeclaration
from gitops.pipeline.hostsource import HostSource
from gitops.pipeline.load import load

__all__ = ["PROJECT", "commit", "commit_file", "copy_sample", "dry_repo", "empty_repo",
           "free_port", "git", "git_repo", "init_repo", "load_problems", "record_verified_run",
           "sample_inventory"]

PROJECT = Path(__file__).resolve().parent.parent
"""This project's checkout: its sample state is ``inventories/`` and ``deploys/``."""


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    """``git -C repo ARGS``'s output, stripped; CalledProcessError when it fails."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
        timeout=60, input=stdin,
    ).stdout.strip()


def init_repo(repo: Path) -> Path:
    """``repo`` (made if missing) as a Git repository on ``main`` with no commit yet, the
    tester's identity in its configuration (so a test's own ``git commit`` needs none)."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "T")
    return repo


def commit(repo: Path, message: str = "one", *, allow_empty: bool = False) -> str:
    """Everything in ``repo``'s work tree committed (``git add -A``); the new commit's sha."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", *(["--allow-empty"] if allow_empty else []), "-m", message)
    return git(repo, "rev-parse", "HEAD")


def git_repo(repo: Path, files: Mapping[str, str] | None = None, message: str = "one") -> Path:
    """A state repository: ``repo`` holding what is already there and ``files`` (relative
    path: text), in one commit on ``main`` (an empty commit when there is nothing)."""
    for rel, text in (files or {}).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    init_repo(repo)
    commit(repo, message, allow_empty=True)
    return repo


def empty_repo(root: Path) -> tuple[Path, str]:
    """``root/repo`` with one empty commit on ``main``, and its sha: a source with no
    inventory (every run of it ends ``invalid`` without touching a host)."""
    repo = git_repo(root / "repo")
    return repo, git(repo, "rev-parse", "HEAD")


def commit_file(repo: Path, name: str, text: str) -> str:
    """``text`` written to ``repo/name`` and committed with ``name`` as the message; the new
    commit's sha."""
    (repo / name).write_text(text)
    return commit(repo, name)


def copy_sample(repo: Path, *folders: str) -> Path:
    """This project's sample folders (``deploys`` when none is named) copied into ``repo``,
    without byte-code caches."""
    for folder in folders or ("deploys",):
        shutil.copytree(PROJECT / folder, repo / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def dry_repo(root: Path) -> Path:
    """``root/repo``: the sample's deploys and a ``prod`` inventory of one host on a closed
    loopback port (a run plans, then fails to connect, fast), committed on ``main`` and
    checked out on a branch ``feature``."""
    repo = copy_sample(root / "repo")
    inventory = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    inventory["settings"] = {"ssh": {"user": "root", "port": free_port(), "connect_timeout": 2}}
    inventory["hosts"] = {"web-1": {"address": "127.0.0.1", "groups": ["web"]}}
    git_repo(repo, {"inventories/prod.yml": yaml.safe_dump(inventory, sort_keys=False)}, "s")
    git(repo, "checkout", "-q", "-b", "feature")
    return repo


def sample_inventory(hosts: list[str], message: str) -> str:
    """The sample's inventory (``inventories/lab.yml``) with ``hosts`` at 127.0.0.1, .2...
    on a closed port and the app's ``message``, as YAML: loads with the sample's deploys."""
    inventory = yaml.safe_load((PROJECT / "inventories/lab.yml").read_text())
    inventory["settings"] = {"ssh": {"user": "root", "port": free_port(), "connect_timeout": 2}}
    inventory["hosts"] = {name: {"address": f"127.0.0.{i}", "groups": ["web"]}
                         for i, name in enumerate(hosts, start=1)}
    inventory["groups"]["web"]["services"]["app"]["message"] = message
    return yaml.safe_dump(inventory, sort_keys=False)


def record_verified_run(state_dir: Path, sha: str, environment: str,
                        host: str = "h1") -> None:
    """A reconcile of ``sha`` that succeeded and verified on ``host``, recorded as a run
    records it: the run, the status (applied and verified) and the verified revision."""
    from gitops.record.store import ENVIRONMENT, Condition, Store
    from gitops.records import (
        ApplyReport,
        CheckResult,
        HostApply,
        Plan,
        Revision,
        VerifyReport,
    )

    revision = Revision(sha=sha, branch="main", author="T",
                        committed_at=dt.datetime.now(dt.UTC), message="one")
    with Store(state_dir) as store:
        run_id = store.start_run(environment, "reconcile", revision, actor="test")
        store.finish_run(run_id, "succeeded", plan=Plan(hosts=()),
                         apply=ApplyReport(hosts=(HostApply(host=host, status="ok"),)),
                         verify=VerifyReport(results=(
                             CheckResult(host=host, service="app", check="up", status="pass"),)))
        ready = [Condition("Ready", "True", "Ok", "")]
        store.set_status(environment, ENVIRONMENT, ready, applied=revision.ref,
                         attempted=revision.ref)
        store.set_status(environment, host, ready, applied=revision.ref,
                         attempted=revision.ref, verified=revision.ref)
        store.record_verified(environment, revision, run_id)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting to it is
    refused, and a server the test starts may take it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def load_problems(repo: Path, environment: str = "lab", *, located: bool = True,
                  lab: HostSource | None = None) -> list[str]:
    """The problems loading ``environment`` from ``repo`` reports (it must fail), as the user
    reads them; ``located``: each must name its file and line; ``lab``: the host source
    handed to the load for ``source: lab`` inventories."""
    with pytest.raises(InvalidDeclaration) as info:
        load(repo, environment, lab=lab)
    if located:
        assert all(p.file and p.line for p in info.value.problems), info.value
    return [str(p) for p in info.value.problems]


def daemon_app(controller: object, settings: object, state_dir: Path,
               **create: object) -> object:
    """The daemon's app as ``gitops run`` builds it: one gate (tokens, roles, sessions,
    audit) over the API, the metrics and read API, and the page, all over ``state_dir``."""
    from gitops.record.store import Database
    from gitops.web import metrics, page
    from gitops.web.access import Gate
    from gitops.web.server import create_app

    gate = Gate(settings, Database(state_dir))  # type: ignore[arg-type]
    rule = gate.rule("read")
    return create_app(controller, settings, gate=gate,  # type: ignore[arg-type]
                      extra_routes=[*metrics.routes(state_dir, rule),
                                    *page.routes(state_dir, rule, sessions=gate.sessions,
                                                 teams=getattr(settings, "teams", ()))],
                      **create)  # type: ignore[arg-type]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (mode 600), made now, in
    ``folder``: for the daemon's TLS and the HTTPS-only receivers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gitops test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file
