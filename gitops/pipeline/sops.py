"""SOPS-encrypted files of the state repository, decrypted in-process when a revision loads.

The only user of the age (pyrage) and PGP (python-gnupg, the gpg binary) libraries and of
AES-GCM. Follows getsops/sops' own format: each document has a 32-byte data key, stored
encrypted for every recipient in ``sops.age[].enc`` (an armoured age file) and
``sops.pgp[].enc`` (a PGP message); every value is ``ENC[AES256_GCM,data:,iv:,tag:,type:]``
with the value's path of mapping keys, each followed by ``:``, as additional data; the MAC is
the SHA-512 of the plain leaf values in document order (``True``/``False``, Go's shortest
float form, comments left out), stored encrypted with ``lastmodified`` as additional data.
YAML, JSON, dotenv and binary (``{"data": ENC[...]}``) documents are read.

Called by ``load``: ``open_inventory`` decrypts an inventory written with sops and merges
``inventories/<environment>.secrets.sops.yaml`` over it; ``deploy_files`` decrypts the
``deploys/<service>/files/*.sops.*`` files a deploy uploads (their plain bytes travel to the
worker in memory, never to disk). A document that is not valid SOPS, that no configured key
opens, or whose MAC fails is an ``InvalidDeclaration`` naming the file; no message ever
carries a value. Private keys come from the settings' ``[sops]`` ``SecretRef``s only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, SecretBytes, SecretStr

from gitops.errors import InvalidDeclaration, Problem, UsageError
from gitops.settings import SopsSettings

__all__ = [
    "Decrypted",
    "SopsError",
    "decrypt",
    "deploy_files",
    "encrypt",
    "is_sops_path",
    "open_inventory",
    "secret_params",
    "to_yaml",
]

SECRETS_SUFFIX = ".secrets.sops.yaml"
"""``inventories/<environment>.secrets.sops.yaml`` is merged over the inventory."""
GNUPG_PREFIX = "gitops-gnupg-"
"""The throwaway GnuPG homes (``$TMPDIR/gitops-gnupg-*``), removed after each use."""

_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.*),iv:(.+),tag:(.+),type:(.+)\]$", re.S)
_MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()
_UNSUPPORTED = ("encrypted_comment_regex", "unencrypted_comment_regex")


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


def is_sops_path(path: Path) -> bool:
    """``name.sops.ext`` or ``name.sops``: a file sops encrypted."""
    return ".sops" in path.suffixes or path.name.endswith(".sops")


def secret_params(models: dict[str, type[BaseModel] | None], hosts: Any) -> set[str]:
    """The plain values of every parameter a service's ``Params`` types ``SecretStr`` or
    ``SecretBytes``, on every host (``hosts``: ``DeclaredHost``s)."""
    out: set[str] = set()

    def walk(annotation: Any, value: Any) -> None:
        if annotation in (SecretStr, SecretBytes):
            if isinstance(value, str | bytes):
                out.add(value if isinstance(value, str) else value.decode(errors="replace"))
            return
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if isinstance(value, dict):
                for name, info in annotation.model_fields.items():
                    if name in value:
                        walk(info.annotation, value[name])
            return
        for arg in get_args(annotation):
            if isinstance(value, dict) and get_origin(annotation) is dict:
                for v in value.values():
                    walk(arg, v)
            elif isinstance(value, list) and get_origin(annotation) in (list, tuple, set):
                for v in value:
                    walk(arg, v)
            else:
                walk(arg, value)

    for host in hosts:
        for service, params in host.services.items():
            model = models.get(service)
            if model is not None:
                walk(model, params)
    return {v for v in out if v}


# -- what load calls ----------------------------------------------------------------------


def open_inventory(
    root: Path, rel: str, data: Any, text: str, keys: SopsSettings | None,
    revision: str | None,
) -> tuple[Any, set[str]]:
    """The inventory's data with its SOPS values decrypted and ``<env>.secrets.sops.yaml``
    merged over it (mappings merged key by key, anything else replaced); and the plain
    values, to redact. Raises ``InvalidDeclaration`` naming the file that cannot be opened."""
    secrets: set[str] = set()
    with _Session(keys) as session:
        if isinstance(data, dict) and "sops" in data:
            doc = _opened(session, rel, lambda: _decrypt_text(session, text, "yaml"), revision)
            data, secrets = doc.data, doc.secrets
        overlay_rel = rel.removesuffix(".yml") + SECRETS_SUFFIX
        overlay_path = root / overlay_rel
        if overlay_path.is_file():
            overlay_text = _read(overlay_path, overlay_rel, revision)
            doc = _opened(session, overlay_rel,
                          lambda: _decrypt_text(session, overlay_text, "yaml"), revision)
            if not isinstance(doc.data, dict):
                why = "should be a mapping (merged over the inventory)"
                raise InvalidDeclaration([Problem(overlay_rel, 1, "", why)], revision)
            if isinstance(data, dict):
                data = _merge(data, doc.data)
            secrets |= doc.secrets
    return data, secrets


def deploy_files(
    root: Path, services: list[str], keys: SopsSettings | None, revision: str | None
) -> tuple[dict[str, str], set[str]]:
    """Every ``deploys/<service>/files/**/*.sops*`` of ``services``, decrypted: relative path
    -> plain content (base64), and their plain values to redact."""
    found = sorted(p for s in services for p in (root / "deploys" / s / "files").rglob("*")
                   if p.is_file() and is_sops_path(p))
    files: dict[str, str] = {}
    secrets: set[str] = set()
    if not found:
        return files, secrets
    with _Session(keys) as session:
        for path in found:
            rel = path.relative_to(root).as_posix()
            raw = path.read_bytes()
            plain = _opened(session, rel, lambda raw=raw, path=path: Decrypted(
                *_plain_file(session, raw, _format_of(path))), revision)
            files[rel] = base64.b64encode(plain.data).decode()
            secrets |= plain.secrets
    return files, secrets


def decrypt(path: Path, keys: SopsSettings | None, fmt: str | None = None) -> Decrypted:
    """Decrypt one file (format from its name unless given); raises ``SopsError``."""
    with _Session(keys) as session:
        fmt = fmt or _format_of(path)
        raw = path.read_bytes()
        if fmt == "binary":
            return Decrypted(*_plain_file(session, raw, fmt))
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise SopsError("not valid SOPS: not UTF-8 text") from None
        return _decrypt_text(session, text, fmt)


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
        return _encrypt_value(node, key, ":".join(path) + ":")

    tree = walk(data, [])
    stamp = _lastmodified(now or datetime.now(UTC))
    recipients = [x25519.Recipient.from_str(r) for r in age_recipients]
    armored = pyrage.encrypt(key, recipients, armored=True)
    meta: dict[str, Any] = {
        "age": [{"recipient": r, "enc": bytes(armored).decode()} for r in age_recipients],
        "lastmodified": stamp,
        "mac": _encrypt_value(digest.hexdigest().upper(), key, stamp),
        "version": "3.9.0",
    }
    if encrypted_regex:
        meta["encrypted_regex"] = encrypted_regex
    return {**tree, "sops": meta}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the armoured keys) as ``|`` blocks, as sops writes them."""


_BlockDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def to_yaml(document: dict[str, Any]) -> str:
    """An encrypted document as YAML, in its order (the MAC covers the order)."""
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)


def _encrypt_value(value: Any, key: bytes, aad: str) -> str:
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


# -- documents ----------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    if suffix == ".env":
        return "dotenv"
    return "binary"


def _read(path: Path, rel: str, revision: str | None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidDeclaration([Problem(rel, None, "", f"cannot read: {why}")],
                                 revision) from None


def _opened(session: _Session, rel: str, run: Any, revision: str | None) -> Decrypted:
    try:
        result: Decrypted = run()
    except SopsError as exc:
        raise InvalidDeclaration([Problem(rel, exc.line, "", f"SOPS: {exc}")], revision) from None
    return result


def _plain_file(session: _Session, raw: bytes, fmt: str) -> tuple[bytes, set[str]]:
    """A deploy file as the bytes ``sops decrypt`` would write."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SopsError("not valid SOPS: not UTF-8 text") from None
    doc = _decrypt_text(session, text, "json" if fmt == "binary" else fmt)
    data = doc.data
    if fmt == "binary":
        if not isinstance(data, dict) or set(data) != {"data"}:
            raise SopsError("not valid SOPS: a binary document has one key, data")
        value = data["data"]
        out = value if isinstance(value, bytes) else str(value).encode()
        # The whole content, and its lines that look like values (no spaces: KEY=value)
        lines = out.decode(errors="replace").splitlines()
        secrets = doc.secrets | {line for line in lines if len(line) >= 10
                                 and not any(c.isspace() for c in line)}
        return out, secrets
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode(), doc.secrets
    if fmt == "json":
        return (json.dumps(data, indent=4, ensure_ascii=False) + "\n").encode(), doc.secrets
    lines = [f"{k}={_go_string(v)}".replace("\n", "\\n") for k, v in data.items()]
    return ("".join(f"{line}\n" for line in lines)).encode(), doc.secrets


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as sops (Go yaml.v3) reads it: true/false only, timestamps stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool",
                                                   "tag:yaml.org,2002:timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _decrypt_text(session: _Session, text: str, fmt: str) -> Decrypted:
    if fmt == "yaml":
        try:
            data = yaml.load(text, Loader=_Yaml12Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise SopsError("not valid YAML", mark.line + 1 if mark else None) from None
    elif fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SopsError("not valid JSON", getattr(exc, "lineno", None)) from None
    elif fmt == "dotenv":
        data = _dotenv(text)
    else:
        raise SopsError(f"unknown format {fmt}")
    if not isinstance(data, dict) or not isinstance(data.get("sops"), dict):
        raise SopsError("not valid SOPS: no sops metadata (encrypt it with sops)")
    meta = data.pop("sops")
    try:
        return _Tree(meta, session).decrypt(data)
    except SopsError as exc:
        if exc.line is None and exc.path and fmt == "yaml":
            exc.line = _yaml_line(text, exc.path)
        raise


def _yaml_line(text: str, path: list[str]) -> int | None:
    """The 1-based line of the key at ``path`` (lists are looked through, as in sops)."""

    def find(node: yaml.Node, rest: list[str]) -> int | None:
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                found = find(item, rest)
                if found is not None:
                    return found
        elif isinstance(node, yaml.MappingNode) and rest:
            for key, value in node.value:
                if str(key.value) == rest[0]:
                    if len(rest) == 1:
                        return int(key.start_mark.line) + 1
                    found = find(value, rest[1:])
                    if found is not None:
                        return found
        return None

    try:
        root = yaml.compose(text, Loader=_Yaml12Loader)
    except yaml.YAMLError:
        return None
    return find(root, path) if root is not None else None


def _dotenv(text: str) -> dict[str, Any]:
    """A dotenv document as sops reads it; ``sops_*`` keys rebuilt into the metadata."""
    data: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SopsError("not valid dotenv: a line without =", n)
        value = value.replace("\\n", "\n")
        if key.startswith("sops_"):
            meta[key[len("sops_"):]] = value
        else:
            data[key] = value
    if meta:
        data["sops"] = _unflatten(meta)
    return data


def _unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """sops' flattened metadata (``pgp__list_0__map_enc``) back into a tree."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        first, *parts = key.split("__")
        node: Any = out
        path: list[str | int] = [first]
        for part in parts:
            kind, _, name = part.partition("_")
            path.append(int(name) if kind == "list" and name.isdigit() else name)
        for here, nxt in itertools.pairwise(path):
            empty: Any = [] if isinstance(nxt, int) else {}
            if isinstance(node, list):
                assert isinstance(here, int)
                while len(node) <= here:
                    node.append(None)
                node[here] = node[here] if node[here] is not None else empty
                node = node[here]
            else:
                node = node.setdefault(here, empty)
        last = path[-1]
        if isinstance(node, list) and isinstance(last, int):
            while len(node) <= last:
                node.append(None)
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
    if isinstance(out.get("mac_only_encrypted"), str):
        out["mac_only_encrypted"] = out["mac_only_encrypted"].lower() == "true"
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- the tree -----------------------------------------------------------------------------


class _Tree:
    def __init__(self, meta: dict[str, Any], session: _Session) -> None:
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


def _go_string(value: Any) -> str:
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


# -- keys ---------------------------------------------------------------------------------


class _Session:
    """The configured private keys, opened once per call; a throwaway GnuPG home for PGP."""

    def __init__(self, keys: SopsSettings | None) -> None:
        self.keys = keys or SopsSettings()
        self._age: list[Any] | None = None
        self._gpg: Any = None
        self._home: str | None = None

    def __enter__(self) -> _Session:
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

