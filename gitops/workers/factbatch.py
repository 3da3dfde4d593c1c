"""Facts of one kind read by one program run: the fingerprint check's cut of processes.

``gitops.workers.factcheck.Recorder.gather`` reads a host's recorded facts again in one remote
command; run one by one, each ``File``-family fact (``File``, ``Link``, ``Directory``,
``Socket``) starts a ``stat`` and each hash fact (``Sha1File``, ...) a ``sha1sum``. Here
the paths of the facts of one kind (and one set of connector arguments) go to one program
run, ``Batch.script``, and ``Batch.parse`` hands each fact the exit status and stdout lines
its own command would have given:

- ``stat``: each path is tested in the shell as pyinfra's command tests it (``test -e P ||
  test -L P``, builtins), a line of ``0``/``1`` says which exist, then one ``stat`` over
  those prints each record in pyinfra's format followed by a line holding the marker:
  a path's record is exactly what ``stat -c FORMAT P`` prints, whatever its name holds.
- ``sha1sum`` (and the other hash programs): ``test -e`` then ``test -f`` per path, one
  program over the regular files; each line must be ``<hex>  <path>``, the line that
  program prints for that path alone.
- ``systemctl`` (``UnitBatch``): the ``SystemdStatus`` and ``SystemdEnabled`` facts of
  named units in one ``systemctl show`` of both properties; a unit's block (``Id``,
  ``SubState``, ``UnitFileState``: systemd prints them in that order whatever the order
  asked, one block per name given, aliases resolved as for one) less the other fact's line
  is what that fact's own ``systemctl show`` prints.

What this cannot answer exactly is ``None`` (``UNSURE``): the program failed or is missing,
a record is missing or out of shape, a hashed path exists but is not a regular file. The
caller then reads those facts with their own commands, as before; it never guesses. A path
that pyinfra's command would hand its program as an option (a leading ``-``), or that a hash
program escapes in its output (a backslash, newline or carriage return), is not batched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra.facts.files import LINUX_STAT_COMMAND

__all__ = ["STAT", "SYSTEMCTL", "UNIT_STATES", "UNSURE", "Answer", "Batch", "UnitBatch",
           "batchable", "unit_batchable"]

Answer = tuple[int, list[str]] | None
"""A fact's exit status and stdout lines as its own command gives them; None: unsure."""
UNSURE: Answer = None

STAT = "stat"
"""The kind of the ``File`` family (any other kind is a hash program's name)."""
_STAT_PREFIX = "stat -c '"
STAT_FORMAT = LINUX_STAT_COMMAND.removeprefix(_STAT_PREFIX).removesuffix("'") \
    if LINUX_STAT_COMMAND.startswith(_STAT_PREFIX) and LINUX_STAT_COMMAND.endswith("'") \
    and "'" not in LINUX_STAT_COMMAND[len(_STAT_PREFIX):-1] \
    and "\\" not in LINUX_STAT_COMMAND else None
"""pyinfra's GNU ``stat`` format (None if pyinfra's command has another shape: no batch)."""
SYSTEMCTL = "systemctl"
UNIT_STATES = ("SubState", "UnitFileState")
"""The properties of ``SystemdStatus`` and ``SystemdEnabled``, in systemd's order."""
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.@-]*\.(?:service|socket|device|mount|automount"
                   r"|swap|target|path|timer|slice|scope)")
"""A unit named in full: no pattern, nothing to quote or escape."""
_FLAGS = "__gitops_e"
_STATUS = "__gitops_s"


def batchable(kind: str, path: object) -> bool:
    """Whether a fact of ``kind`` on ``path`` may be read in a batch."""
    if not isinstance(path, str) or path.startswith("-"):
        return False
    if kind == STAT:
        return STAT_FORMAT is not None
    return not any(c in path for c in "\\\n\r")


def unit_batchable(services: object) -> str | None:
    """The one unit ``services`` (a ``SystemdStatus`` argument) names, if it may be read in
    a batch."""
    if isinstance(services, list | tuple) and len(services) == 1:
        services = services[0]
    return services if isinstance(services, str) and _UNIT.fullmatch(services) else None


@dataclass(frozen=True)
class Batch:
    """One program run reading the facts of one kind on ``paths``."""

    kind: str
    """``STAT`` or a hash program (``sha1sum``)."""
    quoted: tuple[str, ...]
    """Each path as its fact's command quotes it (``~/'x'`` for a ``File`` fact's ``~/x``)."""
    paths: tuple[str, ...]
    """Each path as given (a hash program's line names it so)."""
    digits: int = 0
    """A hash program's hex digits."""

    def script(self, token: str) -> str:
        """Shell text for ``sh`` that neither ends nor changes it (its variables and
        positional parameters reset after): the flags line, then the program's output;
        exit status 0 when the program succeeded or had nothing to read."""
        tests = []
        for path in self.quoted:
            add = f'set -- "$@" {path}; {_FLAGS}=${{{_FLAGS}}}1'
            none = f"{_FLAGS}=${{{_FLAGS}}}0"
            if self.kind == STAT:
                tests.append(f"if test -e {path} || test -L {path}; then {add}; "
                             f"else {none}; fi")
            else:
                tests.append(f"if test -e {path}; then if test -f {path}; then {add}; "
                             f"else {_FLAGS}=${{{_FLAGS}}}2; fi; else {none}; fi")
        if self.kind == STAT:
            program = f"stat --printf '{STAT_FORMAT}\\n{token}\\n' \"$@\" 2>/dev/null"
        else:
            program = f'{self.kind} "$@" 2>/dev/null'
        return "\n".join([
            f"set --; {_FLAGS}=", *tests, f"printf '%s\\n' \"${_FLAGS}\"",
            f'if test "$#" -gt 0; then {program}; fi; {_STATUS}=$?',
            f'set --; {_FLAGS}=; test "${_STATUS}" -eq 0'])

    def parse(self, code: int, lines: list[str], token: str) -> list[Answer]:
        """Each path's answer from the script's exit status and stdout lines."""
        count = len(self.paths)
        if not lines or len(lines[0]) != count or set(lines[0]) - set("012"):
            return [UNSURE] * count
        flags = lines[0]
        present = flags.count("1")
        records = _records(lines[1:], token) if self.kind == STAT else \
            [[line] for line in lines[1:]]
        if code != 0 or records is None or len(records) != present or \
                (self.kind == STAT and "2" in flags):
            return [(0, []) if flag == "0" else UNSURE for flag in flags]
        answers: list[Answer] = []
        found = iter(records)
        for flag, path in zip(flags, self.paths, strict=True):
            if flag == "0":
                answers.append((0, []))
            elif flag == "2":
                answers.append(UNSURE)
            else:
                record = next(found)
                answers.append((0, record) if self.kind == STAT
                               or _hash_line(record[0], path, self.digits) else UNSURE)
        return answers


def _records(lines: list[str], token: str) -> list[list[str]] | None:
    """``stat``'s records, each ended by a line ``token``; None if one is empty or output
    follows the last."""
    records: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line == token:
            records.append(current)
            current = []
        else:
            current.append(line)
    return None if current or any(not r for r in records) else records


def _hash_line(line: str, path: str, digits: int) -> bool:
    """Whether ``line`` is the GNU line of ``path``'s hash (two spaces: text mode)."""
    head, sep, tail = line.partition("  ")
    return bool(sep) and tail == path and re.fullmatch(f"[0-9a-f]{{{digits}}}", head) \
        is not None


@dataclass(frozen=True)
class UnitBatch:
    """One ``systemctl show`` reading the state of each member's unit."""

    units: tuple[str, ...]
    """Each member's unit (``unit_batchable``)."""
    keys: tuple[str, ...]
    """Each member's property (one of ``UNIT_STATES``)."""

    @property
    def named(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.units))

    def script(self, token: str) -> str:
        """Shell text for ``sh``: one ``systemctl show`` of every unit, both properties."""
        asked = " ".join(f"--property {key}" for key in ("Id", *UNIT_STATES))
        return f"systemctl show --all {asked} {' '.join(self.named)}"

    def parse(self, code: int, lines: list[str], token: str) -> list[Answer]:
        """Each member's lines: its unit's block less the other property's line."""
        named = self.named
        blocks: list[list[str]] = [[]]
        for line in lines:
            if line:
                blocks[-1].append(line)
            else:
                blocks.append([])
        shape = ("Id", *UNIT_STATES)
        if code != 0 or len(blocks) != len(named) or any(
                [line.split("=", 1)[0] if "=" in line else None for line in block]
                != list(shape) for block in blocks):
            return [UNSURE] * len(self.units)
        found = dict(zip(named, blocks, strict=True))
        return [(0, [line for line in found[unit] if line.partition("=")[0] in ("Id", key)])
                for unit, key in zip(self.units, self.keys, strict=True)]
