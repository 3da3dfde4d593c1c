"""Skip what provably did not change: the pure parts (the record, its file, the decision, one
remote command made of many fact commands and its output split back).

A pyinfra operation yields its commands from its arguments and the facts it reads. The apply
worker (``gitops.workers.factcheck``) records, per host, every fact (class, arguments,
connector arguments, a keyed digest of its value) that an apply which changed nothing read,
with the fingerprints of the host's services (``gitops.pipeline.fingerprints``) and a digest
of what else a deploy may read (the inventory, the versions: ``basis``). A later apply whose
fingerprints and basis are the recorded ones gathers exactly those facts in one remote
command; when every digest is equal the host's operations would yield nothing again, and the
host is reported ``NO_CHANGE`` without running them. Anything else is the full apply, with
its reason (``decide``, ``compared``). A host whose deploy reads host state outside facts,
or local state outside its services' files, is recorded ``unfit`` with the reason and always
applied in full. Records live in ``<state-dir>/facts/<environment>/<host>.json`` (keyed
digests only, readable by their owner); a removed or unreadable file means a full apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gitops.model import DeclaredState
from gitops.records import NO_CHANGE_BY_FINGERPRINT

__all__ = ["NO_CHANGE", "FactRead", "HostRecord", "Skip", "basis", "canonical", "combine",
           "compared", "decide", "digest", "folder", "forget", "forget_others", "load", "save",
           "split"]

NO_CHANGE = NO_CHANGE_BY_FINGERPRINT
"""How a host skipped this way is reported (apply and plan)."""


class FactRead(BaseModel):
    """One fact an apply read on a host, and a keyed digest of the value it got."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fact: str
    """``module:Class`` of the fact."""
    kwargs: dict[str, Any] = {}
    """The fact's own arguments (as pyinfra binds them)."""
    connector: dict[str, Any] = {}
    """The connector arguments it was read with (``_sudo``, ``_sudo_user``, ``_env``, ...)."""
    digest: str

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.fact.rsplit(':', 1)[-1]}({args})"


class HostRecord(BaseModel):
    """What a host's last apply read, or why it cannot be skipped."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prints: dict[str, str]
    """service -> fingerprint of the services applied."""
    basis: str
    facts: tuple[FactRead, ...] = ()
    unfit: str = ""
    """Why the next apply of this host is a full one whatever the facts say ("": none)."""


class Skip(BaseModel):
    """What an apply job needs to skip unchanged hosts: where the records are, the key of
    their digests and this revision's fingerprints and basis."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    folder: str
    key: str
    """The state folder's fingerprint key, hex."""
    prints: dict[str, dict[str, str]]
    basis: str


def folder(state_dir: Path, environment: str) -> Path:
    """Where the records of ``environment``'s hosts are."""
    return state_dir / "facts" / environment


def basis(state: DeclaredState, key: bytes) -> str:
    """A keyed digest of what a deploy may read beyond its own host's fingerprint: every
    host of the inventory (names, addresses, groups, variables; a deploy may read another
    host's) and the gitops version."""
    from gitops import __version__

    hosts = [{"name": h.name, "address": h.address, "groups": list(h.groups), "vars": h.vars,
              "user": h.ssh.user, "port": h.ssh.port} for h in state.hosts]
    text = json.dumps({"gitops": __version__, "hosts": hosts}, sort_keys=True, default=str)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def load(where: Path, host: str) -> HostRecord | None:
    """``host``'s record; None when there is none or it cannot be read (a full apply)."""
    try:
        return HostRecord.model_validate_json((where / f"{host}.json").read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def save(where: Path, host: str, record: HostRecord) -> None:
    """Write ``host``'s record whole (another name, then renamed), readable by its owner."""
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{host}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(record.model_dump_json())
        os.replace(tmp, where / f"{host}.json")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def forget(where: Path, hosts: Iterable[str]) -> None:
    """No record of ``hosts`` any more: their next apply is a full one."""
    for host in hosts:
        with contextlib.suppress(FileNotFoundError):
            (where / f"{host}.json").unlink()


def forget_others(where: Path, keep: set[str]) -> None:
    """No record of hosts that left the inventory (their files would only grow the folder)."""
    if where.is_dir():
        forget(where, [p.stem for p in where.glob("*.json") if p.stem not in keep])


def decide(record: HostRecord | None, prints: dict[str, str], current_basis: str, *,
           enabled: bool = True, pending: bool = False) -> str | None:
    """None: gather the recorded facts and compare; else why the host gets a full apply."""
    if not enabled:
        return "fingerprint_skip is off"
    if pending:
        return "an interrupted apply is pending on it"
    if record is None:
        return "no record of an apply that changed nothing"
    if record.unfit:
        return record.unfit
    if record.basis != current_basis:
        return "the inventory or the gitops version changed"
    if record.prints != prints:
        changed = sorted(s for s in {*record.prints, *prints}
                         if record.prints.get(s) != prints.get(s))
        return f"changed since its last apply: {', '.join(changed)}"
    if not record.facts:
        return "its last apply read no fact"
    return None


def compared(record: HostRecord, digests: Sequence[str] | None, why: str = "") -> str:
    """``NO_CHANGE`` when every recorded fact has its recorded digest again; else which
    fact changed (``digests`` None: they could not be gathered, ``why``)."""
    if digests is None or len(digests) != len(record.facts):
        return f"the facts could not be gathered in one command{': ' + why if why else ''}"
    changed = [r.label for r, d in zip(record.facts, digests, strict=True) if r.digest != d]
    if not changed:
        return NO_CHANGE
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return f"fact changed: {changed[0]}{more}"


def canonical(value: Any) -> Any:
    """``value`` as JSON the same in every process: sets sorted, tuples as lists, mappings
    with string keys, anything else by its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {json.dumps(canonical(k), sort_keys=True): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return {"repr": repr(value)}


def digest(key: bytes, value: Any) -> str:
    """A keyed digest of a fact's value (a value may hold a secret: a password hash)."""
    text = json.dumps(canonical(value), sort_keys=True)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


_TOKEN = re.compile(r"[A-Za-z0-9_]{8,64}")


def combine(commands: Sequence[tuple[str, bool]], token: str) -> str:
    """One shell script running each ``(command, grouped)`` in turn, its stdin
    ``/dev/null``, each followed by a line ``<token> <exit status>`` on stdout: ``grouped``
    in ``{ }`` (a command that neither ends nor changes the shell), else in a subshell."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not a marker: {token!r}")
    parts = []
    for command, grouped in commands:
        body = f"{{ {command}\n}}" if grouped else f"( {command}\n)"
        parts.append(f"{body} </dev/null; printf '\\n%s %d\\n' {token} $?")
    return "\n".join(parts)


def split(stdout: Sequence[str], token: str, count: int) -> list[tuple[int, list[str]]] | None:
    """The output of ``combine``'s script (its stdout lines) split back: per command, its
    exit status and its stdout lines as it alone would have printed them; None unless there
    are exactly ``count`` parts."""
    text = "\n".join(stdout) + "\n"
    pieces = re.split(rf"\n{re.escape(token)} (\d+)\n", text)
    if len(pieces) != 2 * count + 1 or pieces[-1] != "":
        return None
    out = []
    for index in range(count):
        raw = pieces[2 * index]
        lines = raw.removesuffix("\n").split("\n") if raw else []
        out.append((int(pieces[2 * index + 1]), lines))
    return out
