"""SOPS's cipher: a document's values and MAC (``Tree``, ``encrypt``), and its data key opened
with the configured age or PGP key (``Session``); the only user of pyrage, gnupg and AES-GCM.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gitops.errors import UsageError
from gitops.settings import SopsSettings

__all__ = ["GNUPG_PREFIX", "Decrypted", "Session", "SopsError", "Tree", "encrypt", "encrypt_value",
           "go_string"]

_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.*),iv:(.+),tag:(.+),type:(.+)\]$", re.S)


_MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()


_UNSUPPORTED = ("encrypted_comment_regex", "unencrypted_comment_regex")


GNUPG_PREFIX = "gitops-gnupg-"
"""The throwaway GnuPG homes (``$TMPDIR/gitops-gnupg-*``), removed after each use."""


class SopsError(Exception):
    """Why a document cannot be opened; the message never carries a value."""

    def __init__(self, message: str, line: int | None = None,
                 path: list[str] | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        """The keys down to the value at fault, to find its line."""


@dataclass
class Decrypted:
    """A decrypted document: its data and every plain leaf value (for redaction)."""

    data: Any
    secrets: set[str] = field(default_factory=set)


def encrypt(data: dict[str, Any], age_recipients: list[str], *,
            encrypted_regex: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """``data`` encrypted as ``sops encrypt`` does it, for age recipients (``age1...``):
    what the tests, the benchmark and the sample use where the sops tool is not installed."""
    import os

    import pyrage
    from pyrage import x25519

    key = os.urandom(32)
    digest = hashlib.sha512()
    regex = re.compile(encrypted_regex) if encrypted_regex else None

    def walk(node: Any, path: list[str]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, [*path, str(k)]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path) for v in node]
        if node is None:
            return None
        digest.update(_to_bytes(node))
        if regex is not None and not any(regex.search(p) for p in path):
            return node
        return encrypt_value(node, key, ":".join(path) + ":")

    tree = walk(data, [])
    stamp = _lastmodified(now or datetime.now(UTC))
    recipients = [x25519.Recipient.from_str(r) for r in age_recipients]
    armored = pyrage.encrypt(key, recipients, armored=True)
    meta: dict[str, Any] = {
        "age": [{"recipient": r, "enc": bytes(armored).decode()} for r in age_recipients],
        "lastmodified": stamp,
        "mac": encrypt_value(digest.hexdigest().upper(), key, stamp),
        "version": "3.9.0",
    }
    if encrypted_regex:
        meta["encrypted_regex"] = encrypted_regex
    return {**tree, "sops": meta}


def encrypt_value(value: Any, key: bytes, aad: str) -> str:
    import os

    kinds = {bool: "bool", int: "int", float: "float", bytes: "bytes"}
    kind = kinds.get(type(value), "str")
    if value == "":
        return ""
    iv = os.urandom(32)
    sealed = AESGCM(key).encrypt(iv, _to_bytes(value), aad.encode())
    b64 = base64.b64encode
    return (f"ENC[AES256_GCM,data:{b64(sealed[:-16]).decode()},iv:{b64(iv).decode()},"
            f"tag:{b64(sealed[-16:]).decode()},type:{kind}]")


class Tree:
    def __init__(self, meta: dict[str, Any], session: Session) -> None:
        for name in _UNSUPPORTED:
            if meta.get(name):
                raise SopsError(f"{name} is not supported here")
        if len(meta.get("key_groups") or []) > 1:
            raise SopsError("several key_groups (Shamir secret sharing) are not supported here")
        self.meta = meta
        self.session = session
        self.unencrypted_suffix = meta.get("unencrypted_suffix") or ""
        self.encrypted_suffix = meta.get("encrypted_suffix") or ""
        self.unencrypted_regex = _regex(meta.get("unencrypted_regex"))
        self.encrypted_regex = _regex(meta.get("encrypted_regex"))
        self.mac_only_encrypted = meta.get("mac_only_encrypted") is True
        self.secrets: set[str] = set()

    def decrypt(self, data: dict[str, Any]) -> Decrypted:
        key = self.session.data_key(self.meta)
        digest = hashlib.sha512()
        if self.mac_only_encrypted:
            digest.update(_MAC_ONLY_ENCRYPTED_INIT)
        plain = self._walk(data, [], key, digest)
        stored = self.meta.get("mac")
        if not isinstance(stored, str) or not stored:
            raise SopsError("no MAC: the file was not written by sops, or was altered",
                            path=["sops"])
        aad = _lastmodified(self.meta.get("lastmodified"))
        try:
            expected = _decrypt_value(stored, key, aad, what="the MAC")
        except SopsError as exc:
            exc.path = ["sops", "mac"]
            raise
        if not isinstance(expected, str) or expected.upper() != digest.hexdigest().upper():
            raise SopsError("MAC mismatch: the file was altered after sops wrote it",
                            path=["sops", "mac"])
        return Decrypted(plain, {s for s in self.secrets if s})

    def _encrypted(self, path: list[str]) -> bool:
        encrypted = True
        if self.unencrypted_suffix and any(p.endswith(self.unencrypted_suffix) for p in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(p.endswith(self.encrypted_suffix) for p in path)
        if self.unencrypted_regex and any(self.unencrypted_regex.search(p) for p in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(self.encrypted_regex.search(p) for p in path)
        return encrypted

    def _walk(self, node: Any, path: list[str], key: bytes, digest: Any) -> Any:
        if isinstance(node, dict):
            return {k: self._walk(v, [*path, str(k)], key, digest) for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(v, path, key, digest) for v in node]
        if node is None:
            return None
        encrypted = self._encrypted(path)
        value = node
        if encrypted:
            if not isinstance(node, str):
                raise SopsError(f"value at {'.'.join(path)} should be encrypted and is not",
                                path=path)
            try:
                value = _decrypt_value(node, key, ":".join(path) + ":", what=".".join(path))
            except SopsError as exc:
                exc.path = path
                raise
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                self.secrets.add(str(value))
        if not self.mac_only_encrypted or encrypted:
            digest.update(_to_bytes(value))
        return value


def _regex(pattern: Any) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(str(pattern))
    except re.error:
        raise SopsError("metadata has an invalid regular expression") from None


def _lastmodified(value: Any) -> str:
    """``lastmodified`` as Go formats it with RFC 3339 (the MAC's additional data)."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise SopsError("metadata lastmodified is not a time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    assert offset is not None
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S")
    if not offset:
        return stamp + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{stamp}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _go_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: shortest digits, no exponent."""
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def go_string(value: Any) -> str:
    return _to_bytes(value).decode(errors="replace")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return _go_float(value).encode()
    return str(value).encode()


def _decrypt_value(text: str, key: bytes, aad: str, *, what: str) -> Any:
    if text == "":
        return ""
    match = _ENC.match(text)
    if match is None:
        raise SopsError(f"{what} is not an ENC[AES256_GCM,...] value")
    try:
        data, iv, tag = (base64.b64decode(match[i], validate=True) for i in (1, 2, 3))
    except (binascii.Error, ValueError):
        raise SopsError(f"{what}: bad base64") from None
    kind = match[4]
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, aad.encode())
    except (InvalidTag, ValueError):
        raise SopsError(f"{what} does not decrypt: altered, moved, or another data key") from None
    try:
        if kind == "str":
            return plain.decode()
        if kind in ("int", "int64"):
            return int(plain)
        if kind == "float":
            return float(plain)
        if kind == "bool":
            return plain.decode().lower() in ("1", "t", "true")
        if kind == "bytes":
            return plain
        if kind == "comment":
            return None
    except ValueError:
        raise SopsError(f"{what} is not a valid {kind}") from None
    raise SopsError(f"{what} has an unknown type {kind}")


class Session:
    """The configured private keys, opened once per call; a throwaway GnuPG home for PGP."""

    def __init__(self, keys: SopsSettings | None) -> None:
        self.keys = keys or SopsSettings()
        self._age: list[Any] | None = None
        self._gpg: Any = None
        self._home: str | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._home is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["gpgconf", "--homedir", self._home, "--kill", "all"],
                               capture_output=True, timeout=10, check=False)
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def data_key(self, meta: dict[str, Any]) -> bytes:
        groups = meta.get("key_groups") or [meta]
        group = groups[0] if isinstance(groups[0], dict) else {}
        age = [e for e in group.get("age") or [] if isinstance(e, dict)]
        pgp = [e for e in group.get("pgp") or [] if isinstance(e, dict)]
        others = [k for k in ("kms", "gcp_kms", "azure_kv", "hc_vault") if group.get(k)]
        tried: list[str] = []
        if age:
            tried.append("age")
            for entry in age:
                key = self._age_open(str(entry.get("enc", "")))
                if key is not None:
                    return _check_key(key)
        if pgp:
            tried.append("PGP")
            for entry in pgp:
                key = self._pgp_open(str(entry.get("enc", "")))
                if key is not None:
                    return _check_key(key)
        if not tried and not others:
            raise SopsError("not valid SOPS: the metadata names no recipients")
        kinds = ", ".join(tried + others)
        raise SopsError(f"no configured key opens it (recipients: {kinds}; "
                        "set sops.age_key or sops.pgp_key in the settings)")

    def _age_open(self, enc: str) -> bytes | None:
        identities = self._age_identities()
        if not identities or not enc:
            return None
        import pyrage

        try:
            return bytes(pyrage.decrypt(enc.encode(), identities))
        except Exception:  # pyrage raises DecryptError and others for a wrong key
            return None

    def _age_identities(self) -> list[Any]:
        if self._age is None:
            self._age = []
            if self.keys.age_key is not None:
                from pyrage import x25519

                text = self.keys.age_key.reveal()
                if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
                    # an ssh-ed25519 key as an age identity (sops' SOPS_AGE_SSH_PRIVATE_KEY_FILE)
                    from pyrage import ssh

                    try:
                        self._age.append(ssh.Identity.from_buffer((text.strip() + "\n").encode()))
                    except Exception:
                        raise UsageError(f"sops.age_key ({self.keys.age_key.where}): not an "
                                         "unencrypted OpenSSH ed25519 or RSA key") from None
                    return self._age
                for line in text.splitlines():
                    line = line.strip()
                    if line.startswith("AGE-SECRET-KEY-"):
                        try:
                            self._age.append(x25519.Identity.from_str(line))
                        except Exception:
                            raise UsageError(f"sops.age_key ({self.keys.age_key.where}): "
                                             "not an age identity") from None
                if not self._age:
                    raise UsageError(f"sops.age_key ({self.keys.age_key.where}) has no "
                                     "AGE-SECRET-KEY- line")
        return self._age

    def _pgp_open(self, enc: str) -> bytes | None:
        gpg = self._keyring()
        if gpg is None or not enc:
            return None
        result = gpg.decrypt(enc, extra_args=["--pinentry-mode", "loopback"])
        return bytes(result.data) if result.ok else None

    def _keyring(self) -> Any:
        if self._gpg is None and self.keys.pgp_key is not None:
            import gnupg

            base = tempfile.gettempdir()  # gpg-agent's socket path must fit in 108 bytes
            self._home = tempfile.mkdtemp(prefix=GNUPG_PREFIX,  # mode 0700
                                          dir=base if len(base) <= 60 else "/tmp")
            gpg = gnupg.GPG(gnupghome=self._home)
            imported = gpg.import_keys(self.keys.pgp_key.reveal())
            if not imported.sec_imported:
                raise UsageError(f"sops.pgp_key ({self.keys.pgp_key.where}): no secret key "
                                 "imported (an ASCII-armoured private key without passphrase)")
            self._gpg = gpg
        return self._gpg


def _check_key(key: bytes) -> bytes:
    if len(key) != 32:
        raise SopsError("not valid SOPS: the data key is not 32 bytes")
    return key
