"""The named errors a user can cause, and whether retrying can help.

Every stage raises one of these; the CLI prints ``str(error)`` on one line (no traceback) and
exits with ``error.exit_code``. A ``PermanentError`` (bad declaration, bad usage) is not retried
until a new commit; a ``TemporaryError`` (network, SSH, Git remote) is retried with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "GitopsError",
    "InterruptedApply",
    "InvalidDeclaration",
    "LockHeld",
    "PermanentError",
    "Problem",
    "RevisionNotFound",
    "SourceError",
    "Suspended",
    "TemporaryError",
    "UnsignedCommit",
    "UsageError",
    "WorkerError",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


class GitopsError(Exception):
    """Base of every error a user can cause. ``str()`` is the one-line message."""

    exit_code = EXIT_INVALID
    temporary = False


class PermanentError(GitopsError):
    """Retrying will not help until the input changes (a new commit, other options)."""


class TemporaryError(GitopsError):
    """Retrying later may help (network, SSH, a busy lock)."""

    exit_code = EXIT_FAILED
    temporary = True


class UsageError(PermanentError):
    """Bad options or settings."""


class SourceError(TemporaryError):
    """The Git remote or path could not be fetched."""


class RevisionNotFound(PermanentError):
    """The branch or revision does not exist in the repository."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class InvalidDeclaration(PermanentError):
    """A revision that fails validation; carries every problem found, never applied."""

    def __init__(self, problems: list[Problem], revision: str | None = None) -> None:
        self.problems = problems
        self.revision = revision
        super().__init__(self._summary())

    def _summary(self) -> str:
        at = f" at {self.revision}" if self.revision else ""
        lines = [f"invalid declaration{at}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class WorkerError(TemporaryError):
    """A pyinfra or testinfra worker process crashed or timed out."""


class LockHeld(TemporaryError):
    """Another reconcile of the same environment is running."""


class UnsignedCommit(PermanentError):
    """A commit that is unsigned, badly signed, or signed by a key the policy does not allow."""


class Suspended(GitopsError):
    """An operator asked for a run in an environment that is suspended (HTTP 409)."""

    exit_code = EXIT_FAILED


class InterruptedApply(TemporaryError):
    """A host failed right after recovering from an apply a crash interrupted: applied again."""
