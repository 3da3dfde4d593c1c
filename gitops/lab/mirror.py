"""The lab's package mirror: a plain HTTP server on the bridge address serving the .debs.

``start()``/``url()`` are called by ``gitops.lab.up``; the server itself runs as its own process,
``python -m gitops.lab.mirror --lab=NAME --bind ADDR --port PORT --dir DIR``, so it outlives the
CLI. The ``--lab=NAME`` argument is the marker ``down`` finds it by in /proc.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gitops.lab.common import MIRROR_PORT, LabError, mirror_marker, start_detached

__all__ = [
    "main",
    "sources_line",
    "start",
    "url",
]


def url(address: str, port: int = MIRROR_PORT) -> str:
    return f"http://{address}:{port}/"


def sources_line(address: str, port: int = MIRROR_PORT) -> str:
    """The only apt source of every lab host."""
    return f"deb [trusted=yes] {url(address, port)} ./\n"


def start(name: str, address: str, folder: Path, log: Path, pid_file: Path,
          extra: Path | None = None) -> int:
    """Start the server in its own session; return its pid once it accepts connections.

    ``extra`` is served under ``/extra/``: the packages an inventory declares
    (``gitops.lab.packages``).
    """
    args = [
        sys.executable,
        "-m",
        "gitops.lab.mirror",
        mirror_marker(name),
        "--bind",
        address,
        "--port",
        str(MIRROR_PORT),
        "--dir",
        str(folder),
        *(["--extra", str(extra)] if extra is not None else []),
    ]
    proc = start_detached(args, log, pid_file)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"package mirror exited at start ({proc.returncode}); see {log}")
        try:
            with socket.create_connection((address, MIRROR_PORT), timeout=0.2):
                return proc.pid
        except OSError:
            time.sleep(0.05)
    raise LabError(f"package mirror did not listen on {address}:{MIRROR_PORT}; see {log}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of ``directory``; under ``/extra/``, files of ``extra``."""

    def __init__(self, *args: Any, extra: str | None = None, **kwargs: Any) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        if self.extra is None or not path.startswith("/extra/"):
            return super().translate_path(path)
        base = self.directory
        self.directory = self.extra
        try:
            return super().translate_path(path[len("/extra"):])
        finally:
            self.directory = base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=MIRROR_PORT)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--extra", default=None)
    opts = parser.parse_args(argv)
    handler = functools.partial(_Handler, directory=opts.dir, extra=opts.extra)
    server = http.server.ThreadingHTTPServer((opts.bind, opts.port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
