"""The sections of the settings: where a secret is (``SecretRef``, never the secret), SOPS
keys, signing, notifiers, commit statuses, each environment, the digest, retention, previews
and the fan-out. Pydantic models; ``gitops.settings.Settings`` holds them and re-exports them."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gitops.schedule import Window, check_cron, check_timezone

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_KINDS",
    "SEVERITIES",
    "CommitStatusConfig",
    "DigestSettings",
    "EnvironmentConfig",
    "EventKind",
    "FanoutSettings",
    "GrantConfig",
    "NotifierConfig",
    "NotifierType",
    "OidcSettings",
    "PreviewSettings",
    "Retention",
    "SecretRef",
    "Severity",
    "SigningPolicy",
    "SopsSettings",
    "team_name",
]

_warned: set[Path] = set()
_warned_lock = threading.Lock()
_PUBLIC_KEY = Path(__file__).resolve().parent / "lab" / "demo-age-key.txt"
"""The lab's demo age key: public by design (``gitops.lab.hostsource.DEMO_AGE_KEY``), never
warned of."""


def _warn_if_open(path: Path) -> None:
    """Say once (logger ``gitops.settings``) when a secret file can be read or written by
    others than its owner, as ssh does for a private key; it is used all the same."""
    try:
        mode = path.stat().st_mode & 0o777
        public = path.resolve() == _PUBLIC_KEY
    except OSError:
        return  # reading it says why
    if not mode & 0o077 or public:
        return
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    who = "everyone" if mode & 0o007 else "its group"
    logging.getLogger("gitops.settings").warning(
        "warning: secret file %s has mode %04o: %s can reach it (chmod 600 %s)",
        path, mode, who, path)


class SecretRef(BaseModel):
    """Where a secret is: an environment variable or a file. Never the secret itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_place(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("name exactly one of env or file")
        return self

    @property
    def where(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def reveal(self) -> str:
        """The secret's value; a ``UsageError`` naming where it was looked for if missing."""
        from gitops.errors import UsageError

        if self.env is not None:
            value = os.environ.get(self.env, "")
        else:
            assert self.file is not None
            try:
                _warn_if_open(self.file)
                value = self.file.read_text().strip()
            except OSError as exc:
                raise UsageError(f"secret {self.where}: {exc.strerror}") from None
        if not value:
            raise UsageError(f"secret {self.where} is empty or not set")
        return value


class SopsSettings(BaseModel):
    """The private keys that open SOPS-encrypted files of the state repository (see
    gitops.pipeline.sops). Named by file or environment variable; never in the repository."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    age_key: SecretRef | None = None
    """An age identity file: one or more ``AGE-SECRET-KEY-1...`` lines (``age-keygen``)."""
    pgp_key: SecretRef | None = None
    """An ASCII-armoured OpenPGP private key without passphrase (``gpg --export-secret-keys
    --armor``); imported into a throwaway GnuPG home, never the user's keyring."""


class SigningPolicy(BaseModel):
    """Which keys may sign the commits an environment applies."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    gpg_keys: list[Path] = []
    """ASCII-armoured public keys (files) of the allowed GPG signers."""
    ssh_allowed_signers: Path | None = None
    """An ssh-keygen ``allowed_signers`` file of the allowed SSH signers."""

    @model_validator(mode="after")
    def _some_signer(self) -> SigningPolicy:
        if not self.gpg_keys and self.ssh_allowed_signers is None:
            raise ValueError("name gpg_keys or ssh_allowed_signers (or leave verify_commits out)")
        return self


def team_name(value: str) -> str:
    from gitops.model import check_team

    return check_team(value)


EventKind = Literal["failure", "recovery", "drift", "rollback", "quarantine", "success",
                    "approval", "digest"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
DEFAULT_EVENTS: tuple[EventKind, ...] = ("failure", "recovery", "drift", "rollback",
                                         "quarantine", "success")
"""What a notifier hears when its ``events`` are not listed (as before filters existed); the
digest goes to the environments' notifiers as before (``gitops.daemon.digest.receivers``)."""
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
NotifierType = Literal["webhook", "slack", "apprise", "alertmanager", "grafana"]


class NotifierConfig(BaseModel):
    """One notification receiver and what it hears (``gitops.daemon.notify``): a generic JSON
    webhook (optionally signed), Slack, any Apprise URL, Alertmanager or Grafana."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """What ``gitops notify`` and the record call it; default ``<type>-<n>`` (global) or
    ``<environment>-<type>-<n>``."""
    type: NotifierType
    url: SecretRef
    """The receiver's URL, a secret (it is the credential of incoming webhooks and Apprise
    URLs); for ``alertmanager`` and ``grafana`` the server's base URL."""
    events: list[EventKind] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    """Which events this receiver gets (default: all but ``approval`` and ``digest``)."""
    severities: list[Severity] = Field(default_factory=lambda: list(SEVERITIES))
    """Which severities it gets: ``critical`` (failure, rollback), ``warning`` (drift,
    quarantine, approval), ``info`` (recovery, success, digest)."""
    environments: list[str] = []
    """Only these environments' events (empty: all it is given)."""
    teams: list[Annotated[str, AfterValidator(team_name)]] = []
    """Only the events of environments these teams own (empty: any owner)."""
    hmac_key: SecretRef | None = None
    """``webhook`` only: sign each body with HMAC-SHA256 in ``X-Gitops-Signature``."""
    token: SecretRef | None = None
    """``grafana`` (required) and ``alertmanager`` (optional): sent as a Bearer token."""

    @field_validator("url")
    @classmethod
    def _apprise_url(cls, value: SecretRef, info: ValidationInfo) -> SecretRef:
        if info.data.get("type") != "apprise":
            return value
        from gitops.errors import UsageError

        try:
            url = value.reveal()
        except UsageError:
            return value  # not set where this runs: its deliveries will say so
        from gitops.apprise_urls import problem

        found = problem(url)
        if found is not None:
            raise ValueError(f"{found} (the URL in {value.where} is not shown: it holds "
                             "a token)")
        return value

    @model_validator(mode="after")
    def _fields_of_type(self) -> NotifierConfig:
        if self.hmac_key is not None and self.type != "webhook":
            raise ValueError("hmac_key signs a webhook's body: only for type = \"webhook\"")
        if self.token is not None and self.type not in ("grafana", "alertmanager"):
            raise ValueError("token is for type = \"grafana\" or \"alertmanager\"")
        if self.type == "grafana" and self.token is None:
            raise ValueError("grafana needs token = { env = ... } (a service account token)")
        return self

    def label(self, index: int, environment: str | None = None) -> str:
        """Its name: ``name``, else ``<type>-<n>`` (``<environment>-<type>-<n>``)."""
        if self.name:
            return self.name
        return f"{environment}-{self.type}-{index + 1}" if environment else \
            f"{self.type}-{index + 1}"


class CommitStatusConfig(BaseModel):
    """Where commit statuses go: the Git host's API, the repository there, a token."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    provider: Literal["github", "gitlab", "gitea"]
    api_url: str = Field(pattern=r"^https?://")
    """https://api.github.com, https://gitlab.example.com/api/v4, https://gitea.example.com/api/v1"""
    repository: str = Field(min_length=1)
    """``owner/name`` on GitHub and Gitea; the project id or path (``group/project``) on GitLab."""
    token: SecretRef
    context: str = "gitops/{environment}"
    """The status's name on the commit; ``{environment}`` is replaced by the environment's name."""
    target_url: str | None = None
    """A link shown with the status (the status page, say)."""

    def context_for(self, environment: str) -> str:
        return self.context.replace("{environment}", environment)


class EnvironmentConfig(BaseModel):
    """One environment the daemon watches: a repository, a branch, an inventory, policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    repo: str
    branch: str = "main"
    inventory: str | None = None
    """``inventories/<inventory>.yml``; defaults to ``name``."""
    interval: float = Field(default=60, gt=0)
    """Seconds between polls of the remote."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """Each wait is the interval times a random factor in [1 - jitter, 1 + jitter]."""
    watch: bool = True
    """For a local repository path: reconcile within a second of a commit (watchdog)."""
    drift: Literal["report", "correct"] = "report"
    drift_interval: float = Field(default=600, gt=0)
    auto_rollback: bool = True
    webhook_secret: SecretRef | None = None
    verify_commits: SigningPolicy | None = None
    notifiers: list[NotifierConfig] = []
    """Who hears of failures, recoveries, drift, rollbacks and quarantines."""
    commit_status: list[CommitStatusConfig] = []
    """Where to report pending / success / failure on each applied commit."""
    retry_base: float = Field(default=5, gt=0)
    retry_max: float = Field(default=300, gt=0)
    windows: list[Window] = []
    """Maintenance windows (``schedule``, ``duration``, ``timezone``): outside them new
    revisions wait and drift is reported, not corrected. When set, these win over the
    inventory's ``settings.windows``; empty: the inventory's, else always open."""
    prune: bool | None = None
    """Take services the revision no longer declares on a host off it with their
    ``remove.py`` (false: report them only). When set, wins over the inventory's
    ``settings.prune``; unset: the inventory's (default true). See gitops.pipeline.prune."""
    promote_from: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """The name of another environment here: apply only the revisions verified on every
    host there, in commit order (``gitops promote`` for one by hand)."""
    team: Annotated[str, AfterValidator(team_name)] | None = None
    """The team that owns this environment, one of the settings' ``teams``; wins over the
    inventory's ``settings.team``."""
    require_approval: bool = False
    """Apply a new revision only once a person with ``operator`` on the owning team (or an
    admin) approved that very revision (``gitops approve``); until then it is "waiting for
    approval". A rollback to a revision verified here needs none."""

    @property
    def environment(self) -> str:
        return self.inventory or self.name


class DigestSettings(BaseModel):
    """The periodic digest (see gitops.daemon.digest): when, over what period, to whom."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    schedule: Annotated[str, AfterValidator(check_cron)] | None = None
    """A cron expression (``0 9 * * 1``: Mondays at 09:00); none: no digest is sent."""
    timezone: Annotated[str, AfterValidator(check_timezone)] = "UTC"
    """The IANA time zone the schedule is read in."""
    days: float = Field(default=7, gt=0, le=366)
    """The period the digest covers, compared with the period before it."""
    notifiers: list[NotifierConfig] = []
    """Who gets it; empty: every notifier of the environments (each URL once)."""


class Retention(BaseModel):
    """How much the state folder keeps (README, "The state folder")."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    snapshots: int = Field(default=20, ge=1)
    """Snapshot folders kept besides those of revisions a host still has applied or verified
    (or a run uses, or a rollback hold names): the most recently used ones."""
    history_days: float = Field(default=400, gt=0)
    """Finished runs older than this leave the database (each environment's newest succeeded
    apply stays), and the incident reports only they made leave the reports folder; so do
    the previews finished before it, with their reports."""
    sources_days: float = Field(default=30, gt=0)
    """A repository mirror that no environment watches and nothing fetched for this long is
    removed (one that is needed again is fetched again); so is, from a watched one, the ref of
    a pull request with no preview asked for or finished for this long (none in progress)."""


class PreviewSettings(BaseModel):
    """Previews of pull/merge requests on disposable hosts (``gitops.daemon.preview``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    hosts_per_group: int = Field(default=1, ge=1, le=20)
    """At most this many hosts of each group stand in a preview lab."""
    max_labs: int = Field(default=1, ge=1, le=9)
    """Previews run at once (one lab each); the others wait in the queue."""
    max_queued: int = Field(default=20, ge=1, le=1000)
    """Previews waiting at most; a request beyond it is refused (503) until one starts."""
    timeout: float = Field(default=900, gt=0)
    """Seconds a preview may take, lab boot to teardown; past it, it fails and the lab goes."""
    lab_prefix: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,6}$")
    """Preview labs are named ``<prefix><slot>`` (found again by name after a crash);
    default: the first 5 characters of ``$GITOPS_LAB_NAME`` (else ``gitops``) and ``p``."""
    page_url: str | None = Field(default=None, pattern=r"^https?://")
    """The status page's address, for the comment's link to the full report."""
    allow_forks: bool = False
    """Preview pull requests from forks (another repository than the environment's); off by
    default, as Atlantis's ``--allow-fork-prs``. Even then only those of ``trusted_authors``
    or carrying one of ``trusted_labels`` are previewed."""
    trusted_authors: list[str] = []
    """Logins (GitLab: usernames) whose pull requests from forks are previewed."""
    trusted_labels: list[str] = []
    """Labels that make a pull request from a fork previewed (set by someone with write
    access: GitHub, GitLab and Gitea let only them label)."""
    user: str = Field(default="nobody", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    """The unprivileged user a preview's code (its ``model.py``, ``deploy.py`` and checks)
    runs as, in worker processes (``gitops.pipeline.sandbox``); it must exist. Used when the daemon
    runs as root; otherwise the workers run as the daemon's user, still with an empty home
    and no settings, keys or tokens."""
    python: Path | None = None
    """The interpreter of the preview's workers (default: the daemon's): ``user`` must be
    able to run it and import gitops with it."""
    sops: SopsSettings | None = None
    """The keys a preview decrypts SOPS values with: never the environment's ``[sops]``.
    Unset: none (a preview of an inventory with encrypted values is invalid, except the
    lab's demo key for ``source: lab``)."""


class FanoutSettings(BaseModel):
    """A batch's hosts shared with the other controllers' workers (``gitops.daemon.fanout``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    remote: bool = False
    """With PostgreSQL and more than one controller running: split each batch across every
    live controller's workers, not only this one's (every controller needs it set, as each
    one's worker applies the others' shares)."""
    concurrency: int | None = Field(default=None, ge=1, le=64)
    """Shares this controller's worker applies at once (default: its cores)."""
    start_timeout: float = Field(default=60, ge=1, le=3600)
    """Seconds a share may wait for a worker; past it, the holder applies it itself."""


def _issuer(value: str) -> str:
    """An issuer URL: https, or http on a loopback address only (a test or lab provider)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return value.rstrip("/")
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("an https:// URL with no query (http:// only on loopback)")
    return value.rstrip("/")


class OidcSettings(BaseModel):
    """Sign-in to the status page through an OpenID Connect provider (``gitops.web.oidc``):
    the authorization code flow with PKCE, as a confidential client."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    issuer: Annotated[str, AfterValidator(_issuer)]
    """The provider's issuer URL; its ``/.well-known/openid-configuration`` is read."""
    client_id: str = Field(min_length=1, max_length=200)
    client_secret: SecretRef
    """Where the client secret is (environment variable or file)."""
    redirect_url: str = Field(pattern=r"^https?://[^?#]+/signin/oidc/callback$")
    """This daemon's callback as the provider knows it (``https://gitops.example.org/signin/
    oidc/callback``): never taken from a request's Host header."""
    scopes: list[str] = Field(default=["openid", "profile", "email", "groups"],
                              min_length=1, max_length=20)
    name_claim: str = Field(default="preferred_username", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    """The claim that names the person (``preferred_username``, ``email``, ``sub``)."""
    groups_claim: str = Field(default="groups", pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    """The claim that lists the person's groups."""
    allowed_groups: list[str] = Field(default=[], max_length=1000)
    """Only members of one of these groups may sign in (default: everyone the provider
    signs in)."""
    label: str = Field(default="single sign-on", min_length=1, max_length=60)
    """The sign-in button's words: ``Sign in with <label>``."""

    @model_validator(mode="after")
    def _openid(self) -> OidcSettings:
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        return self


class GrantConfig(BaseModel):
    """A role given to a subject for a team's environments (``gitops.daemon.roles``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    subject: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")
    """A token's name (or ``api``, ``local``): who holds the role."""
    role: Literal["viewer", "operator", "rollback", "admin"]
    team: str = "*"
    """One of the settings' ``teams``: the environments it owns; ``*``: every environment."""
