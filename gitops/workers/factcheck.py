"""The apply worker's side of skipping what did not change (``gitops.pipeline.factskip``).

``Recorder.install`` (after ``connector.install``) wraps pyinfra's fact reading
(``pyinfra.api.facts._get_fact``, which ``get_fact``, ``host.get_fact`` and short facts all
reach) to note, per host, each fact read (class, bound arguments, connector arguments, keyed
digest of the value), and watches what a deploy does outside facts while its file loads and
while an operation's body runs (``deploying``/``body``): a command run, a file fetched or put
on the host (``Host.run_shell_command``, ``get_file``, ``put_file``), a local file opened
outside the host's services' files, a local program started, a network connection (an audit
hook). Any of those makes the host ``unfit`` with the reason: its applies are always full.

``check`` gathers a host's recorded facts in one remote command per set of connector
arguments (one in practice), through pyinfra's own ``host.run_shell_command``, so sudo and
the like wrap it as they wrap any command; each fact's part of the output goes to its
class's ``process`` (``read_again``). Facts of one kind share one program run
(``gitops.workers.factbatch``): the paths of the ``File``-family facts one ``stat``, those
of a hash fact one ``sha1sum``, the units of the systemd facts one ``systemctl show``; what
a batch cannot answer exactly is read with the facts' own commands in a second command.
``finish`` writes the records of an apply.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import secrets as token_source
import site
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import gevent
import pyinfra
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.exceptions import FactPreconditionError, MissingCommandError
from pyinfra.api.host import Host
from pyinfra.context import ctx_host
from pyinfra.facts.files import (
    Directory,
    File,
    HashFileFactBase,
    Link,
    Md5File,
    Sha1File,
    Sha256File,
    Sha384File,
    Socket,
)
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from gitops import freetext
from gitops.model import DeclaredState
from gitops.pipeline import factskip
from gitops.pipeline.factskip import FactRead, HostRecord, Skip
from gitops.records import ApplyReport, Plan
from gitops.workers import connector, factbatch

__all__ = ["Recorder", "read_again"]

_MISSING = {"pyinfra": "command not found"}
"""The value noted for a fact whose program is missing (pyinfra answers its default)."""
_NOCMD = "##PYINFRA_NOCMD##"
_DROPPED = frozenset({"_timeout", "_success_exit_codes", "_retries", "_retry_delay",
                      "_retry_until", "_get_pty", "_stdin"})
"""Connector arguments that do not change what a fact's command prints."""
_CLOCKS = frozenset({"server.Date", "server.Uptime"})
"""Facts that differ at every reading: a host whose apply reads one is always applied."""
_PATHS = frozenset({"open", "os.stat", "os.listdir", "os.scandir"})
"""Audit events (and ``os.stat``, ``lstat``, ``access``, watched here) naming a local path."""
_SECRET_ARGUMENTS = frozenset({"_sudo_password", "_su_password"})
_EVENTS = {"subprocess.Popen": "starts a local program", "os.system": "starts a local program",
           "os.exec": "starts a local program", "os.posix_spawn": "starts a local program",
           "os.fork": "starts a local process", "socket.connect": "opens a network connection"}


def _site(root: Path) -> str:
    """`` (deploys/<svc>/FILE:LINE)`` of the innermost repository frame, or ""."""
    prefix = f"{root}{os.sep}"
    frame: Any = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(prefix):
            return f" ({frame.f_code.co_filename.removeprefix(prefix)}:{frame.f_lineno})"
        frame = frame.f_back
    return ""


class Recorder:
    """The facts each host read in this worker, and what makes a host unfit to skip."""

    def __init__(self, skip: Skip, declared: DeclaredState) -> None:
        self.skip = skip
        self.key = bytes.fromhex(skip.key)
        self.folder = Path(skip.folder)
        self.root = Path(declared.root).absolute()
        self.real_root = os.path.realpath(self.root)
        self.redact = tuple(s for s in declared.redact if s)
        self.services = {h.name: tuple(h.services) for h in declared.hosts}
        self.reads: dict[str, dict[tuple[Any, ...], FactRead]] = defaultdict(dict)
        self.unfit: dict[str, str] = {}
        self.deploying: Counter[str] = Counter()
        """Hosts whose deploy code runs now (its file loads, an operation's body)."""
        self.active = 0
        self._auditing = False
        """Deploy code runs now on any host (the audit hook returns at once otherwise)."""
        self.basis = f"{skip.basis}:pyinfra {metadata.version('pyinfra')}"
        self.reading: Counter[str] = Counter()
        """Hosts reading a fact now (nested: a fact's precondition reads another)."""
        self.notes: dict[str, str] = {}
        """host -> ``NO_CHANGE`` or why its apply is a full one."""
        import gitops

        self._allowed = tuple(dict.fromkeys(
            folder for folder in (os.path.join(os.path.realpath(p), "") for p in (
                sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__),
                os.path.dirname(pyinfra.__file__), os.path.dirname(gitops.__file__),
                *site.getsitepackages()))
            if folder != os.sep))
        """Python's own files (imports): not state a deploy reads. Not ``sys.path``: its
        first entry is the worker's current folder, which may be any (``/``)."""

    # -- recording ------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap pyinfra's fact reading and ``Host``'s remote calls; add the audit hook."""
        inner = pyinfra_facts._get_fact

        def get_fact(state: Any, host: Any, cls: Any, args: Any = None, kwargs: Any = None,
                     ensure_hosts: Any = None, apply_failed_hosts: bool = True) -> Any:
            current = ctx_host.get() if ctx_host.isset() else None
            if current is not None and current is not host:
                self.mark(current.name, f"its deploy reads a fact of another host ({cls.name})")
            self.reading[host.name] += 1
            try:
                value = inner(state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)
            except MissingCommandError:
                self.note(state, host, cls, args, kwargs, _MISSING)
                raise
            except FactPreconditionError:
                self.mark(host.name, f"a precondition of fact {cls.name} did not hold")
                raise
            finally:
                self.reading[host.name] -= 1
            self.note(state, host, cls, args, kwargs, value)
            return value

        pyinfra_facts._get_fact = get_fact
        for method, what in (("run_shell_command", "runs a command on the host"),
                             ("get_file", "fetches a file from the host"),
                             ("put_file", "puts a file on the host")):
            setattr(Host, method, self._watched(getattr(Host, method), what))
        sys.addaudithook(self._audit)
        for name in ("stat", "lstat", "access"):  # not audited: a deploy may test a path
            setattr(os, name, self._stat_watched(getattr(os, name)))

    def _stat_watched(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
            if self.active and isinstance(path, str | bytes | os.PathLike):
                self._audit("os.stat", (os.fspath(path),))
            return call(path, *args, **kwargs)

        return watched

    def _watched(self, call: Callable[..., Any], what: str) -> Callable[..., Any]:
        recorder = self

        def watched(host: Any, *args: Any, **kwargs: Any) -> Any:
            if recorder.deploying[host.name] and not recorder.reading[host.name]:
                recorder.mark(host.name, f"its deploy {what} outside facts"
                                         f"{_site(recorder.root)}")
            return call(host, *args, **kwargs)

        return watched

    @contextlib.contextmanager
    def deploying_on(self, host: str) -> Iterator[None]:
        """Deploy code of ``host`` runs inside (its file loads)."""
        self.deploying[host] += 1
        self.active += 1
        try:
            yield
        finally:
            self.deploying[host] -= 1
            self.active -= 1

    def body(self, host: str, generator: Callable[[], Iterator[Any]]
             ) -> Callable[[], Iterator[Any]]:
        """``generator`` (an operation's commands) with its body watched as deploy code; the
        commands it yields run outside (pyinfra executes them after the ``yield``)."""

        def watched() -> Iterator[Any]:
            inner = generator()
            while True:
                with self.deploying_on(host):
                    try:
                        command = next(inner)
                    except StopIteration:
                        return
                yield command

        return watched

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or self._auditing or (event not in _PATHS and event not in _EVENTS):
            return
        self._auditing = True  # ``realpath`` below stats paths itself
        try:
            self._audited(event, args)
        except Exception:  # an audit hook must not break what it watches
            return
        finally:
            self._auditing = False

    def _audited(self, event: str, args: tuple[Any, ...]) -> None:
        if not ctx_host.isset():
            return
        name = ctx_host.get().name
        if not self.deploying[name] or self.reading[name]:
            return
        if event in _PATHS and args and isinstance(args[0], str | bytes):
            path = os.path.realpath(os.fsdecode(args[0]))
            if not self._covered(name, path):
                self.mark(name, f"its deploy reads {path}, which no fingerprint covers"
                                f"{_site(self.root)}")
        elif event in _EVENTS:
            self.mark(name, f"its deploy {_EVENTS[event]}{_site(self.root)}")

    def _covered(self, host: str, path: str) -> bool:
        """Whether ``path`` is Python's own or a file of the repository the fingerprints of
        ``host``'s services cover (``gitops.pipeline.services.service_digests``)."""
        if path == os.devnull or path.startswith(self._allowed):
            return True
        root = self.real_root
        if not path.startswith(f"{root}{os.sep}"):
            return False
        parts = Path(path).relative_to(root).parts
        if parts[0] == "deploys":
            return len(parts) > 2 and parts[1] in self.services.get(host, ())
        return parts[0] != "inventories" and not parts[0].startswith(".")

    def mark(self, host: str, why: str) -> None:
        self.unfit.setdefault(host, why)

    def note(self, state: Any, host: Any, cls: Any, args: Any, kwargs: Any, value: Any) -> None:
        """Keep the first reading of each fact (a no-change apply reads each once)."""
        name = host.name
        try:
            context = host.current_op_global_arguments or {}
            key: tuple[Any, ...] = (cls, repr(args), repr(sorted((kwargs or {}).items())),
                                    repr(sorted((k, repr(v)) for k, v in context.items()
                                                if k in CONNECTOR_ARGUMENT_KEYS)))
        except Exception:
            self.mark(name, f"fact {cls.name} has arguments that cannot be recorded")
            return
        if key in self.reads[name] or name in self.unfit:
            return
        why = self._unrecordable(cls)
        if why is None:
            try:
                fact_kwargs, global_kwargs = pyinfra_facts._handle_fact_kwargs(
                    state, host, cls, args, kwargs)
                fact_kwargs = {k: v for k, v in fact_kwargs.items() if k != "self"}
                conn = {k: global_kwargs[k] for k in CONNECTOR_ARGUMENT_KEYS
                        if global_kwargs.get(k) and k not in _DROPPED}
                text = json.dumps([fact_kwargs, conn], sort_keys=True)
            except Exception as exc:
                why = f"fact {cls.name} has arguments that cannot be recorded: {exc!r}"
            else:
                if _SECRET_ARGUMENTS & set(conn):
                    why = f"fact {cls.name} is read with a password"
                elif any(s in text for s in self.redact):
                    why = f"the arguments of fact {cls.name} hold a secret"
        if why is not None:
            self.mark(name, why)
            return
        self.reads[name][key] = FactRead(
            fact=f"{cls.__module__}:{cls.__qualname__}", kwargs=fact_kwargs, connector=conn,
            digest=factskip.digest(self.key, value))

    @staticmethod
    def _unrecordable(cls: Any) -> str | None:
        if cls.name in _CLOCKS:
            return (f"its apply reads the host's clock (fact {cls.name}), which differs at "
                    "every run")
        if getattr(cls, "shell_executable", None):
            return f"fact {cls.name} runs in a shell of its own"
        try:
            found = getattr(importlib.import_module(cls.__module__), cls.__qualname__)
        except (ImportError, AttributeError):
            found = None
        if found is not cls:
            return f"fact {cls.name} cannot be imported by name (defined in a deploy file?)"
        return None

    # -- the check before an apply -----------------------------------------------------------

    def prints(self, host: str) -> dict[str, str]:
        wanted = self.services.get(host, ())
        return {s: p for s, p in self.skip.prints.get(host, {}).items() if s in wanted}

    def check(self, state: Any, pending: Callable[[str], bool]) -> set[str]:
        """Decide each active host; gather where the record allows; the hosts found
        unchanged (their ``notes`` say ``NO_CHANGE``, the others' why not)."""
        todo = []
        for host in state.active_hosts:
            record = factskip.load(self.folder, host.name)
            why = factskip.decide(record, self.prints(host.name), self.basis,
                                  pending=pending(host.name))
            if why is None and record is not None:
                todo.append((host, record))
            else:
                self.notes[host.name] = f"full apply: {why}"

        def one(host: Any, record: HostRecord) -> None:
            try:
                digests, why = self.gather(host, record)
            except Exception as exc:  # a lost connection: the full apply reports it
                digests, why = None, f"{type(exc).__name__}: {exc}"[:200]
            note = factskip.compared(record, digests, why)
            self.notes[host.name] = note if note == factskip.NO_CHANGE else f"full apply: {note}"

        gevent.joinall([state.pool.spawn(one, h, r) for h, r in todo])
        return {name for name, note in self.notes.items() if note == factskip.NO_CHANGE}

    def gather(self, host: Any, record: HostRecord) -> tuple[list[str] | None, str]:
        """The digests of ``record``'s facts read again now (``read_again``); (None, why)
        when they cannot be."""
        values, why = read_again(host, record.facts)
        if values is None:
            return None, why
        return [factskip.digest(self.key, value) for value in values], ""

    # -- after the apply ----------------------------------------------------------------------

    def finish(self, report: ApplyReport, skipped: set[str]) -> None:
        """Write each applied host's record: its facts after an apply that changed nothing,
        else why the next one is full; none for a host that failed."""
        for h in report.hosts:
            if h.host in skipped:
                continue
            if h.status != "ok":
                factskip.forget(self.folder, [h.host])
                continue
            changed = [op.name for op in h.ops if op.status == "changed"]
            unfit = self.unfit.get(h.host, "")
            if not unfit and changed:
                unfit = f"its last apply changed {freetext.some(changed, 3)}"
            facts = tuple({(r.fact, json.dumps([r.kwargs, r.connector], sort_keys=True)): r
                           for r in self.reads.get(h.host, {}).values()}.values()
                          ) if not unfit else ()
            factskip.save(self.folder, h.host, HostRecord(
                prints=self.prints(h.host), basis=self.basis, facts=facts, unfit=unfit))

    def annotate_report(self, report: ApplyReport) -> ApplyReport:
        return report.model_copy(update={"hosts": tuple(
            h.model_copy(update={"fingerprint": self.notes.get(h.host, "")})
            for h in report.hosts)})

    def annotate_plan(self, plan: Plan) -> Plan:
        return plan.model_copy(update={"hosts": tuple(
            h.model_copy(update={"fingerprint": self.notes.get(h.host, "")})
            for h in plan.hosts)})


def read_again(host: Any, reads: Sequence[FactRead]) -> tuple[list[Any] | None, str]:
    """The value of each fact of ``reads`` on ``host`` now, as pyinfra's ``get_fact`` would
    answer it, in one remote command per set of connector arguments: facts of one kind in
    one program run (``factbatch``), and a second command reading one by one what a batch
    could not answer exactly; (None, why) when they cannot be read."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, read in enumerate(reads):
        groups[json.dumps(read.connector, sort_keys=True)].append(index)
    values: list[Any] = [None] * len(reads)
    for conn, indexes in groups.items():
        facts = {index: _prepared(reads[index]) for index in indexes}
        answers, why = _read(host, conn, facts, batched=True)
        rest = {i: facts[i] for i in indexes if answers is not None and answers[i] is None}
        if rest and answers is not None:
            more, why = _read(host, conn, rest, batched=False)
            answers = None if more is None else answers | more
        if answers is None:
            return None, why
        for index in indexes:
            answer = answers[index]
            if answer is None:  # the one-by-one reading answers each fact or fails
                return None, f"no answer for {reads[index].label}"
            values[index] = _value(facts[index].fact, *answer)
    return values, ""


class _Prepared(NamedTuple):
    """A recorded fact made ready to read."""

    fact: Any
    raw: str
    """Its command."""
    form: str | None
    """What runs in the shell itself (``connector.shell_form``), or None."""
    kind: str | None = None
    """Its batch kind (``factbatch``), or None."""
    path: str = ""
    """The path of a ``File``-family or hash fact, the unit of a systemd one."""
    digits: int = 0
    """A hash program's hex digits."""
    key: str = ""
    """A systemd fact's property."""


_WORD = r"""(?:~?[A-Za-z0-9_@%+=:,./-]+|'[^']*'(?:"'"'[^']*')*)"""
"""One word as pyinfra quotes it (``shlex.quote``), or a path from a user's home (``~ops/``)."""
_SIMPLE = re.compile(rf"cat {_WORD} 2>/dev/null \|\| true"
                     rf"|find {_WORD} -type [fdl](?: -maxdepth [0-9]+)? \|\| true")
"""pyinfra's ``AuthorizedKeys`` and ``FindFiles``-family commands: one program, its words
quoted; neither ends nor changes the shell, so they run in ``{ }`` (no subshell's fork)."""
_FILES = (File, Link, Directory, Socket)
_UNIT_FACTS = (SystemdStatus, SystemdEnabled)
_HASHES = {Sha1File: ("sha1sum", 40), Sha256File: ("sha256sum", 64),
           Sha384File: ("sha384sum", 96), Md5File: ("md5sum", 32)}


def _prepared(read: FactRead) -> _Prepared:
    module, _, qualname = read.fact.partition(":")
    cls = getattr(importlib.import_module(module), qualname)
    fact = cls()  # its ``process`` may read what its ``command`` kept (a path)
    raw = _command(fact, read.kwargs)
    form = connector.shell_form(cls, raw) or (raw if _SIMPLE.fullmatch(raw) else None)
    if cls in _UNIT_FACTS and cls.command is SystemdStatus.command \
            and cls.process is SystemdStatus.process and cls.state_key in factbatch.UNIT_STATES \
            and read.kwargs.get("user_mode") is False and read.kwargs.get("machine") is None \
            and read.kwargs.get("user_name") is None and set(read.kwargs) == {
                "user_mode", "machine", "user_name", "services"}:
        unit = factbatch.unit_batchable(read.kwargs["services"])
        if unit is not None:
            return _Prepared(fact, raw, form, factbatch.SYSTEMCTL, unit, key=cls.state_key)
    kind, digits = _kind(cls)
    path = read.kwargs.get("path")
    if kind is None or set(read.kwargs) != {"path"} or not isinstance(path, str) \
            or not factbatch.batchable(kind, path):
        return _Prepared(fact, raw, form)
    return _Prepared(fact, raw, form, kind, path, digits)


def _kind(cls: Any) -> tuple[str | None, int]:
    """The batch kind of fact ``cls`` (its command and ``process`` pyinfra's or
    ``connector``'s), else None."""
    if cls in _FILES and cls.process is File.process and (
            cls.command is connector.PYINFRA_FILE_COMMAND or connector.in_shell(cls)):
        return factbatch.STAT, 0
    program, digits = _HASHES.get(cls, ("", 0))
    if program and cls.command is HashFileFactBase.command \
            and cls.process is HashFileFactBase.process:
        first = re.search(r"(?:\( |then )(\S+) \{0\} 2> /dev/null", cls._raw_cmd)
        if first is not None and first[1] == program:
            return program, digits
    return None, 0


def _read(host: Any, conn: str, facts: dict[int, _Prepared], *, batched: bool
          ) -> tuple[dict[int, factbatch.Answer] | None, str]:
    """Each fact's exit status and stdout lines, read in one remote command (facts of one
    kind in one batch when ``batched``: an answer None is one the batch could not give
    exactly); (None, why) when the command failed."""
    token = f"__gitops_facts_{token_source.token_hex(8)}__"
    kinds: dict[str, list[int]] = defaultdict(list)
    for index, prepared in facts.items():
        if batched and prepared.kind is not None:
            kinds[prepared.kind].append(index)
    parts: list[tuple[list[int], factbatch.Batch | factbatch.UnitBatch | None]] = []
    commands: list[tuple[str, bool]] = []
    placed: set[int] = set()
    for index, prepared in facts.items():
        if index in placed:
            continue
        members = kinds.get(prepared.kind or "", [])
        if len(members) > 1:
            batch: factbatch.Batch | factbatch.UnitBatch = factbatch.UnitBatch(
                units=tuple(facts[i].path for i in members),
                keys=tuple(facts[i].key for i in members),
            ) if prepared.kind == factbatch.SYSTEMCTL else factbatch.Batch(
                kind=prepared.kind or "", digits=prepared.digits,
                quoted=tuple(_quoted(facts[i]) for i in members),
                paths=tuple(facts[i].path for i in members))
            parts.append((members, batch))
            commands.append((batch.script(token), True))
            placed.update(members)
        else:
            parts.append(([index], None))
            commands.append((prepared.form, True) if prepared.form is not None
                            else (prepared.raw, False))
            placed.add(index)
    ok, output = host.run_shell_command(
        StringCommand(factskip.combine(commands, token)), **json.loads(conn))
    pieces = factskip.split(output.stdout_lines, token, len(commands)) if ok else None
    if pieces is None:
        return None, (output.stderr_lines or ["no answer"])[0][:200]
    answers: dict[int, factbatch.Answer] = {}
    for (members, part), (code, lines) in zip(parts, pieces, strict=True):
        found = part.parse(code, lines, token) if part is not None else [(code, lines)]
        answers.update(zip(members, found, strict=True))
    return answers, ""


def _quoted(prepared: _Prepared) -> str:
    """The fact's path quoted as its command quotes it (a ``File`` fact's ``~/`` left for
    the shell to expand, as pyinfra's)."""
    path = prepared.path
    if prepared.kind == factbatch.STAT and path.startswith("~/"):
        quoted = StringCommand("~/", QuoteString(path[2:]), _separator="")
    else:
        quoted = StringCommand(QuoteString(path))
    return str(quoted.get_raw_value())


def _command(fact: Any, kwargs: dict[str, Any]) -> str:
    """``fact``'s command for ``kwargs`` as pyinfra's ``_get_fact`` makes it."""
    command = pyinfra_facts._make_command(fact.command, dict(kwargs))
    requires = pyinfra_facts._make_command(fact.requires_command, dict(kwargs))
    if requires:
        command = StringCommand("if", "command", "-v", requires, ">/dev/null", "2>&1;",
                                "then", "(", command, ");", "else", "echo", f"'{_NOCMD}';",
                                "fi")
    return command.get_raw_value() if isinstance(command, StringCommand) else str(command)


def _value(fact: Any, code: int, lines: list[str]) -> Any:
    """What pyinfra's ``_get_fact`` answers for this exit status and output."""
    if code == 0 and lines == [_NOCMD]:
        return _MISSING
    if code == 0 and lines:
        return fact.process(lines)
    return fact.default()
