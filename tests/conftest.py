"""Shared pytest fixtures: ``lab``, a session-wide lab of 3 real hosts for ``@pytest.mark.lab``;
``pg_server``, a throwaway PostgreSQL cluster, and ``store_backend``, each store test run on
SQLite and on PostgreSQL.

Lab tests are skipped (with the reason) when not root or the lab's tools are missing, unless
the environment variable CI is set: then they fail, so CI cannot pass without running them.
A session fails at its end when a lab it made is down but left files in the lab folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest
from pgserver import PgServer

import gitops.lab as lab_api
from gitops.lab import leftovers
from gitops.lab import sudo as lab_sudo
from gitops.lab.common import lab_parent, missing_prerequisites, prerequisites_message
from gitops.record.store import Database
from gitops.settings import SecretRef

LAB_HOSTS = 3


def in_ci() -> bool:
    """Whether the CI environment variable is set (to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _lab_unavailable() -> str | None:
    missing = missing_prerequisites()
    return prerequisites_message(missing) if missing else None


_LABS_AT_START: set[str] = set()


def _session_labs() -> list[str]:
    """Labs in the lab folder whose names derive from the session lab's (the side, preview
    and benchmark labs the tests make), down (or a preview's) and held by no process."""
    prefix = lab_api.resolve_name(None)[:5]
    return [e.name for e in leftovers.labs() if e.name.startswith(prefix) and e.prunable]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note the labs left before the session: only those it makes must be gone at its end."""
    if _lab_unavailable() is None:
        _LABS_AT_START.update(_session_labs())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start booting the Vagrant VM when a collected test uses it (``vagrantboot``) and it
    can boot here (root): the minutes of box build and emulated boot pass beside the
    other tests instead of before the VM's."""
    if os.geteuid() == 0 and any("vm" in getattr(item, "fixturenames", ())
                                 and item.path.name == "test_vagrant.py"
                                 for item in session.items):
        import vagrantboot

        vagrantboot.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a lab it made is down but left a folder or lock file behind;
    destroy the Vagrant VM booted for tests that did not run (``-x``, deselected)."""
    import vagrantboot

    vagrantboot.stop()
    if _lab_unavailable() is not None or not session.items:
        return
    if all(item.path.name == "test_vagrant.py" for item in session.items):
        return  # test.sh's side process: the labs are the other process's to check
    left = [name for name in _session_labs() if name not in _LABS_AT_START]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        line = (f"labs the tests made are down but left files in {lab_parent()}: "
                f"{', '.join(left)} (`gitops lab list`; `gitops lab prune` removes them)")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(f"FAILED {line}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``lab`` test is skipped (or, under CI, failed) when the lab cannot run here."""
    if item.get_closest_marker("lab") is None:
        return
    reason = _lab_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"lab test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _config_stays_with_its_test() -> Iterator[None]:
    """``--config`` sets ``GITOPS_CONFIG`` in the process for the workers it starts; run in
    process (click's test runner) that must not leak into the tests after it."""
    before = os.environ.get("GITOPS_CONFIG")
    yield
    if before is None:
        os.environ.pop("GITOPS_CONFIG", None)
    else:
        os.environ["GITOPS_CONFIG"] = before


@pytest.fixture(scope="session")
def lab() -> Iterator[lab_api.LabInfo]:
    """A lab of 3 hosts (name from $GITOPS_LAB_NAME, default gitops), down at session end.

    A lab of that name already up with >= 3 hosts is reused and left up. Every host also
    lets ``gitops.lab.sudo.USER`` in with password-less sudo: a test's inventory logs in
    as root on some hosts and as that user with ``_sudo: true`` on others
    (``statelab.make_state_repo(sudo_hosts=...)``).
    """
    reason = _lab_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"lab fixture cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    existing = lab_api.current()
    if existing is not None and len(existing.hosts) >= LAB_HOSTS:
        dead = [h.name for h in lab_api.status(existing.name) if not h.ssh]
        if dead:
            pytest.fail(
                f"lab {existing.name} is up but {', '.join(dead)} do not answer SSH; "
                f"run `gitops lab down --name {existing.name}`",
                pytrace=False,
            )
        _sudo_user(existing)
        yield existing
        return
    try:
        info = lab_api.up(hosts=LAB_HOSTS)
    except lab_api.LabError as exc:
        pytest.fail(f"gitops lab up failed: {exc}", pytrace=False)
    try:
        _sudo_user(info)
        yield info
    finally:
        lab_api.down(info.name)


def _sudo_user(info: lab_api.LabInfo) -> None:
    try:
        lab_sudo.add_user(info)
    except lab_api.LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL cluster for the session; skipped (failed under CI) without one."""
    reason = pgserver.unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """Where a test's record is: SQLite in a new state folder, or a new PostgreSQL database
    of the session's cluster (its password in a file named by a ``SecretRef``)."""
    state = tmp_path / "state"
    if request.param == "sqlite":
        return Database(state)
    server: PgServer = request.getfixturevalue("pg_server")
    secret = tmp_path / "db-password"
    secret.write_text(server.password + "\n")
    return Database(state, server.database(), SecretRef(file=secret))


@pytest.fixture(scope="session", autouse=True)
def _sandbox_python() -> Iterator[None]:
    """A preview's workers run as ``nobody`` (``gitops.pipeline.sandbox``), which must be able to
    run
    the interpreter: one under root's home (pyenv) it cannot, so the tests name, as
    ``[preview] python`` (``GITOPS_PREVIEW``), a venv of the system's Python of the same
    version that reads this project and its packages (no file of root's home)."""
    system = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    if os.geteuid() != 0 or "GITOPS_PREVIEW" in os.environ or not system.exists() or \
            _runs_as_nobody(sys.executable):
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="gitops-test-sandbox-py-"))
    try:
        folder.chmod(0o755)
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(folder / "py")],
                       check=True, timeout=60)
        [site] = (folder / "py/lib").glob("python3*/site-packages")
        project = Path(__file__).resolve().parent.parent
        (site / "gitops-tests.pth").write_text(
            "\n".join([*(p for p in sys.path if p.endswith("site-packages")), str(project)]))
        os.environ["GITOPS_PREVIEW"] = json.dumps({"python": str(folder / "py/bin/python")})
        yield
    finally:
        os.environ.pop("GITOPS_PREVIEW", None)
        shutil.rmtree(folder, ignore_errors=True)


def _runs_as_nobody(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import gitops"], user="nobody", cwd="/",
                              capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False
