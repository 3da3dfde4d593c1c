"""Progress on stderr while a run goes: each line as it comes and, on a terminal, one live
line below them with every host's state."""

from __future__ import annotations

import re
import sys
from typing import IO

import click

__all__ = ["LiveProgress", "live_progress"]


def live_progress(as_json: bool) -> LiveProgress:
    return LiveProgress(sys.stderr)


_BATCH = re.compile(r"^batch \d+/\d+(?: \(canary\))?: applying on ([^()]+?)(?: \(|$)")
_VERIFIED = re.compile(r"^([A-Za-z0-9_.-]+): (\d+) passed, (\d+) failed, (\d+) errors")
_UNREACHABLE = re.compile(r"^([A-Za-z0-9_.-]+): unreachable")


class LiveProgress:
    """LiveProgress on stderr: each line as it comes and, on a terminal, one live line below
    them with every host's state (waiting, applying, checks passed or failed)."""

    def __init__(self, stream: IO[str], tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.hosts: dict[str, str] = {}
        self.shown = False

    def __call__(self, line: str) -> None:
        self._track(line)
        self._clear()
        click.secho(f"· {line}", file=self.stream, dim=True)
        if self.tty and self.hosts:
            self.stream.write(self.status_line())
            self.stream.flush()
            self.shown = True

    def status_line(self) -> str:
        return "  ".join(f"{host} {state}" for host, state in self.hosts.items())

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def _track(self, line: str) -> None:
        if (m := _BATCH.match(line)) is not None:
            for host in m.group(1).split(", "):
                self.hosts[host.strip()] = "applying"
        elif (m := _VERIFIED.match(line)) is not None:
            bad = int(m.group(3)) + int(m.group(4))
            self.hosts[m.group(1)] = f"✗ {bad} failed" if bad else f"✓ {m.group(2)} passed"
        elif (m := _UNREACHABLE.match(line)) is not None:
            self.hosts[m.group(1)] = "✗ unreachable"
