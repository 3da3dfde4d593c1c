"""One run per environment at a time (``environment_lock``, the kernel's lock, dropped when
its holder dies); the runs a dead holder left unfinished recorded interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops.errors import LockHeld
from gitops.pipeline.runs import Progress, Target
from gitops.private import private_dir
from gitops.record.store import Store, now
from gitops.records import APPLY_KINDS

__all__ = ["Cut", "environment_lock", "recover_unfinished"]


@contextmanager
def environment_lock(target: Target, kind: str) -> Iterator[None]:
    """One run at a time per environment. The kernel drops the lock when its holder dies,
    so a lock left by ``kill -9`` is recovered without guessing from timestamps."""
    folder = private_dir(target.state_dir) / "locks"
    folder.mkdir(exist_ok=True)
    path = folder / f"{target.environment}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            raise LockHeld(
                f"environment {target.environment!r} is locked by {holder.get('actor', '?')} "
                f"(pid {holder.get('pid', '?')}, {holder.get('kind', 'run')} since "
                f"{holder.get('since', '?')})"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "actor": target.actor, "kind": kind,
                "since": now().isoformat(timespec="seconds")}
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Cut:
    """A run left unfinished (its process killed, its end refused by a full disk, its
    controller's lease lost), now recorded interrupted."""

    run_id: int
    kind: str
    sha: str | None


def recover_unfinished(store: Store, target: Target, say: Progress, *, held: bool = False,
                       by: str = "") -> list[Cut]:
    """Record interrupted the runs of ``target``'s environment left unfinished, saying each;
    returns them. Under the environment lock, no run of the environment is in progress, so
    an unfinished one was cut: the lock is taken here unless ``held`` (the caller holds it,
    or holds the environment's lease, ``by`` naming whom the runs were left by). Raises
    ``LockHeld`` when a run holds the lock (its row is not touched). Called by ``run``, and by
    the daemon at its start, when it takes a lease and before a cycle reads the history."""
    with contextlib.nullcontext() if held else environment_lock(target, "recover"):
        cuts: list[Cut] = []
        for run_id in store.recover_unfinished(target.environment):
            detail = store.run(run_id)
            cuts.append(Cut(run_id, detail.run.kind if detail else "",
                            detail.run.sha if detail else None))
        # a cut apply may have changed a host after its verified fingerprints were recorded
        # (cut during the verify): nothing is known converged, the next apply does it all
        forget = (any(c.kind in APPLY_KINDS for c in cuts)
                  and store.forget_converged(target.environment))
    for cut in cuts:
        say(f"run {cut.run_id} was {f'left unfinished by {by}' if by else 'cut before its end'}"
            ": recorded as interrupted")
    if forget:
        say("a cut apply may have changed what was verified: every service is applied next")
    return cuts


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
