"""Signed commits: is a fetched head signed by a key the environment's policy allows?

``verify_commit`` runs ``git verify-commit --raw`` in the bare mirror (see
``source.mirror_path``) and parses what GnuPG or ssh-keygen reports:

- GPG: a throw-away ``GNUPGHOME`` holds ONLY the policy's ``gpg_keys`` (trusted through
  ``trust-model always``), so any other key fails as "no public key"; the signing key's
  fingerprint must also be one of those imported.
- SSH: ``gpg.ssh.allowedSignersFile`` is the policy's file; a key matching no principal there
  fails.

The user's and the system's Git configuration are ignored (``GIT_CONFIG_GLOBAL=/dev/null``,
``GIT_CONFIG_NOSYSTEM``): a ``gpg.program`` in someone's ``~/.gitconfig`` cannot decide.
Every refusal is an ``UnsignedCommit`` (permanent: retrying does not help until a new commit).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gitops.errors import RevisionNotFound, TemporaryError, UnsignedCommit, UsageError
from gitops.settings import SigningPolicy

__all__ = ["UnsignedCommit", "check_policy", "verify_commit"]

TIMEOUT = 30.0
"""Seconds any one git/gpg command may take."""

_SSH_GOOD = re.compile(r'^Good "git" signature for (?P<who>.+) with (?P<type>\S+) key (?P<fp>\S+)$')
_SSH_ANY = re.compile(r'^Good "git" signature with (?P<type>\S+) key (?P<fp>\S+)$')


def check_policy(policy: SigningPolicy) -> None:
    """A ``UsageError`` if ``policy`` allows no signer or names a key file that cannot be read.

    For loading settings: a policy that could never accept a commit is a mistake, not a
    reason to stall every environment forever.
    """
    if not policy.gpg_keys and policy.ssh_allowed_signers is None:
        raise UsageError("verify_commits: name gpg_keys or ssh_allowed_signers (or both)")
    files = [*policy.gpg_keys]
    if policy.ssh_allowed_signers is not None:
        files.append(policy.ssh_allowed_signers)
    for file in files:
        if not file.is_file() or not os.access(file, os.R_OK):
            raise UsageError(f"verify_commits: cannot read {file}")


def verify_commit(mirror: Path, sha: str, policy: SigningPolicy) -> str:
    """Who signed commit ``sha`` of the repository at ``mirror``, e.g. ``GPG key <fpr> (<uid>)``.

    Raises ``UnsignedCommit`` if the commit is unsigned, badly signed, or signed by a key (or
    a kind of key) the policy does not allow; ``UsageError`` for an unusable policy.
    """
    check_policy(policy)
    short = sha[:10]
    kind = _signature_kind(mirror, sha)
    if kind is None:
        raise UnsignedCommit(f"commit {short} is not signed")
    if kind == "gpg":
        if not policy.gpg_keys:
            raise UnsignedCommit(
                f"commit {short} is signed with a GPG key, but only SSH signers are allowed"
            )
        return _verify_gpg(mirror, sha, policy.gpg_keys)
    if kind == "ssh":
        if policy.ssh_allowed_signers is None:
            raise UnsignedCommit(
                f"commit {short} is signed with an SSH key, but only GPG signers are allowed"
            )
        return _verify_ssh(mirror, sha, policy.ssh_allowed_signers)
    raise UnsignedCommit(f"commit {short} has a {kind} signature, which is not supported")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "LANG", "LC_"))}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``args`` (never a shell); its exit status, stdout and stderr."""
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
            timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise TemporaryError(f"{args[0]} {args[1]} timed out after {TIMEOUT:g} s") from None
    except FileNotFoundError:
        raise UsageError(f"verify_commits needs {args[0]}, which is not installed") from None
    return done.returncode, done.stdout, done.stderr


def _signature_kind(mirror: Path, sha: str) -> str | None:
    """``gpg``, ``ssh``, ``x509`` or None (unsigned), from the commit object's header."""
    rc, out, _ = _run(["git", "cat-file", "commit", sha], _env(), cwd=mirror)
    if rc != 0:
        raise RevisionNotFound(f"no commit {sha[:10]} in {mirror}")
    header = out.split("\n\n", 1)[0].splitlines()
    for i, line in enumerate(header):
        if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
            armour = line.split(" ", 1)[1] if " " in line else ""
            if not armour.strip() and i + 1 < len(header):
                armour = header[i + 1]
            if "BEGIN PGP SIGNATURE" in armour:
                return "gpg"
            if "BEGIN SSH SIGNATURE" in armour:
                return "ssh"
            if "BEGIN SIGNED MESSAGE" in armour:
                return "x509"
            return "unknown"
    return None


def _verify_gpg(mirror: Path, sha: str, keys: list[Path]) -> str:
    short = sha[:10]
    home = Path(tempfile.mkdtemp(prefix="gitops-gpg-"))  # mode 0700
    env = _env(GNUPGHOME=str(home))
    try:
        (home / "gpg.conf").write_text("trust-model always\nno-autostart\n")
        allowed: set[str] = set()
        for key in keys:
            allowed |= _import(key, env)
        rc, _, out = _run(
            ["git", "-c", "gpg.program=gpg", "verify-commit", "--raw", sha], env, cwd=mirror
        )
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "all"], env=env, capture_output=True, timeout=TIMEOUT,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)

    status: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line[len("[GNUPG:] ") :].split(" ", 1)
            status[word] = rest[0].split(" ") if rest else []

    def key_of(word: str) -> str:
        fields = status[word]
        if word == "ERRSIG" and len(fields) >= 7 and fields[6] not in ("", "-"):
            return fields[6]  # the issuer's full fingerprint, when the signature names it
        return fields[0] if fields else "unknown key"

    if "BADSIG" in status:
        raise UnsignedCommit(f"commit {short} has a bad signature (key {key_of('BADSIG')})")
    if "ERRSIG" in status:
        if "NO_PUBKEY" in status:
            raise UnsignedCommit(
                f"commit {short} is signed by a key that is not allowed ({key_of('ERRSIG')})"
            )
        raise UnsignedCommit(f"commit {short} has a signature that cannot be checked by gpg")
    for word, what in (("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key")):
        if word in status:
            raise UnsignedCommit(f"commit {short} is signed by {what} ({key_of(word)})")
    if "EXPSIG" in status:
        raise UnsignedCommit(f"commit {short} has an expired signature ({key_of('EXPSIG')})")
    valid = status.get("VALIDSIG", [])
    primary = valid[9] if len(valid) >= 10 else (valid[0] if valid else "")
    if rc != 0 or "GOODSIG" not in status or not primary:
        raise UnsignedCommit(f"commit {short} has a signature that cannot be verified")
    if primary not in allowed:  # cannot happen with only those keys imported; belt and braces
        raise UnsignedCommit(f"commit {short} is signed by a key that is not allowed ({primary})")
    uid = " ".join(status["GOODSIG"][1:])
    return f"GPG key {primary} ({uid})" if uid else f"GPG key {primary}"


def _import(key: Path, env: dict[str, str]) -> set[str]:
    """Import one armoured public key file; the primary fingerprints it brought."""
    if not key.is_file():
        raise UsageError(f"verify_commits: GPG key file {key} does not exist")
    _, out, _ = _run(["gpg", "--batch", "--status-fd", "1", "--import", str(key)], env)
    fingerprints = {
        line.split()[3]
        for line in out.splitlines()
        if line.startswith("[GNUPG:] IMPORT_OK ") and len(line.split()) >= 4
    }
    if not fingerprints:
        raise UsageError(f"verify_commits: no public key could be imported from {key}")
    return fingerprints


def _verify_ssh(mirror: Path, sha: str, allowed_signers: Path) -> str:
    short = sha[:10]
    if not allowed_signers.is_file():
        raise UsageError(f"verify_commits: allowed signers file {allowed_signers} does not exist")
    rc, _, out = _run(
        [
            "git", "-c", "gpg.ssh.program=ssh-keygen",
            "-c", f"gpg.ssh.allowedSignersFile={allowed_signers.resolve()}",
            "verify-commit", "--raw", sha,
        ],
        _env(),
        cwd=mirror,
    )  # fmt: skip
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    for line in lines:
        good = _SSH_GOOD.match(line)
        if good and rc == 0:
            return f"SSH key {good['fp']} ({good['who']})"
    if any("incorrect signature" in line for line in lines):
        raise UnsignedCommit(f"commit {short} has a bad signature")
    if any(line.startswith("No principal matched") for line in lines):
        fingerprint = next((m["fp"] for m in map(_SSH_ANY.match, lines) if m), "unknown key")
        raise UnsignedCommit(
            f"commit {short} is signed by a key that is not allowed ({fingerprint})"
        )
    detail = lines[-1] if lines else f"exit {rc}"
    raise UnsignedCommit(f"commit {short} has a signature that cannot be verified: {detail}")
