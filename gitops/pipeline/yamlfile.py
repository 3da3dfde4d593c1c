"""Reading a declaration file: YAML loaded safely and losslessly (``read_yaml``), and its
problems and warnings collected at their lines (``Problems``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from gitops.errors import InvalidDeclaration, Problem
from gitops.model import (
    unsafe_reason,
)

__all__ = ['MAX_DEPTH', 'MAX_NODES', 'Loc', 'Problems', 'field_path', 'read_yaml']

Loc = tuple[str | int, ...]


MAX_DEPTH = 50
"""Deepest nesting of YAML collections accepted (deeper is surely a mistake)."""


MAX_NODES = 100_000
"""Most values a YAML file may expand to, aliases counted each time they are used (a
"billion laughs" alias bomb is refused instead of filling memory)."""


_STR = "tag:yaml.org,2002:str"


_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, made strict: only JSON's types are built (no dates, sets,
    binary or objects), and nesting deeper than ``MAX_DEPTH`` is an error, not a crash."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, node: yaml.Node) -> None:
        raise yaml.constructor.ConstructorError(
            None, None, f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
            "(strings, numbers, booleans, null, lists and mappings only)", node.start_mark)


# Unquoted dates stay strings (as in JSON); explicit non-JSON tags are refused.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader._refuse)


def read_yaml(path: Path, rel: str, revision: str | None = None) -> tuple[Any, dict[Loc, int]]:
    """The one reader of a YAML file of the repository: its data and the 1-based line of
    every key path. Raises ``InvalidDeclaration`` (file ``rel``, a line) for bytes that are
    not UTF-8, a YAML error, duplicate keys, keys that are not strings, aliases that refer to
    themselves or expand too far, or a tag that would build anything but JSON's types."""

    def fail(line: int, message: str) -> InvalidDeclaration:
        return InvalidDeclaration([Problem(rel, max(line, 1), "", message)], revision)

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(1, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(raw[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks every character
        node = loader.get_single_node()
        problems: list[Problem] = []
        lines = _check_nodes(node, rel, problems)
        if problems:
            raise InvalidDeclaration(problems, revision)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise fail(line, f"YAML: {what or 'cannot be parsed'}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text[: exc.position].count("\n") + 1
        raise fail(line, f"YAML: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:
        raise fail(1, f"YAML: {type(exc).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


class _TooBig(Exception):
    """Stops the walk of a document at the first node that expands too far."""


def _check_nodes(root: yaml.Node | None, rel: str, problems: list[Problem]) -> dict[Loc, int]:
    """Line index of a composed document; problems for duplicate or non-string keys, and
    aliases that refer to themselves or expand to more than ``MAX_NODES`` values."""
    index: dict[Loc, int] = {}
    if root is None:
        return index
    index[()] = 1
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def line(node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1

    def walk(node: yaml.Node, path: Loc | None) -> int:
        """Size of ``node`` with its aliases expanded; ``path`` None below an alias (its
        keys are already indexed where the anchor is)."""
        if id(node) in open_nodes:
            problems.append(Problem(rel, line(node), "", "YAML: an alias refers to itself"))
            return 0
        if id(node) in sizes:
            return sizes[id(node)]
        open_nodes.add(id(node))
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                sub: Loc | None = None
                if key_node.tag == _MERGE:
                    pass
                elif not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                    problems.append(Problem(rel, line(key_node), "",
                                            "a key should be a string (quote it)"))
                else:
                    key = str(key_node.value)
                    if path is not None:
                        sub = (*path, key)
                        index.setdefault(sub, line(key_node))
                    if key in seen:
                        field = field_path(sub or (key,))
                        problems.append(Problem(rel, line(key_node), field,
                                                f"duplicate key (first at line {seen[key]})"))
                    seen.setdefault(key, line(key_node))
                size += walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = (*path, i) if path is not None else None
                if sub is not None:
                    index.setdefault(sub, line(item))
                size += walk(item, sub)
        open_nodes.discard(id(node))
        sizes[id(node)] = size
        if size > MAX_NODES:
            problems.append(Problem(rel, line(node), "",
                                    f"YAML: expands to more than {MAX_NODES} values (aliases)"))
            raise _TooBig
        return size

    with contextlib.suppress(_TooBig):
        walk(root, ())
    return index


def field_path(loc: Loc) -> str:
    """A key path for messages; control characters in keys escaped (one line per problem)."""
    return ".".join(str(part).encode("unicode_escape").decode("ascii")
                    if unsafe_reason(str(part)) else str(part) for part in loc)


class Problems:
    """Collects problems (and warnings), placing each at the line of the nearest declared key."""

    def __init__(self, file: str, lines: dict[Loc, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[Problem] = []
        self.warnings: list[Problem] = []

    def at(self, loc: Loc, message: str) -> Problem:
        line = 1
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                line = self.lines[loc[:n]]
                break
        return Problem(self.file, line, field_path(loc), message)

    def add(self, loc: Loc, message: str) -> None:
        problem = self.at(loc, message)
        if problem not in self.items:  # the same group error shows once, not once per host
            self.items.append(problem)

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(self.at(loc, message))
