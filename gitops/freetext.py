"""Free text from outside: reasons, actors, post-mortem notes. Checked at the edge, escaped
when printed.

The API (``server``) and the CLI (``cli``) check what they accept with ``line`` (a reason, an
actor: one line of at most ``MAX_LINE`` characters) and ``note`` (a post-mortem text: lines
of at most ``MAX_NOTE`` characters in all); a control character (ESC, a carriage return,
NUL, DEL, C1), a Unicode line separator or a bidirectional override is refused, and a
newline too in a line: a reason can add no line to ``gitops history`` and move no cursor.
The refusal is ``BadText`` (a ``UsageError``: exit 2, HTTP 400) naming the field.

Records written before these checks may hold anything: ``shown`` (one line) and
``shown_text`` (newlines and tabs kept) escape what a terminal would act on, for every
command that prints stored text.
"""

from __future__ import annotations

import unicodedata

from gitops.errors import UsageError

__all__ = ["MAX_LINE", "MAX_NOTE", "BadText", "line", "note", "problem", "shown", "shown_text",
           "some"]

MAX_LINE = 500
"""The longest reason or actor accepted (characters)."""
MAX_NOTE = 4000
"""The longest post-mortem text accepted (characters; ``incidents.MAX_TEXT``)."""

_FORMAT = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional marks and overrides: they reorder what a terminal shows."""


class BadText(UsageError):
    """Text from outside that is not one clean line (or note): exit 2, HTTP 400."""


def _unsafe(char: str, keep: str) -> bool:
    if char in keep:
        return False
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _FORMAT


def problem(value: str, *, multiline: bool = False, limit: int = MAX_LINE) -> str | None:
    """What is wrong with ``value`` as a line (or, ``multiline``, a note), or None."""
    if len(value) > limit:
        return f"over {limit} characters ({len(value)})"
    keep = "\n\t" if multiline else ""
    for at, char in enumerate(value, 1):
        if char == "\n" and not multiline:
            return f"a newline at character {at}: one line only"
        if _unsafe(char, keep):
            return f"a control character (U+{ord(char):04X}) at character {at}"
    return None


def line(field: str, value: str, *, limit: int = MAX_LINE) -> str:
    """``value`` unchanged when it is one clean line of at most ``limit`` characters, else
    ``BadText`` naming ``field`` (``'reason'``, ``--reason``)."""
    wrong = problem(value, limit=limit)
    if wrong is not None:
        raise BadText(f"{field}: {wrong}")
    return value


def note(field: str, value: str, *, limit: int = MAX_NOTE) -> str:
    """``value`` unchanged when it is clean text (newlines and tabs allowed) of at most
    ``limit`` characters, else ``BadText`` naming ``field``."""
    wrong = problem(value, multiline=True, limit=limit)
    if wrong is not None:
        raise BadText(f"{field}: {wrong}")
    return value


def _escape(char: str) -> str:
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object) -> str:
    """``value`` as one printable line: newlines, tabs and every control character escaped
    (``\\n``, ``\\x1b``, ``\\u202e``); clean text unchanged. None is ""."""
    text = "" if value is None else str(value)
    if not any(_unsafe(c, "") for c in text):
        return text
    return "".join(_escape(c) if _unsafe(c, "") else c for c in text)


def shown_text(value: object) -> str:
    """``value`` printable as lines: newlines and tabs kept, every other control character
    escaped. None is ""."""
    text = "" if value is None else str(value)
    if not any(_unsafe(c, "\n\t") for c in text):
        return text
    return "".join(_escape(c) if _unsafe(c, "\n\t") else c for c in text)


def some(names: list[str], most: int = 5) -> str:
    """``a, b, c`` or, past ``most`` names, ``a, b, c and 7 more``."""
    shown_ = ", ".join(names[:most])
    return shown_ + (f" and {len(names) - most} more" if len(names) > most else "")
