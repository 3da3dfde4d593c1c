"""The load worker: one revision's snapshot -> its ``DeclaredState``, in a process of its own.

Runs as ``python -m gitops.workers.load_worker``, started by ``gitops.pipeline.sandbox`` for
previews:
loading imports each service's ``model.py``, which is a pull request's code there, so it runs
as the sandbox's user, never in the daemon. Reads a job (JSON) on stdin: the snapshot, the
inventory, the revision, the preview's own SOPS keys, the stand-in hosts (None: the
inventory's own), the paths it must not be able to read and the class of the host source
of ``source: lab`` (``gitops.pipeline.hostsource``, made here: a worker is another process);
writes one JSON answer on stdout: ``{"state"}`` or ``{"problems"}`` or ``{"error"}`` or
``{"refused"}``, with the ``groups`` and ``packages`` the stand-ins were asked for. The
answer is untrusted: the caller checks it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from gitops.pipeline.worker import die_with_parent

__all__ = ["main", "readable"]

AGE_ENV, PGP_ENV = "GITOPS_PREVIEW_AGE_KEY", "GITOPS_PREVIEW_PGP_KEY"


def readable(paths: list[str]) -> str | None:
    """The first of ``paths`` this process can read (a folder listed, a file opened)."""
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb"):
                    pass
        except OSError:
            continue
        return path
    return None


def _answer(job: dict[str, Any]) -> dict[str, Any]:
    from gitops.errors import GitopsError, InvalidDeclaration
    from gitops.pipeline.load import load
    from gitops.settings import SecretRef, SopsSettings

    found = readable(job["private"])
    if found is not None:
        return {"refused": f"the preview's worker can read {found}"}
    keys = None
    if job["keys"]:
        for name, value in (("age", AGE_ENV), ("pgp", PGP_ENV)):
            if job["keys"].get(name):
                os.environ[value] = job["keys"][name]
        keys = SopsSettings(
            age_key=SecretRef(env=AGE_ENV) if job["keys"].get("age") else None,
            pgp_key=SecretRef(env=PGP_ENV) if job["keys"].get("pgp") else None)
    asked: dict[str, Any] = {}
    stand_ins = job["hosts"]
    lab = None
    if job.get("lab"):  # the host source of ``source: lab``, named by its class
        module, _, name = str(job["lab"]).partition(":")
        lab = getattr(importlib.import_module(module), name)()

    def hosts_from(groups: dict[str, list[str]], packages: list[str]) -> dict[str, Any]:
        asked.update(groups=groups, packages=packages)
        return {n: h for n, h in stand_ins.items() if n in groups}

    try:
        state = load(Path(job["root"]), job["inventory"], revision=job["revision"], keys=keys,
                     hosts_from=hosts_from if stand_ins is not None else None, lab=lab)
    except InvalidDeclaration as exc:
        return {"problems": [dataclasses.asdict(p) for p in exc.problems], **asked}
    except GitopsError as exc:
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"state": state.model_dump(mode="json"), **asked}


def main() -> None:
    die_with_parent()
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what the loaded code prints: stderr
    job = json.loads(sys.stdin.read())
    out.write(json.dumps(_answer(job)))
    out.flush()


if __name__ == "__main__":
    main()
