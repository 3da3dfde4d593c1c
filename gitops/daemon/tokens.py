"""API tokens: made at random, shown once, kept only as a SHA-256 digest; their names, their
lifetimes (``90d``) and the match of a presented token against the recorded digests."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from gitops.errors import UsageError
from gitops.record.people import TokenRow

__all__ = ["RESERVED", "check_name", "digest", "expiry", "match", "new_token", "parse_lifetime"]

RESERVED = ("api", "local")
"""Names no token may take: ``api`` is the settings' ``api_token``, ``local`` a trusted
loopback client; names starting ``webhook:`` are the webhooks'."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LIFETIME = re.compile(r"^([1-9][0-9]{0,4})([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def check_name(name: str) -> str:
    """``name`` if a token may take it, else ``UsageError`` saying why."""
    if name in RESERVED or name.startswith("webhook:"):
        raise UsageError(f"token name {name!r} is reserved (api, local, webhook:*)")
    if not _NAME.match(name):
        raise UsageError(f"token name {name!r}: lowercase letters, digits, '.', '_' and '-', "
                         "1 to 63 characters, starting with a letter or digit")
    return name


def parse_lifetime(text: str) -> timedelta:
    """``12h``, ``90d``, ``8w`` as a timedelta; ``UsageError`` otherwise."""
    found = _LIFETIME.match(text.strip())
    if found is None:
        raise UsageError(f"--expires {text!r}: write a number and h, d or w (90d), "
                         "or never")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return "gitops_" + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The hex SHA-256 of ``token``: what the record keeps."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def match(rows: Iterable[TokenRow], token: str) -> TokenRow | None:
    """The row whose digest is ``token``'s (compared in constant time), whatever its state."""
    wanted = digest(token).encode()
    found = None
    for row in rows:
        if hmac.compare_digest(row.digest.encode(), wanted):
            found = row
    return found


def expiry(now: datetime, lifetime: str) -> datetime | None:
    """When a token made ``now`` with ``--expires lifetime`` expires (``never``: None)."""
    return None if lifetime == "never" else now + parse_lifetime(lifetime)
