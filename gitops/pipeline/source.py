"""Stage 1: fetch a Git branch and materialize exactly one commit in a snapshot folder.

The only GitPython user. A bare mirror per repository lives in the state folder; a fetch
force-updates the watched branch (a force-push is followed, not refused) and the commit is
extracted with ``git archive`` into ``snapshots/<sha>/``: never the user's working copy, never
a half-written folder (extract to a temporary name, then rename). A fetch that leaves the mirror
over ``LOOSE_OBJECTS`` loose objects packs them. A pull request's head is fetched under its own
ref (``fetch_ref``, ``pull_ref``) and deleted by ``prune_refs`` once no preview wants it.
Called by ``reconcile``, ``preview`` and ``retention``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from gitops.errors import InvalidDeclaration, Problem, RevisionNotFound, SourceError
from gitops.private import private_dir
from gitops.records import Revision, Snapshot

if TYPE_CHECKING:  # GitPython is imported by the functions that call git: not by every command
    import git

__all__ = ["PULL_REFS", "fetch", "fetch_ref", "mirror_path", "on_branch", "passing_snapshot",
           "prune_refs", "prune_snapshots", "prune_sources", "pull_ref", "redact", "resolve",
           "snapshot"]

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(url: str) -> str:
    """A repository URL fit for messages: any ``user:token@`` is masked."""
    return _CREDENTIALS.sub("***@", url)


def _git_error(exc: git.GitCommandError) -> str:
    """git's own one-line reason (its ``fatal:`` line), credentials masked."""
    lines = redact(str(exc.stderr or "")).splitlines()
    stderr = [ln.strip().removeprefix("stderr:").strip(" '") for ln in lines]
    stderr = [ln for ln in stderr if ln]
    fatal = [ln for ln in stderr if "fatal:" in ln]
    return (fatal or stderr or [f"exit {exc.status}"])[0]


def mirror_path(url: str, state_dir: Path) -> Path:
    """The bare mirror folder that ``fetch(url, ...)`` keeps for ``url`` (a URL or local path)."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return state_dir / "sources" / f"{key}.git"


def _mirror(url: str, state_dir: Path) -> git.Repo:
    import git

    path = mirror_path(url, state_dir)
    if path.is_dir():
        return git.Repo(path)
    private_dir(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(path, bare=True)
    repo.create_remote("origin", url)
    return repo


@contextlib.contextmanager
def _mirror_lock(url: str, state_dir: Path, timeout: float) -> Iterator[None]:
    """One fetch at a time into a mirror: environments (and previews) that watch the same
    repository share it, and two ``git fetch`` into one repository fail on each other's ref
    locks. The kernel frees the lock when its holder dies."""
    path = mirror_path(url, state_dir).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SourceError(f"cannot fetch {redact(url)}: another fetch of it has "
                                      f"held its mirror for over {timeout:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def fetch(url: str, branch: str, state_dir: Path, *, timeout: float = 120) -> Revision:
    """Fetch ``branch`` of ``url`` (a remote URL or a local path) and return its head."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    with _mirror_lock(url, state_dir, timeout):
        return _fetch(url, branch, state_dir, timeout)


LOOSE_OBJECTS = 256
"""A fetch that leaves a mirror more loose objects than this packs them (``_pack``): each
commit fetched adds a few, a disk block each, and git's own ``gc --auto`` waits for 6700."""
PACKS = 50
"""A fetch that leaves a mirror more packs than this packs them into one (``_pack``): a fetch
of 100 objects or more (a pull request's, a large commit's) arrives as a pack of its own;
git's ``gc.autoPackLimit``."""


def fetch_ref(url: str, ref: str, branch: str, state_dir: Path, *,
              timeout: float = 120) -> Revision:
    """Fetch the full ref ``ref`` of ``url`` (e.g. a pull request's ``refs/pull/7/head``)
    into the mirror under the same name and return its head, labelled ``branch``;
    ``RevisionNotFound`` when ``url`` has no such ref."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    with _mirror_lock(url, state_dir, timeout):
        return _fetch(url, branch, state_dir, timeout, ref=ref)


def pull_ref(provider: str, number: int | None) -> str | None:
    """The ref under which the base repository publishes a pull request's head: GitHub and
    Gitea ``refs/pull/<n>/head``, GitLab ``refs/merge-requests/<iid>/head`` (a fork's
    commits too); None for a branch previewed by hand (``gitops preview``)."""
    if number is None:
        return None
    if provider in ("github", "gitea"):
        return f"refs/pull/{number}/head"
    if provider == "gitlab":
        return f"refs/merge-requests/{number}/head"
    return None


PULL_REFS = ("refs/pull/", "refs/merge-requests/")
"""Where ``fetch_ref`` keeps the pull requests' heads in a mirror (``pull_ref``)."""


def _fetch(url: str, branch: str, state_dir: Path, timeout: float,
           ref: str | None = None) -> Revision:
    import git

    repo = _mirror(url, state_dir)
    full = ref or f"refs/heads/{branch}"
    try:
        with repo:
            repo.git.fetch(
                "origin",
                f"+{full}:{full}",
                "--prune",
                "--no-tags",
                kill_after_timeout=timeout,
            )
            _pack(repo, timeout)
            return _revision(repo, full, branch)
    except git.GitCommandError as exc:
        detail = _git_error(exc)
        if "couldn't find remote ref" in detail:
            raise RevisionNotFound(_no_branch(url, branch, repo) if ref is None
                                   else f"{redact(url)}: no ref {ref!r}") from None
        raise SourceError(f"cannot fetch {redact(url)} {ref or branch}: {detail}") from None


def _pack(repo: git.Repo, timeout: float) -> None:
    """Pack the mirror's loose objects once there are more than ``LOOSE_OBJECTS``, or its
    packs once there are more than ``PACKS`` (``git gc``): the mirror stays the size of the
    repository's packed history. Commits a
    force-push left behind (a rollback may still want one) go to a cruft pack and last git's
    ``gc.pruneExpire`` (two weeks), as they would loose. A failure (a full disk) leaves the
    objects loose for the next fetch to pack."""
    import git

    with contextlib.suppress(git.GitCommandError, ValueError):
        counts = dict(line.split(": ", 1) for line in
                      str(repo.git.count_objects("-v")).splitlines() if ": " in line)
        if int(counts.get("count", 0)) > LOOSE_OBJECTS or int(counts.get("packs", 0)) > PACKS:
            repo.git.gc("--quiet", "--cruft", kill_after_timeout=timeout)


NO_COMMIT = "has no commit yet: commit first, or validate the files on disk with --worktree"


def _no_branch(url: str, branch: str, repo: git.Repo) -> str:
    """Why ``branch`` is missing: the repository has no commit at all, or not that branch."""
    import git

    try:
        empty = not str(repo.git.ls_remote("--heads", "origin", kill_after_timeout=30)).strip()
    except git.GitCommandError:
        empty = False
    return f"{redact(url)} {NO_COMMIT}" if empty else f"{redact(url)}: no branch {branch!r}"


def head(url: str, branch: str, *, timeout: float = 30) -> str:
    """The commit ``branch`` points at on ``url``, without fetching (one ``git ls-remote``).

    The daemon's cheap "anything new?" question: no mirror, no object transfer.
    """
    import git

    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    try:
        out = git.cmd.Git().ls_remote(url, f"refs/heads/{branch}", kill_after_timeout=timeout)
    except git.GitCommandError as exc:
        detail = _git_error(exc)
        raise SourceError(f"cannot reach {redact(url)}: {detail}") from None
    for line in str(out).splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    if not str(out).strip():
        raise RevisionNotFound(f"{redact(url)} {NO_COMMIT}")
    raise RevisionNotFound(f"{redact(url)}: no branch {branch!r}")


def rewrites_history(url: str, state_dir: Path, old: str, new: str) -> bool:
    """Whether moving from ``old`` to ``new`` drops commits (a force-push), as far as the
    mirror knows; False when it cannot tell."""
    import git

    path = mirror_path(url, state_dir)
    if not path.is_dir():
        return False
    with git.Repo(path) as repo:
        try:
            repo.git.merge_base("--is-ancestor", old, new)
        except git.GitCommandError as exc:
            return exc.status == 1  # 1: not an ancestor; other codes: unknown commit
    return False


def lineage(url: str, state_dir: Path, head: str, *, limit: int = 1000) -> tuple[str, ...]:
    """The fetched commits reachable from ``head``, oldest first (topological: each after
    its parents), at most the newest ``limit``; empty when the mirror does not know ``head``."""
    import git

    path = mirror_path(url, state_dir)
    if not path.is_dir():
        return ()
    with git.Repo(path) as repo:
        try:
            out = str(repo.git.rev_list("--topo-order", f"--max-count={limit}", head, "--"))
        except git.GitCommandError:
            return ()
    return tuple(reversed(out.split()))


def diff_summary(url: str, state_dir: Path, old: str, new: str) -> str:
    """``git diff --stat`` between two fetched commits (for incident reports); "" if unknown."""
    import git

    path = mirror_path(url, state_dir)
    if not path.is_dir():
        return ""
    with git.Repo(path) as repo:
        try:
            return str(repo.git.diff("--stat", old, new))
        except git.GitCommandError:
            return ""


def revision(url: str, branch: str, rev: str, state_dir: Path) -> Revision:
    """An already fetched commit (for rollbacks to an earlier revision)."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    with _mirror(url, state_dir) as repo:
        return _revision(repo, rev, branch)


def resolve(url: str, branch: str, rev: str, state_dir: Path) -> Revision:
    """``rev`` as git itself resolves it to one commit in the mirror (``rev-parse --verify``):
    ``RevisionNotFound`` for an unknown revision or a short sha that begins several commits.
    Where the commit came from is not checked here: ``on_branch`` tells."""
    import git

    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    with _mirror(url, state_dir) as repo:
        try:
            sha = str(repo.git.rev_parse("--verify", "--end-of-options", f"{rev}^{{commit}}"))
        except git.GitCommandError as exc:
            if "ambiguous" in str(exc.stderr or ""):
                raise RevisionNotFound(f"{rev[:60]!r} is ambiguous: it begins more than one "
                                       "commit; give more digits") from None
            raise RevisionNotFound(f"no revision {rev[:60]!r}") from None
        except ValueError:  # a NUL byte: not an argument a process can take
            raise RevisionNotFound(f"no revision {rev[:60]!r}") from None
        return _revision(repo, sha.strip(), branch)


def on_branch(url: str, branch: str, sha: str, state_dir: Path) -> bool:
    """Whether the commit ``sha`` is the mirror's ``branch`` head or one of its ancestors
    (not a pull request's ref, a tag elsewhere, a commit a force-push left behind)."""
    import git

    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    path = mirror_path(url, state_dir)
    if not path.is_dir():
        return False
    with git.Repo(path) as repo:
        try:
            repo.git.merge_base("--is-ancestor", sha, f"refs/heads/{branch}")
        except git.GitCommandError:
            return False
    return True


def _revision(repo: git.Repo, rev: str, branch: str) -> Revision:
    import git

    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError):
        raise RevisionNotFound(f"no revision {rev!r}") from None
    return Revision(
        sha=commit.hexsha,
        branch=branch,
        author=str(commit.author.name),
        committed_at=commit.committed_datetime.astimezone(UTC),
        message=str(commit.message).strip(),
    )


def snapshot(url: str, revision: Revision, state_dir: Path) -> Snapshot:
    """Materialize ``revision`` in ``<state_dir>/snapshots/<sha>`` (reused if already there)."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    target = state_dir / "snapshots" / revision.sha
    if target.is_dir():
        with contextlib.suppress(OSError):  # most recently used first, for pruning
            os.utime(target)
    else:
        tmp = _extract(url, revision, state_dir)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # another process won the same rename: fine
                raise
    return Snapshot(revision=revision, path=str(target))


@contextlib.contextmanager
def passing_snapshot(url: str, revision: Revision, state_dir: Path) -> Iterator[Snapshot]:
    """``revision`` for one look (``gitops validate``): its snapshot when one is there, else
    extracted into a hidden folder removed afterwards, so nothing stays behind."""
    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    target = state_dir / "snapshots" / revision.sha
    if target.is_dir():
        yield Snapshot(revision=revision, path=str(target))
        return
    tmp = _extract(url, revision, state_dir)
    try:
        yield Snapshot(revision=revision, path=str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(url: str, revision: Revision, state_dir: Path) -> Path:
    """``revision``'s tree in a new hidden folder of ``<state_dir>/snapshots`` (pruning
    skips it); an ``InvalidDeclaration`` for a link out of it or a special file."""
    target = state_dir / "snapshots" / revision.sha
    private_dir(state_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with _mirror(url, state_dir) as repo:
        empty = not repo.git.ls_tree(revision.sha)  # its tar holds a pax header only
        if not empty:
            repo.archive(buffer, revision.sha, format="tar")
    buffer.seek(0)
    tmp = Path(tempfile.mkdtemp(prefix=f".{revision.sha[:10]}-", dir=target.parent))
    try:
        if not empty:  # a commit of an empty tree: an empty snapshot
            with tarfile.open(fileobj=buffer) as tar:
                tar.extractall(tmp, filter="data")
    except tarfile.FilterError as exc:  # a link out of the repository, a device file
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidDeclaration([Problem(exc.tarinfo.name, None, "", "a link to an "
                                          "absolute path or outside the repository, or a "
                                          "special file: not allowed")], revision.ref) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def prune_snapshots(state_dir: Path, keep: set[str], newest: int = 0) -> list[str]:
    """Remove snapshot folders of revisions not in ``keep`` beyond the ``newest`` most
    recently used ones; return the revisions removed."""
    folder = state_dir / "snapshots"
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        with contextlib.suppress(OSError):
            if child.is_dir() and not child.name.startswith("."):
                found.append((child.stat().st_mtime, child))
    found.sort(reverse=True)
    removed = []
    for _, child in found[newest:]:
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed


def prune_sources(state_dir: Path, keep: list[str], older_than_s: float) -> list[Path]:
    """Remove the mirrors of repositories not in ``keep`` (URLs or paths) that nothing fetched
    for ``older_than_s`` seconds; return them. A mirror needed again is fetched again."""
    folder = state_dir / "sources"
    if not folder.is_dir():
        return []
    wanted = {mirror_path(url, state_dir) for url in keep}
    removed = []
    for child in folder.glob("*.git"):
        fetched = max((p.stat().st_mtime for p in (child / "FETCH_HEAD", child)
                       if p.exists()), default=0.0)
        if child not in wanted and time.time() - fetched > older_than_s:
            shutil.rmtree(child, ignore_errors=True)
            child.with_suffix(".lock").unlink(missing_ok=True)
            removed.append(child)
    return removed


def prune_refs(url: str, state_dir: Path, keep: set[str],
               prefixes: tuple[str, ...] = PULL_REFS, *, timeout: float = 10) -> list[str]:
    """Delete from ``url``'s mirror the refs under ``prefixes`` (the pull requests' heads
    ``fetch_ref`` kept) not in ``keep``; return them. Branches (``refs/heads/``) are never
    deleted. Unreachable once their ref is gone, a pull request's commits leave the mirror
    at its next packing, after git's ``gc.pruneExpire``. Under the mirror's lock: a fetch
    finishes first; one that holds it over ``timeout`` seconds skips this prune (none
    deleted, the next prune does it). A pull request previewed again is fetched again."""
    import git

    if Path(url).expanduser().is_dir():
        url = str(Path(url).expanduser().resolve())
    if not mirror_path(url, state_dir).is_dir():
        return []
    try:
        with _mirror_lock(url, state_dir, timeout):
            repo = _mirror(url, state_dir)
            with repo:
                names = str(repo.git.for_each_ref("--format=%(refname)", *prefixes)).split()
                gone = [n for n in names if n not in keep and not n.startswith("refs/heads/")
                        and n.startswith(prefixes)]
                if gone:
                    with tempfile.TemporaryFile() as fh:
                        fh.write("".join(f"delete {n}\n" for n in gone).encode())
                        fh.seek(0)
                        repo.git.update_ref("--stdin", istream=fh)
                return gone
    except SourceError:  # the lock: a fetch held it too long
        return []
    except git.GitCommandError as exc:
        raise SourceError(f"cannot prune the refs of {redact(url)}: {_git_error(exc)}") from None
