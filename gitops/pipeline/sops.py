"""SOPS-encrypted files of the state repository, decrypted in-process when a revision loads.

The documents are read here; their values, MAC and data key are ``sopscipher``'s (the only
user of pyrage, python-gnupg and AES-GCM). Follows getsops/sops' own format: each document
has a 32-byte data key, stored encrypted for every recipient in ``sops.age[].enc`` (an
armoured age file) and ``sops.pgp[].enc`` (a PGP message); every value is
``ENC[AES256_GCM,data:,iv:,tag:,type:]`` with the value's path of mapping keys, each
followed by ``:``, as additional data; the MAC is the SHA-512 of the plain leaf values in
document order (``True``/``False``, Go's shortest float form, comments left out), stored
encrypted with ``lastmodified`` as additional data.
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
import itertools
import json
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr

from gitops.errors import InvalidDeclaration, Problem
from gitops.pipeline.sopscipher import (
    GNUPG_PREFIX,
    Decrypted,
    Session,
    SopsError,
    Tree,
    encrypt,
    go_string,
)
from gitops.settings import SopsSettings

__all__ = [
    "GNUPG_PREFIX",
    "Decrypted",
    "SopsError",
    "decrypt",
    "deploy_files",
    "encrypt",
    "is_sops_path",
    "open_inventory",
    "plain_file",
    "secret_params",
    "to_yaml",
]

SECRETS_SUFFIX = ".secrets.sops.yaml"
"""``inventories/<environment>.secrets.sops.yaml`` is merged over the inventory."""


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


def open_inventory(
    root: Path, rel: str, data: Any, text: str, keys: SopsSettings | None,
    revision: str | None,
) -> tuple[Any, set[str]]:
    """The inventory's data with its SOPS values decrypted and ``<env>.secrets.sops.yaml``
    merged over it (mappings merged key by key, anything else replaced); and the plain
    values, to redact. Raises ``InvalidDeclaration`` naming the file that cannot be opened."""
    secrets: set[str] = set()
    with Session(keys) as session:
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
    with Session(keys) as session:
        for path in found:
            rel = path.relative_to(root).as_posix()
            raw = path.read_bytes()
            plain = _opened(session, rel, lambda raw=raw, path=path: Decrypted(
                *plain_file(session, raw, _format_of(path))), revision)
            files[rel] = base64.b64encode(plain.data).decode()
            secrets |= plain.secrets
    return files, secrets


def decrypt(path: Path, keys: SopsSettings | None, fmt: str | None = None) -> Decrypted:
    """Decrypt one file (format from its name unless given); raises ``SopsError``."""
    with Session(keys) as session:
        fmt = fmt or _format_of(path)
        raw = path.read_bytes()
        if fmt == "binary":
            return Decrypted(*plain_file(session, raw, fmt))
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise SopsError("not valid SOPS: not UTF-8 text") from None
        return _decrypt_text(session, text, fmt)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the armoured keys) as ``|`` blocks, as sops writes them."""


_BlockDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def to_yaml(document: dict[str, Any]) -> str:
    """An encrypted document as YAML, in its order (the MAC covers the order)."""
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)


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


def _opened(session: Session, rel: str, run: Any, revision: str | None) -> Decrypted:
    try:
        result: Decrypted = run()
    except SopsError as exc:
        raise InvalidDeclaration([Problem(rel, exc.line, "", f"SOPS: {exc}")], revision) from None
    return result


def plain_file(session: Session, raw: bytes, fmt: str) -> tuple[bytes, set[str]]:
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
    lines = [f"{k}={go_string(v)}".replace("\n", "\\n") for k, v in data.items()]
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


def _decrypt_text(session: Session, text: str, fmt: str) -> Decrypted:
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
        return Tree(meta, session).decrypt(data)
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
