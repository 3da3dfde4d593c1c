"""Fingerprints: what a service's apply on a host reads, as one keyed digest; equal means the
same apply, so a changed-only run leaves out the ``unchanged`` services.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from gitops.model import DeclaredState

__all__ = ["fingerprint_key", "fingerprints", "unchanged"]


def fingerprint_key(state_dir: Path) -> bytes:
    """This state folder's key for fingerprints (created once, readable by its owner only).

    Fingerprints cover service parameters, which may hold secrets: keyed, the digests kept
    in the database say nothing about them."""
    path = state_dir / "fingerprint.key"
    if not path.exists():
        # written whole under another name, then linked: two first runs (of two environments)
        # cannot see a half-written key or make two
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".fingerprint.key.")
        try:
            os.write(fd, secrets.token_bytes(32))
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def fingerprints(state: DeclaredState, key: bytes) -> dict[str, dict[str, str]]:
    """host -> service -> keyed digest of everything that service's apply on that host reads:
    the service's files (``service_digests``), its parameters, the host's variables, groups,
    address and SSH user and port, and the gitops version. Equal: the same apply."""
    from gitops import __version__

    out: dict[str, dict[str, str]] = {}
    for h in state.hosts:
        common = {"gitops": __version__, "address": h.address, "user": h.ssh.user,
                  "port": h.ssh.port, "groups": list(h.groups), "vars": h.vars}
        out[h.name] = {
            service: hmac.new(key, json.dumps(
                {**common, "files": state.service_digests.get(service, ""), "params": params},
                sort_keys=True, default=str).encode(), hashlib.sha256).hexdigest()
            for service, params in h.services.items()
        }
    return out


def unchanged(state: DeclaredState, prints: dict[str, dict[str, str]],
               converged: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    """host -> the services whose fingerprint is the one its last verified apply had."""
    return {h.name: {s for s in h.services
                     if converged.get(h.name, {}).get(s) == prints[h.name][s]}
            for h in state.hosts}
