"""Secrets inside the worker processes: decrypted files uploaded from memory, values blanked.

Called by the apply and verify workers' ``main()``. ``serve_decrypted_files`` makes pyinfra's
``files.put`` upload the plain content ``load`` decrypted (``DeclaredState.secret_files``)
whenever a deploy names a ``*.sops.*`` file as ``src``: the encrypted file stays in the
snapshot, the plain one is never written on the control host. ``redact`` blanks every plain
secret value (``DeclaredState.redact``) out of a worker's result, and ``RedactingStream`` out
of its stderr (progress lines, tracebacks): a file diff that shows a secret becomes
``<secret changed>``, any other text gets ``<secret>`` in the value's place.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from gitops.model import DeclaredState

__all__ = ["CHANGED", "HIDDEN", "RedactingStream", "redact", "redact_text",
           "serve_decrypted_files"]

CHANGED = "<secret changed>"
HIDDEN = "<secret>"

_R = TypeVar("_R", bound=BaseModel)


def serve_decrypted_files(state: DeclaredState) -> None:
    """Wrap ``pyinfra.operations.files.put`` so a ``src`` that is one of the state's
    decrypted ``*.sops.*`` files is uploaded from memory, decrypted."""
    if not state.secret_files:
        return
    from pyinfra.operations import files

    root = Path(state.root).resolve()
    plain = {(root / rel).resolve(): content for rel, content in state.secret_files.items()}
    original = files.put

    def put(*args: Any, **kwargs: Any) -> Any:
        src = kwargs.get("src", args[0] if args else None)
        if isinstance(src, str | Path):
            path = Path(src) if Path(src).is_absolute() else Path(state.root) / src
            content = plain.get(path.resolve())
            if content is not None:
                _SECRET_DESTS.add(str(kwargs.get("dest", args[1] if len(args) > 1 else "")))
                data = io.BytesIO(base64.b64decode(content))
                if "src" in kwargs:
                    kwargs["src"] = data
                else:
                    args = (data, *args[1:])
        return original(*args, **kwargs)

    functools.update_wrapper(put, original)  # keeps ``_inner``, which other operations call
    files.put = put  # type: ignore[assignment]


MIN_TEXT = 4
"""Shorter secrets are not blanked out of text (they would blank unrelated words); a diff
line showing one as a word still hides the whole diff."""
PARTIAL = 10
"""Any run of this many characters of a one-line secret is blanked too (pytest, for one,
shortens long values in assertion messages to their two ends)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SECRET_DESTS: set[str] = set()
"""Remote paths the decrypted files are uploaded to: their diffs are always blanked."""


def _spans(text: str, secrets: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where ``text`` shows a secret, whole or a piece of ``PARTIAL`` characters or more."""
    marks = bytearray(len(text))
    secrets = tuple(v for v in secrets if len(v) >= MIN_TEXT)
    for value in secrets:
        start = text.find(value)
        while start != -1:
            marks[start:start + len(value)] = b"\1" * len(value)
            start = text.find(value, start + 1)
    grams = {v[i:i + PARTIAL] for v in secrets if len(v) >= PARTIAL and "\n" not in v
             for i in range(len(v) - PARTIAL + 1)}
    if grams:
        for i in range(len(text) - PARTIAL + 1):
            if text[i:i + PARTIAL] in grams:
                marks[i:i + PARTIAL] = b"\1" * PARTIAL
    spans: list[tuple[int, int]] = []
    i = marks.find(1)
    while i != -1:
        end = marks.find(0, i)
        end = len(text) if end == -1 else end
        spans.append((i, end))
        i = marks.find(1, end)
    return spans


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret value, or piece of one, replaced by ``<secret>``."""
    out, last = [], 0
    for start, end in _spans(text, secrets):
        out += [text[last:start], HIDDEN]
        last = end
    return "".join([*out, text[last:]]) if out else text


def _redact_diff(diff: str, secrets: tuple[str, ...]) -> str:
    """A diff that shows any secret, or of a decrypted file, is replaced whole (its removed
    lines may hold a secret this revision no longer knows), but for its first line
    (``Will modify <path>``)."""
    first = diff.split("\n", 1)[0]
    secret_file = any(first.endswith(f" {dest}") for dest in _SECRET_DESTS)
    short = [re.compile(rf"(?<!\w){re.escape(v)}(?!\w)") for v in secrets if len(v) < MIN_TEXT]
    lines = [_ANSI.sub("", line).lstrip() for line in diff.split("\n")[1:]]
    changed = [line for line in lines if line[:1] in ("+", "-")]
    if (not secret_file and not _spans(diff, secrets)
            and not any(rx.search(line) for rx in short for line in changed)):
        return diff
    keep = [first] if "Will " in first and not _spans(first, secrets) else []
    return "\n".join([*keep, f"  {CHANGED}"])


def redact(result: _R, secrets: tuple[str, ...]) -> _R:
    """``result`` (any worker result model) with every secret blanked out."""
    if not secrets and not _SECRET_DESTS:
        return result

    def walk(value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            return _redact_diff(value, secrets) if key == "diff" else redact_text(value, secrets)
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return type(result).model_validate(walk(result.model_dump(mode="json")))


class RedactingStream(io.TextIOBase):
    """A text stream that writes to ``stream`` with every secret value blanked out."""

    def __init__(self, stream: Any, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.stream = stream
        self.secrets = secrets

    def write(self, text: str) -> int:
        self.stream.write(redact_text(text, self.secrets))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return int(self.stream.fileno())

    def isatty(self) -> bool:
        return False
