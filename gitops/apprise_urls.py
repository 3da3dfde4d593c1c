"""Apprise (https://github.com/caronc/apprise): one URL per service (Microsoft Teams
``workflows://``, Mattermost ``mmost://``, ntfy ``ntfy://``, e-mail ``mailto://``, Discord,
Google Chat, Matrix, Telegram, PagerDuty, Opsgenie, ...). The only module that imports it
(an import-linter contract keeps it so).

``problem(url)`` parses a URL without sending anything (the settings' check at load);
``send(url, title, body)`` sends one message and says what the service answered. Neither
returns nor logs the URL: it carries the service's token. Apprise's own log lines (which may
name the URL) reach no handler of the process: they are captured into ``Sent.detail``, which
the caller scrubs of the URL before it goes anywhere.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

__all__ = ["Sent", "problem", "send"]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,11}")
_STATUS = re.compile(r"error=([1-5]\d\d)\b")


@dataclass(frozen=True)
class Sent:
    """What came of one message: ``ok``, the HTTP status the service answered if one was
    logged, and Apprise's own words (scrubbed by the caller)."""

    ok: bool
    status: int | None
    detail: str


def problem(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (its scheme unknown, a part missing), or None."""
    import apprise

    if "://" not in url:
        return "not an Apprise URL (write scheme://...)"
    scheme = url.split("://", 1)[0]
    named = f"{scheme}:// " if _SCHEME.fullmatch(scheme) else ""  # a scheme, not a token
    if not apprise.Apprise().add(url):
        return f"Apprise cannot use this {named}URL (unknown scheme or a part missing)"
    return None


def send(url: str, title: str, body: str, *, failure: bool = False) -> Sent:
    """Send one message through Apprise; never raises. ``failure`` marks it as such (a red
    card, an urgent priority, where the service has one)."""
    import apprise

    logging.getLogger("apprise").propagate = False  # its words may hold the URL: ours scrub
    app = apprise.Apprise()
    if not app.add(url):
        return Sent(False, None, "Apprise cannot use this URL")
    kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.INFO
    with apprise.LogCapture(level=logging.INFO,  # type: ignore[no-untyped-call]
                            fmt="%(message)s") as captured:
        try:
            ok = bool(app.notify(body=body, title=title, notify_type=kind,
                                 body_format=apprise.NotifyFormat.TEXT))
        except Exception as exc:  # a plugin's own bug must not reach a reconcile
            ok = False
            captured.write(f"{type(exc).__name__}: {exc}\n")
        lines = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
    said = [line for line in lines if "Payload" not in line
            and not line.startswith("Notifying ")]
    status = None
    for line in reversed(said):
        found = _STATUS.search(line)
        if found:
            status = int(found.group(1))
            break
    detail = " | ".join(said[-3:])[:400] or ("sent" if ok else "not sent")
    return Sent(ok, status, detail)
