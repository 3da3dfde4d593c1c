"""The daemon's watcher of local repositories: a commit to a watched branch triggers a
reconcile within a second (watchdog), instead of waiting for the next poll."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["watch"]


def watch(repo: str, branch: str, on_commit: Callable[[], Any]) -> Any:
    """Call ``on_commit`` when ``branch`` of the local repository ``repo`` moves; returns
    the started observer (``stop`` and ``join`` it)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    path = Path(repo).expanduser().resolve()
    git_dir = path / ".git" if (path / ".git").is_dir() else path
    ref = f"refs/heads/{branch}"

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            # Writes only: reading the ref (our own ls-remote) must not trigger.
            if event.event_type not in ("created", "modified", "moved", "closed"):
                return
            changed = str(getattr(event, "dest_path", "") or event.src_path)
            if changed.endswith(ref) or changed.endswith("packed-refs"):
                on_commit()

    observer = Observer()
    observer.schedule(Handler(), str(git_dir), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
