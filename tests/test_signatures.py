"""Signed commits: ``gitops.pipeline.signatures.verify_commit`` with real git, gpg and ssh-keygen.

Everything runs under a temporary HOME and GNUPGHOME: the machine's own keyrings and Git
configuration are never read or written. Without gpg or ssh-keygen the tests that need them
are skipped, unless the environment variable CI is set (then they fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from gitops.errors import PermanentError, UnsignedCommit, UsageError
from gitops.pipeline.signatures import check_policy, verify_commit
from gitops.pipeline.source import fetch, mirror_path
from gitops.settings import SigningPolicy


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        needed = ", ".join(missing)
        reason = f"signed-commit tests need {needed} (apt-get install -y gnupg openssh-client)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)


def _run(*args: str | Path, cwd: Path | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout.strip()


@dataclass
class World:
    root: Path
    work: Path
    state: Path
    mirror: Path = field(init=False)
    shas: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mirror = mirror_path(str(self.work), self.state)

    def commit(self, name: str, *git_options: str) -> None:
        """A new empty commit named ``name`` on main, fetched into the mirror as source.py does."""
        _run("git", *git_options, "commit", "-q", "--allow-empty", "-m", name, cwd=self.work)
        self.shas[name] = fetch(str(self.work), "main", self.state).sha

    def tamper(self, name: str) -> None:
        """A copy of commit ``name`` with another message and the same signature, in the mirror."""
        body = _run("git", "cat-file", "commit", self.shas[name], cwd=self.mirror) + "\n"
        forged = body.replace(f"\n\n{name}\n", "\n\ntampered\n")
        assert forged != body
        self.shas[f"{name}-tampered"] = _run(
            "git", "hash-object", "-t", "commit", "-w", "--stdin", cwd=self.mirror, stdin=forged
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _require("git")
    root = tmp_path_factory.mktemp("signatures")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.delenv("GIT_CONFIG_GLOBAL", raising=False)
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GNUPGHOME"):
            mp.delenv(name, raising=False)
        work = root / "work"
        _run("git", "init", "-q", "-b", "main", work)
        _run("git", "config", "user.name", "Alice", cwd=work)
        _run("git", "config", "user.email", "alice@example.org", cwd=work)
        w = World(root=root, work=work, state=root / "state")
        w.commit("unsigned")
        yield w


@dataclass
class GpgKeys:
    allowed: Path
    """Alice's armoured public key: the only one the policies allow."""
    allowed_fpr: str
    other_fpr: str


@pytest.fixture(scope="module")
def gpg(world: World) -> Iterator[GpgKeys]:
    _require("gpg", "gpgconf")
    # A short path: gpg-agent's socket lives in GNUPGHOME (at most ~107 characters).
    home = Path(tempfile.mkdtemp(prefix="gitops-test-gpg-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GNUPGHOME", str(home))
        try:
            fprs = {}
            for who in ("alice@example.org", "mallory@example.org"):
                _run(
                    "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", f"{who.split('@')[0].title()} <{who}>",
                    "ed25519", "sign", "never",
                )  # fmt: skip
                colons = _run("gpg", "--batch", "--with-colons", "--list-keys", who)
                fprs[who] = next(ln.split(":")[9] for ln in colons.splitlines() if ln[:4] == "fpr:")
            allowed = world.root / "alice.asc"
            allowed.write_text(_run("gpg", "--batch", "--armor", "--export", "alice@example.org"))
            world.commit("gpg-allowed", "-c", "user.signingkey=alice@example.org", "-c",
                         "commit.gpgsign=true")  # fmt: skip
            world.commit("gpg-other", "-c", "user.signingkey=mallory@example.org", "-c",
                         "commit.gpgsign=true")  # fmt: skip
            world.tamper("gpg-allowed")
            yield GpgKeys(allowed, fprs["alice@example.org"], fprs["mallory@example.org"])
        finally:
            subprocess.run(["gpgconf", "--kill", "all"], check=False, timeout=30)
            shutil.rmtree(home, ignore_errors=True)


@dataclass
class SshKeys:
    allowed_signers: Path
    allowed_fp: str
    other_fp: str


@pytest.fixture(scope="module")
def ssh(world: World) -> SshKeys:
    _require("ssh-keygen")
    fps = {}
    for name in ("alice", "other"):
        key = world.root / f"{name}_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
        fps[name] = _run("ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub").split()[1]
        world.commit(f"ssh-{'allowed' if name == 'alice' else 'other'}",
                     "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}",
                     "-c", "commit.gpgsign=true")  # fmt: skip
    public = (world.root / "alice_ed25519.pub").read_text().strip()
    allowed = world.root / "allowed_signers"
    allowed.write_text(f'alice@example.org namespaces="git" {public}\n')
    world.tamper("ssh-allowed")
    return SshKeys(allowed, fps["alice"], fps["other"])


def _refused(world: World, name: str, policy: SigningPolicy) -> str:
    with pytest.raises(UnsignedCommit) as caught:
        verify_commit(world.mirror, world.shas[name], policy)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"commit {world.shas[name][:10]} ")
    return message


# --- GPG ---------------------------------------------------------------------------------


def test_gpg_allowed_key_is_accepted(world: World, gpg: GpgKeys) -> None:
    """A commit signed by an allowed GPG key is accepted; the answer names its fingerprint."""
    policy = SigningPolicy(gpg_keys=[gpg.allowed])
    who = verify_commit(world.mirror, world.shas["gpg-allowed"], policy)
    assert who == f"GPG key {gpg.allowed_fpr} (Alice <alice@example.org>)"


def test_gpg_other_key_is_refused(world: World, gpg: GpgKeys) -> None:
    """A commit signed by a GPG key outside the policy is refused, naming that key.

    The caller's own keyring (GNUPGHOME) holds and trusts that key: it must not count.
    """
    message = _refused(world, "gpg-other", SigningPolicy(gpg_keys=[gpg.allowed]))
    assert message.endswith(f"is signed by a key that is not allowed ({gpg.other_fpr})")


def test_gpg_tampered_commit_has_bad_signature(world: World, gpg: GpgKeys) -> None:
    """A commit changed after an allowed GPG key signed it is refused as a bad signature."""
    message = _refused(world, "gpg-allowed-tampered", SigningPolicy(gpg_keys=[gpg.allowed]))
    assert "has a bad signature" in message


def test_unsigned_commit_is_refused(world: World, gpg: GpgKeys) -> None:
    """An unsigned commit is refused as not signed (a permanent error: no retry helps)."""
    message = _refused(world, "unsigned", SigningPolicy(gpg_keys=[gpg.allowed]))
    assert message == f"commit {world.shas['unsigned'][:10]} is not signed"
    assert issubclass(UnsignedCommit, PermanentError)


def test_gpg_signature_refused_when_only_ssh_allowed(
    world: World, gpg: GpgKeys, ssh: SshKeys
) -> None:
    """A GPG-signed commit is refused when the policy allows only SSH signers."""
    message = _refused(world, "gpg-allowed", SigningPolicy(ssh_allowed_signers=ssh.allowed_signers))
    assert message.endswith("is signed with a GPG key, but only SSH signers are allowed")


def test_gpg_home_is_removed(
    world: World, gpg: GpgKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throw-away GNUPGHOME is removed and leaves no gpg-agent running, accepted or not."""
    scratch = tmp_path / "t"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    policy = SigningPolicy(gpg_keys=[gpg.allowed])
    verify_commit(world.mirror, world.shas["gpg-allowed"], policy)
    with pytest.raises(UnsignedCommit):
        verify_commit(world.mirror, world.shas["gpg-other"], policy)
    assert list(scratch.iterdir()) == []
    processes = _run("ps", "-eo", "args") if shutil.which("ps") else ""
    assert str(scratch) not in processes


def test_unreadable_gpg_key_file_is_usage_error(world: World, gpg: GpgKeys, tmp_path: Path) -> None:
    """A GPG key file that is missing or holds no key is a usage error, not a refused commit."""
    with pytest.raises(UsageError, match="cannot read"):
        verify_commit(world.mirror, world.shas["gpg-allowed"],
                      SigningPolicy(gpg_keys=[tmp_path / "missing.asc"]))  # fmt: skip
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key\n")
    with pytest.raises(UsageError, match="no public key could be imported"):
        verify_commit(world.mirror, world.shas["gpg-allowed"], SigningPolicy(gpg_keys=[junk]))


# --- SSH ---------------------------------------------------------------------------------


def test_ssh_allowed_key_is_accepted(world: World, ssh: SshKeys) -> None:
    """A commit signed by an SSH key in allowed_signers is accepted, naming principal and key."""
    policy = SigningPolicy(ssh_allowed_signers=ssh.allowed_signers)
    who = verify_commit(world.mirror, world.shas["ssh-allowed"], policy)
    assert who == f"SSH key {ssh.allowed_fp} (alice@example.org)"


def test_ssh_other_key_is_refused(world: World, ssh: SshKeys) -> None:
    """A commit signed by an SSH key not in allowed_signers is refused, naming its fingerprint."""
    message = _refused(world, "ssh-other", SigningPolicy(ssh_allowed_signers=ssh.allowed_signers))
    assert message.endswith(f"is signed by a key that is not allowed ({ssh.other_fp})")


def test_ssh_tampered_commit_has_bad_signature(world: World, ssh: SshKeys) -> None:
    """A commit changed after an allowed SSH key signed it is refused as a bad signature."""
    policy = SigningPolicy(ssh_allowed_signers=ssh.allowed_signers)
    assert "has a bad signature" in _refused(world, "ssh-allowed-tampered", policy)


def test_ssh_signature_refused_when_only_gpg_allowed(
    world: World, gpg: GpgKeys, ssh: SshKeys
) -> None:
    """An SSH-signed commit is refused when the policy allows only GPG signers."""
    message = _refused(world, "ssh-allowed", SigningPolicy(gpg_keys=[gpg.allowed]))
    assert message.endswith("is signed with an SSH key, but only GPG signers are allowed")


def test_unsigned_commit_is_refused_by_ssh_policy(world: World, ssh: SshKeys) -> None:
    """An unsigned commit is refused as not signed under an SSH-only policy too."""
    message = _refused(world, "unsigned", SigningPolicy(ssh_allowed_signers=ssh.allowed_signers))
    assert message.endswith("is not signed")


# --- Both, and the policy itself ---------------------------------------------------------


def test_policy_with_both_kinds(world: World, gpg: GpgKeys, ssh: SshKeys) -> None:
    """With GPG and SSH signers allowed, each allowed key is accepted and each other key refused."""
    policy = SigningPolicy(gpg_keys=[gpg.allowed], ssh_allowed_signers=ssh.allowed_signers)
    assert gpg.allowed_fpr in verify_commit(world.mirror, world.shas["gpg-allowed"], policy)
    assert ssh.allowed_fp in verify_commit(world.mirror, world.shas["ssh-allowed"], policy)
    assert gpg.other_fpr in _refused(world, "gpg-other", policy)
    assert ssh.other_fp in _refused(world, "ssh-other", policy)


def test_empty_policy_is_refused_when_settings_load(world: World) -> None:
    """A policy naming neither gpg_keys nor ssh_allowed_signers is refused as settings load,
    and by check_policy for one built without validation."""
    with pytest.raises(ValidationError, match="name gpg_keys or ssh_allowed_signers"):
        SigningPolicy()
    with pytest.raises(UsageError, match="name gpg_keys or ssh_allowed_signers"):
        check_policy(SigningPolicy.model_construct())
    with pytest.raises(UsageError):
        verify_commit(world.mirror, world.shas["unsigned"], SigningPolicy.model_construct())


def test_mirror_path_is_the_fetched_mirror(world: World) -> None:
    """source.mirror_path names the bare mirror fetch() keeps, for a path given any way."""
    assert (world.mirror / "HEAD").is_file()
    assert _run("git", "rev-parse", "--is-bare-repository", cwd=world.mirror) == "true"
    relative = os.path.relpath(world.work)
    assert mirror_path(relative, world.state) == world.mirror
