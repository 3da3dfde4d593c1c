"""Where a preview's code runs: worker processes without the daemon's user, files or secrets.

A pull request's ``model.py`` (imported when a revision loads), ``deploy.py`` (run by the
plan and the apply) and ``checks.py`` (run by the verify) are its author's code. A preview
(``gitops.daemon.preview``) never runs them in the daemon: ``open_sandbox`` makes a folder of its
own (mode 0700, owned by ``[preview] user``, by default ``nobody``) holding a copy of each
snapshot, an empty home and temporary folder, and a copy of the preview lab's SSH key, and
every worker of the preview (``gitops.workers.load_worker``, the apply and verify workers)
starts ``Confined``: as that user (when the daemon runs as root), with no supplementary group,
an environment of PATH, HOME, TMPDIR and LANG only (no token, no ``SSH_AUTH_SOCK``), in that
folder. A worker's answer is checked, never trusted: its hosts must be the ones it was
given, its files are the sandbox's copy.

Before it loads anything, the load worker tries to read the daemon's state folder, settings
file, every secret file the settings name and the labs' SSH keys (``private_paths``): if it can
read one, the preview is refused, saying which (a daemon not run as root cannot drop to
another user, so its previews are refused: its state folder is readable to its workers). The
preview decrypts SOPS values with ``[preview] sops`` only, never the environment's ``[sops]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gitops.errors import InvalidDeclaration, Problem, UsageError, WorkerError
from gitops.model import DeclaredState
from gitops.pipeline.hostsource import HostSource
from gitops.pipeline.worker import Confined, run_worker
from gitops.settings import SecretRef, Settings, settings_file

__all__ = ["Loaded", "Sandbox", "open_sandbox", "private_paths"]

LOAD_WORKER = "gitops.workers.load_worker"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Loaded:
    """A revision loaded in the sandbox, and what it asked of its stand-in hosts."""

    state: DeclaredState
    groups: dict[str, list[str]]
    packages: list[str]


def _secret_files(value: Any) -> Iterator[Path]:
    if isinstance(value, SecretRef):
        if value.file is not None:
            yield value.file
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_files(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_files(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_files(item)


def private_paths(settings: Settings, lab: HostSource | None) -> list[str]:
    """What a preview's code must not read: the state folder, the settings file, every
    secret file the settings name (tokens, webhook secrets, SOPS keys) and the labs' SSH
    keys (``lab.private_paths``)."""
    paths = [settings.state_dir, settings_file(), *_secret_files(settings),
             *(lab.private_paths() if lab is not None else [])]
    return list(dict.fromkeys(str(Path(p).resolve()) for p in paths if p is not None))


class Sandbox:
    """One preview's folder and worker settings (``open_sandbox``)."""

    def __init__(self, root: Path, settings: Settings, uid: int | None, gid: int | None,
                 lab: HostSource | None = None) -> None:
        self.root, self.uid, self.gid = root, uid, gid
        self.private = private_paths(settings, lab)
        self.lab = None if lab is None else f"{type(lab).__module__}:{type(lab).__qualname__}"
        """The host source of ``source: lab`` the load worker makes (by its class: a worker
        is another process), or None."""
        keys = settings.preview.sops
        self.keys = {name: ref.reveal() for name, ref in
                     (("age", keys.age_key if keys else None),
                      ("pgp", keys.pgp_key if keys else None)) if ref is not None}
        for folder in ("home", "tmp", "keys"):
            self._own(self._mkdir(root / folder))
        self.confined = Confined(
            env={"PATH": PATH, "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
                 "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"},
            cwd=str(root / "home"), user=uid, group=gid,
            python=str(settings.preview.python or sys.executable))

    @staticmethod
    def _mkdir(path: Path) -> Path:
        path.mkdir(mode=0o700)
        return path

    def _own(self, path: Path) -> None:
        if self.uid is not None:
            os.lchown(path, self.uid, self.gid if self.gid is not None else -1)

    def copy(self, source: Path, name: str) -> Path:
        """A copy of snapshot ``source`` the sandbox's user owns (symbolic links kept as
        links, never followed by the daemon)."""
        target = self.root / name
        shutil.copytree(source, target, symlinks=True)
        for folder, dirs, files in os.walk(target):
            self._own(Path(folder))
            for item in dirs + files:
                self._own(Path(folder) / item)
        return target

    def stand_ins(self, hosts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``hosts`` (a lab's addresses and SSH settings) with each SSH key a copy the
        sandbox's user can read."""
        copies: dict[str, str] = {}
        out: dict[str, dict[str, Any]] = {}
        for name, host in hosts.items():
            ssh = dict(host.get("ssh") or {})
            key = ssh.get("key_file")
            if isinstance(key, str):
                if key not in copies:
                    copy = self.root / "keys" / f"key{len(copies)}"
                    shutil.copyfile(key, copy)
                    copy.chmod(0o600)
                    self._own(copy)
                    copies[key] = str(copy)
                ssh["key_file"] = copies[key]
            out[name] = {**host, "ssh": ssh}
        return out

    def load(self, root: Path, inventory: str, *, revision: str,
             hosts: dict[str, dict[str, Any]] | None, timeout: float) -> Loaded:
        """Load the snapshot copy ``root`` in a worker: with ``hosts`` standing in (given by
        ``stand_ins``; ``{}``: validated only), or None for the inventory's own hosts.
        ``InvalidDeclaration`` as ``load`` raises it; ``UsageError`` when refused."""
        job = json.dumps({"root": str(root), "inventory": inventory, "revision": revision,
                          "keys": self.keys, "hosts": hosts, "private": self.private,
                          "lab": self.lab})
        out = run_worker(LOAD_WORKER, job, timeout=timeout, confined=self.confined)
        try:
            answer = json.loads(out)
            if "refused" in answer:
                raise UsageError(f"preview refused: {str(answer['refused'])[:300]} "
                                 "(see the security page: run the daemon as root, which "
                                 "drops to [preview] user, and keep that path private)")
            if "error" in answer:
                raise UsageError(str(answer["error"])[:500])
            if "problems" in answer:
                raise InvalidDeclaration([
                    Problem(str(p["file"]), p["line"] if isinstance(p["line"], int) else None,
                            str(p["field"]), str(p["message"])) for p in answer["problems"]],
                    revision)
            state = DeclaredState.model_validate_json(json.dumps(answer["state"]))
            groups = {str(h): [str(g) for g in gs]
                      for h, gs in dict(answer.get("groups") or {}).items()}
            packages = [str(p) for p in answer.get("packages") or []]
        except (ValueError, TypeError, KeyError, AttributeError, ValidationError):
            raise WorkerError("the preview's load worker gave an answer that is not one"
                              ) from None
        for host in state.hosts:  # its hosts are the ones it was given, nothing else
            given = (hosts or {}).get(host.name)
            if hosts is not None and (given is None or given.get("address") != host.address
                                      or given["ssh"].get("key_file") != host.ssh.key_file):
                raise WorkerError(f"the preview's load worker answered host {host.name!r} "
                                  "that it was not given")
        return Loaded(state.model_copy(update={"root": str(root)}), groups, packages)


def _user(settings: Settings) -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    name = settings.preview.user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"[preview] user {name!r} does not exist: create it (useradd "
                         f"--system --no-create-home {name}) or name another") from None
    if entry.pw_uid == 0:
        raise UsageError(f"[preview] user {name!r} is root: name an unprivileged user")
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def open_sandbox(settings: Settings, *, lab: HostSource | None) -> Iterator[Sandbox]:
    """A sandbox for one preview, removed with everything in it when the block ends.
    ``lab``: the host source of ``source: lab`` inventories (``gitops.pipeline.hostsource``),
    whose private files the preview's code must not read either."""
    uid, gid = _user(settings)
    root = Path(tempfile.mkdtemp(prefix="gitops-preview-"))
    try:
        box = Sandbox(root, settings, uid, gid, lab)
        os.chmod(root, 0o700)
        if uid is not None:
            os.chown(root, uid, gid if gid is not None else -1)
        yield box
    finally:
        shutil.rmtree(root, ignore_errors=True)
