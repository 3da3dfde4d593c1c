"""Bad input a user can type or write never gets a traceback: a documented exit code (1 or
2) and a message naming what is wrong, on one line. Each case is a real subprocess
(``python -m gitops ...``) over real files: settings, repositories, state folders."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from builders import PROJECT, commit, copy_sample, git_repo
from clitools import gitops, sample_repo

from gitops.record.store import Store


@dataclass(frozen=True)
class Case:
    """``args`` and ``env`` may name ``{root}``, ``{repo}``, ``{invalid}``, ``{state}``,
    ``{file}``, ``{suspended}``, ``{corrupt}`` and ``{cfg}`` (the settings folder)."""

    id: str
    args: tuple[str, ...]
    code: int
    says: str
    """A regular expression the message (stderr, else stdout) matches on one line."""
    env: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    """When set: how many lines must carry ``file:line`` (every problem at once; or one
    mistake, one problem)."""


SETTINGS = {
    "syntax.toml": 'state_dir = "/tmp/x"\nlisten = "127.0.0.1:1\n',
    "four.toml": ('state_dir = "{state}"\nmax_body = "big"\nlisten = 5\n'
                  '[[environments]]\nname = "a b"\nrepo = "x"\n'
                  '[[environments]]\nname = "ok"\nrepo = "y"\ninterval = -1\n'),
    "unknown.toml": 'state_dir = "{state}"\ncolour = "blue"\n',
    "norepo.toml": 'state_dir = "{state}"\n[[environments]]\nname = "prod"\n',
    "listen.toml": ('state_dir = "{state}"\nlisten = "nohost"\n'
                    '[[environments]]\nname = "lab"\nrepo = "{repo}"\nwatch = false\n'),
    "plaintoken.toml": 'state_dir = "{state}"\napi_token = "s3cret"\n',
    "grantteam.toml": ('state_dir = "{state}"\nteams = ["payments"]\n[[grants]]\n'
                       'team = "search"\nsubject = "ci"\nrole = "operator"\n'),
    "grantrole.toml": ('state_dir = "{state}"\n[[grants]]\nrole = "boss"\n'
                       'subject = "ci"\n'),
    "bothtoken.toml": 'state_dir = "{state}"\napi_token = {{ env = "A", file = "/b" }}\n',
    "noenvs.toml": 'state_dir = "{state}"\nlisten = "127.0.0.1:0"\n',
    "unsettoken.toml": ('state_dir = "{state}"\nlisten = "127.0.0.1:1"\n'
                        'api_token = {{ env = "GITOPS_TEST_UNSET_TOKEN" }}\n'
                        '[[environments]]\nname = "lab"\nrepo = "{repo}"\nwatch = false\n'),
    "hooksecret.toml": ('state_dir = "{state}"\nlisten = "127.0.0.1:0"\n'
                        '[[environments]]\nname = "lab"\nrepo = "{repo}"\nwatch = false\n'
                        'webhook_secret = {{ file = "/nonexistent/secret" }}\n'),
    "badjitter.toml": ('state_dir = "{state}"\n[[environments]]\nname = "lab"\n'
                       'repo = "{repo}"\njitter = 2\n'),
    "badnotifier.toml": ('state_dir = "{state}"\n[[environments]]\nname = "lab"\n'
                         'repo = "{repo}"\nnotifiers = [{{ type = "pager", url = '
                         '{{ env = "X" }} }}]\n'),
    "oidchttp.toml": ('state_dir = "{state}"\n[oidc]\nissuer = "http://sso.example.org"\n'
                      'client_id = "gitops"\nclient_secret = {{ env = "X" }}\n'
                      'redirect_url = "https://gitops.example.org/signin/oidc/callback"\n'),
    "oidcredirect.toml": ('state_dir = "{state}"\n[oidc]\nissuer = "https://sso.example.org"\n'
                          'client_id = "gitops"\nclient_secret = {{ env = "X" }}\n'
                          'redirect_url = "https://gitops.example.org/elsewhere"\n'),
    "oidcsecret.toml": ('state_dir = "{state}"\n[oidc]\nissuer = "https://sso.example.org"\n'
                        'client_id = "gitops"\nclient_secret = "written-here"\n'
                        'redirect_url = "https://gitops.example.org/signin/oidc/callback"\n'),
    "oidcscopes.toml": ('state_dir = "{state}"\n[oidc]\nissuer = "https://sso.example.org"\n'
                        'client_id = "gitops"\nclient_secret = {{ env = "X" }}\n'
                        'redirect_url = "https://gitops.example.org/signin/oidc/callback"\n'
                        'scopes = ["profile"]\n'),
    "oidcunset.toml": ('state_dir = "{state}"\nlisten = "127.0.0.1:0"\n[oidc]\n'
                       'issuer = "https://sso.example.org"\nclient_id = "gitops"\n'
                       'client_secret = {{ env = "GITOPS_TEST_UNSET_OIDC" }}\n'
                       'redirect_url = "https://gitops.example.org/signin/oidc/callback"\n'
                       '[[environments]]\nname = "lab"\nrepo = "{repo}"\nwatch = false\n'),
    "badapprise.toml": ('state_dir = "{state}"\n[[notifiers]]\ntype = "apprise"\n'
                        'url = {{ env = "T_APPRISE_URL" }}\n'),
    "badfilter.toml": ('state_dir = "{state}"\nteams = ["web"]\n[[environments]]\n'
                       'name = "lab"\nrepo = "{repo}"\n[[notifiers]]\ntype = "webhook"\n'
                       'url = {{ env = "X" }}\nevents = ["failure", "exploded"]\n'),
    "badteamfilter.toml": ('state_dir = "{state}"\nteams = ["web"]\n[[environments]]\n'
                           'name = "lab"\nrepo = "{repo}"\n[[notifiers]]\n'
                           'type = "webhook"\nurl = {{ env = "X" }}\nteams = ["db"]\n'
                           'environments = ["prod"]\n'),
    "approve.toml": ('state_dir = "{state}"\nlisten = "127.0.0.1:9"\nteams = ["payments"]\n'
                     '[[environments]]\nname = "pay"\nrepo = "{repo}"\nteam = "payments"\n'
                     'require_approval = true\n[[environments]]\nname = "lab"\n'
                     'repo = "{repo}"\n'),
    "badapproval.toml": ('state_dir = "{state}"\n[[environments]]\nname = "pay"\n'
                         'repo = "{repo}"\nrequire_approval = "sometimes"\n'),
    "grafananotoken.toml": ('state_dir = "{state}"\n[[notifiers]]\ntype = "grafana"\n'
                            'url = {{ env = "X" }}\n'),
}

SAMPLE_WEB = ("  web:\n    services:\n      app:\n        port: 8000\n"
              "        message: Hello from the gitops lab\n      web:\n"
              "        listen_port: 80\n        app_port: 8000\n")
EDITS = {
    # the sample's inventory with one mistake (old text, new text): a repository each
    "basebare": ("      base:\n        admin_user: ops\n        admin_keys:\n          - ",
                 "      base:\n      nobase:\n        admin_keys:\n          - "),
    "grouplist": (SAMPLE_WEB, "  web: [app, web]\n"),
    "skipword": ("  parallel: 20\n", "  parallel: 20\n  fingerprint_skip: sometimes\n"),
}

CASES = [
    # options, checked by click: exit 2
    Case("metrics-days-zero", ("metrics", "--days", "0", "--state-dir", "{state}"), 2,
         "--days.*not a positive number"),
    Case("metrics-days-negative", ("metrics", "--days", "-3", "--state-dir", "{state}"), 2,
         "--days.*not a positive number"),
    Case("metrics-days-nan", ("metrics", "--days", "nan", "--state-dir", "{state}"), 2,
         "--days.*not a positive number"),
    Case("metrics-days-inf", ("metrics", "--days", "inf", "--state-dir", "{state}"), 2,
         "--days.*not a positive number"),
    Case("metrics-days-word", ("metrics", "--days", "week", "--state-dir", "{state}"), 2,
         "--days.*not a number"),
    Case("history-limit-zero", ("history", "--limit", "0", "--state-dir", "{state}"), 2,
         "--limit"),
    Case("history-run-zero", ("history", "--run", "0", "--state-dir", "{state}"), 2, "--run"),
    Case("history-run-word", ("history", "--run", "last", "--state-dir", "{state}"), 2,
         "--run"),
    Case("history-run-huge", ("history", "--run", "9" * 25, "--state-dir", "{state}"), 2,
         "--run.*not in the range"),
    Case("history-limit-huge", ("history", "--limit", "9" * 25, "--state-dir", "{state}"), 2,
         "--limit.*not in the range"),
    Case("incidents-done-huge", ("incidents", "action", "INC-1", "--done", "9" * 25,
                                 "--state-dir", "{state}"), 2, "--done.*not in the range"),
    Case("history-run-missing", ("history", "--run", "999", "--state-dir", "{state}"), 2,
         "no run 999|no state folder"),
    Case("incidents-write-onto-file", ("incidents", "--write", "{file}", "--state-dir",
                                       "{state}"), 2, "--write.*is a file"),
    Case("unknown-option", ("reconcile", "--frobnicate"), 2, "No such option '--frobnicate'"),
    Case("unknown-command", ("frobnicate",), 2, "No such command 'frobnicate'"),
    Case("retry-without-failed", ("retry", "--state-dir", "{state}"), 2,
         "Missing option '--failed'"),
    Case("suspend-without-reason", ("suspend", "--state-dir", "{state}"), 2,
         "Missing option '--reason'"),
    Case("suspend-blank-reason", ("suspend", "--reason", "  ", "--state-dir", "{state}"), 2,
         "suspend needs a reason"),
    Case("force-without-reason", ("reconcile", "--once", "--force", "--repo", "{repo}",
                                  "--state-dir", "{state}"), 2, "--force needs --reason"),
    Case("rollback-two-revisions", ("rollback", "a", "b"), 2, "unexpected extra argument"),
    Case("config-missing", ("status", "--config", "{root}/nope.toml"), 2,
         "--config.*does not exist"),
    Case("config-is-a-folder", ("status", "--config", "{root}"), 2, "--config.*is a directory"),
    Case("state-dir-is-a-file", ("status", "--state-dir", "{file}"), 2,
         "--state-dir.*is a file"),
    # settings files: exit 2, file and line
    Case("toml-syntax-status", ("status", "--config", "{cfg}/syntax.toml"), 2,
         r"syntax\.toml: line 2: invalid TOML"),
    Case("toml-syntax-validate", ("validate", "--config", "{cfg}/syntax.toml"), 2,
         r"syntax\.toml: line 2: invalid TOML"),
    Case("toml-syntax-run", ("run", "--config", "{cfg}/syntax.toml"), 2,
         r"syntax\.toml: line 2: invalid TOML"),
    Case("four-problems-at-once", ("status", "--config", "{cfg}/four.toml"), 2,
         r"4 problem\(s\) in the settings", lines=4),
    Case("unknown-setting", ("status", "--config", "{cfg}/unknown.toml"), 2,
         r"unknown\.toml:2 colour: Extra inputs are not permitted"),
    Case("environment-without-repo", ("status", "--config", "{cfg}/norepo.toml"), 2,
         r"norepo\.toml:2 environments\.0\.repo: Field required"),
    Case("token-written-inline", ("status", "--config", "{cfg}/plaintoken.toml"), 2,
         r"plaintoken\.toml:2 api_token"),
    Case("grant-to-unknown-team", ("status", "--config", "{cfg}/grantteam.toml"), 2,
         r"grantteam\.toml:4 grants\.0\.team: unknown team 'search' \(teams: payments, or \*\)"),
    Case("grant-of-unknown-role", ("status", "--config", "{cfg}/grantrole.toml"), 2,
         r"grantrole\.toml:3 grants\.0\.role: Input should be 'viewer', 'operator'"),
    # people: tokens, the audit trail, the CLI's own token
    Case("token-unknown-role", ("tokens", "create", "--name", "ci", "--role", "boss",
                                "--state-dir", "{state}"), 2,
         "--role 'boss': one of viewer, operator, rollback, admin"),
    Case("token-bad-expires", ("tokens", "create", "--name", "ci", "--role", "viewer",
                               "--expires", "90x", "--state-dir", "{state}"), 2,
         r"--expires '90x': write a number and h, d or w \(90d\), or never"),
    Case("token-reserved-name", ("tokens", "create", "--name", "api", "--role", "admin",
                                 "--state-dir", "{state}"), 2,
         r"token name 'api' is reserved \(api, local, webhook:\*\)"),
    Case("token-unknown-team", ("tokens", "create", "--name", "ci", "--role", "viewer",
                                "--team", "nope", "--state-dir", "{state}"), 2,
         "--team 'nope': unknown team"),
    Case("token-revoke-unknown", ("tokens", "revoke", "nosuch", "--state-dir", "{state}"), 2,
         "no token named 'nosuch'"),
    Case("audit-bad-since", ("audit", "--since", "yesterday", "--state-dir", "{state}"), 2,
         "--since 'yesterday': an ISO 8601 time"),
    Case("cli-token-not-one-word", ("suspend", "--reason", "x", "--state-dir", "{state}"), 2,
         r"GITOPS_TOKEN: not a token \(one line, no spaces\)",
         env={"GITOPS_TOKEN": "two words"}),
    Case("token-in-two-places", ("status", "--config", "{cfg}/bothtoken.toml"), 2,
         r"bothtoken\.toml:2 api_token: .*exactly one of env or file"),
    Case("jitter-out-of-range", ("status", "--config", "{cfg}/badjitter.toml"), 2,
         r"badjitter\.toml:5 environments\.0\.jitter"),
    Case("unknown-notifier-type", ("status", "--config", "{cfg}/badnotifier.toml"), 2,
         r"badnotifier\.toml:5 environments\.0\.notifiers\.0\.type"),
    Case("malformed-apprise-url", ("status", "--config", "{cfg}/badapprise.toml"), 2,
         r"badapprise\.toml:4 notifiers\.0\.url: .*Apprise cannot use this nonsense:// URL"
         r".*not shown", env={"T_APPRISE_URL": "nonsense://tok3n@host"}),
    Case("unknown-notifier-event", ("status", "--config", "{cfg}/badfilter.toml"), 2,
         r"badfilter\.toml:9 notifiers\.0\.events\.1: Input should be 'failure'"),
    Case("unknown-notifier-team-and-environment", ("status", "--config",
                                                   "{cfg}/badteamfilter.toml"), 2,
         r"badteamfilter\.toml:9 notifiers\.0\.teams: unknown team 'db'", lines=2),
    Case("grafana-without-token", ("status", "--config", "{cfg}/grafananotoken.toml"), 2,
         r"grafananotoken\.toml:2 notifiers\.0: .*grafana needs token"),
    Case("run-bad-listen", ("run", "--config", "{cfg}/listen.toml"), 2,
         "listen address 'nohost': expected host:port"),
    Case("run-no-environments", ("run", "--config", "{cfg}/noenvs.toml"), 2,
         "no environments to watch"),
    Case("run-webhook-secret-missing", ("run", "--config", "{cfg}/hooksecret.toml"), 2,
         "secret file /nonexistent/secret"),
    Case("run-token-variable-unset", ("run", "--config", "{cfg}/unsettoken.toml"), 2,
         "secret environment variable GITOPS_TEST_UNSET_TOKEN is empty or not set"),
    Case("reconcile-token-variable-unset", ("reconcile", "--config",
                                            "{cfg}/unsettoken.toml"), 2,
         "secret environment variable GITOPS_TEST_UNSET_TOKEN is empty or not set"),
    Case("oidc-issuer-plain-http", ("status", "--config", "{cfg}/oidchttp.toml"), 2,
         r"oidchttp\.toml:3 oidc\.issuer: .*https://"),
    Case("oidc-redirect-elsewhere", ("status", "--config", "{cfg}/oidcredirect.toml"), 2,
         r"oidcredirect\.toml:6 oidc\.redirect_url"),
    Case("oidc-secret-written-inline", ("status", "--config", "{cfg}/oidcsecret.toml"), 2,
         r"oidcsecret\.toml:5 oidc\.client_secret"),
    Case("oidc-scopes-without-openid", ("status", "--config", "{cfg}/oidcscopes.toml"), 2,
         r"oidcscopes\.toml:2 oidc: .*scopes must include openid"),
    Case("run-oidc-secret-unset", ("run", "--config", "{cfg}/oidcunset.toml"), 2,
         "secret environment variable GITOPS_TEST_UNSET_OIDC is empty or not set"),
    Case("settings-not-utf8", ("status",), 2, "not UTF-8 text",
         env={"GITOPS_CONFIG": "{cfg}/latin1.toml"}),
    # environment variables
    Case("config-variable-missing-file", ("status",), 2, "settings file .*nope.toml: No such",
         env={"GITOPS_CONFIG": "{root}/nope.toml"}),
    Case("config-variable-folder", ("status",), 2, "settings file .*: Is a directory",
         env={"GITOPS_CONFIG": "{root}"}),
    Case("max-body-variable-not-a-number", ("status", "--state-dir", "{state}"), 2,
         "environment variable GITOPS_MAX_BODY: Input should be a valid integer",
         env={"GITOPS_MAX_BODY": "lots"}),
    Case("environments-variable-not-json", ("status", "--state-dir", "{state}"), 2,
         "environment variable GITOPS_ENVIRONMENTS: not valid JSON",
         env={"GITOPS_ENVIRONMENTS": "prod"}),
    Case("state-dir-variable-unmakeable", ("suspend", "--reason", "x"), 1,
         "No such file or directory: /proc",
         env={"GITOPS_STATE_DIR": "/proc/gitops-test/state"}),
    # approvals (require_approval): refused before anything is recorded
    Case("approve-unknown-environment", ("approve", "-e", "nosuch", "abcdef1", "--reason", "x",
                                         "--config", "{cfg}/approve.toml"), 2,
         "no \\[\\[environments\\]\\] entry named 'nosuch'"),
    Case("approve-malformed-sha", ("approve", "-e", "pay", "main~1", "--reason", "x",
                                   "--config", "{cfg}/approve.toml"), 2,
         "'main~1' is not a commit sha: 7 to 64 lower-case hex digits"),
    Case("approve-without-reason", ("approve", "-e", "pay", "abcdef1", "--config",
                                    "{cfg}/approve.toml"), 2, "Missing option '--reason'"),
    Case("approve-blank-reason", ("approve", "-e", "pay", "abcdef1", "--reason", " ",
                                  "--config", "{cfg}/approve.toml"), 2,
         "an approval needs a reason"),
    Case("approve-not-required", ("approve", "-e", "lab", "abcdef1", "--reason", "x",
                                  "--config", "{cfg}/approve.toml"), 2,
         "lab does not require approval"),
    Case("approve-nothing-waiting", ("approve", "-e", "pay", "abcdef1", "--reason", "x",
                                     "--config", "{cfg}/approve.toml"), 2,
         "pay: no revision is waiting for approval"),
    Case("require-approval-not-a-boolean", ("status", "--config", "{cfg}/badapproval.toml"), 2,
         r"badapproval\.toml:\d+ environments\.0\.require_approval", lines=1),
    # repositories and paths
    Case("repo-does-not-exist", ("validate", "--repo", "{root}/nowhere", "--state-dir",
                                 "{state}"), 1,
         "cannot fetch .*nowhere main: fatal: '[^']*nowhere' does not appear to be a git"),
    Case("repo-is-not-git", ("validate", "--repo", "{cfg}", "--state-dir", "{state}"), 1,
         "cannot fetch"),
    Case("branch-does-not-exist", ("validate", "--repo", "{repo}", "--branch", "nosuch",
                                   "--state-dir", "{state}"), 2, "no branch 'nosuch'"),
    Case("inventory-does-not-exist", ("validate", "--repo", "{repo}", "-e", "nosuch",
                                      "--state-dir", "{state}"), 2,
         r"inventories/nosuch\.yml: no such environment"),
    Case("invalid-declaration-plan", ("plan", "--repo", "{invalid}", "--state-dir", "{state}"),
         2, r"inventories/lab\.yml:\d+ settings\.fail_percent"),
    Case("invalid-declaration-reconcile", ("reconcile", "--once", "--repo", "{invalid}",
                                           "--state-dir", "{state}"), 2,
         r"inventories/lab\.yml:\d+ settings\.fail_percent"),
    # one mistake, one problem: not again for each host of the group it is in
    Case("fingerprint-skip-not-a-boolean", ("validate", "--repo", "{skipword}",
                                            "--state-dir", "{state}"), 2,
         r"inventories/lab\.yml:\d+ settings\.fingerprint_skip"),
    Case("service-listed-bare-needs-parameters", ("validate", "--repo", "{basebare}",
                                                  "--state-dir", "{state}"), 2,
         r"lab\.yml:\d+ groups\.all\.services\.base\.admin_keys: Field required", lines=2),
    Case("group-not-a-mapping", ("validate", "--repo", "{grouplist}", "--state-dir",
                                 "{state}"), 2,
         r"lab\.yml:\d+ groups\.web: Input should be an object", lines=1),
    Case("corrupt-database", ("status", "--state-dir", "{corrupt}"), 1,
         "the state database: file is not a database"),
    Case("suspended-reconcile", ("reconcile", "--once", "--repo", "{repo}", "--state-dir",
                                 "{suspended}"), 2, "lab is suspended by .*: freeze"),
    Case("suspended-retry", ("retry", "--failed", "--repo", "{repo}", "--state-dir",
                             "{suspended}"), 2, "lab is suspended by .*: freeze"),
    Case("rollback-nothing-verified", ("rollback", "--repo", "{repo}", "--state-dir",
                                       "{state}"), 2, "no earlier verified revision"),
    Case("retry-nothing-failed", ("retry", "--failed", "--repo", "{repo}", "--state-dir",
                                  "{state}"), 2, "no failed hosts to retry"),
    Case("lab-sudo-user-root", ("lab", "up", "--name", "badsudo", "--sudo-user", "root"), 2,
         r"--sudo-user 'root': an account name .*, not root"),
    Case("lab-sudo-user-shell", ("lab", "up", "--name", "badsudo", "--sudo-user", "a;rm"), 2,
         r"--sudo-user 'a;rm': an account name"),
    # Vagrant VMs (gitops vagrant, settings.source: vagrant)
    Case("vagrant-up-without-vagrantfile", ("vagrant", "up", "--dir", "{root}"), 2,
         "no Vagrantfile in .* \\(use --dir\\)"),
    Case("vagrant-down-without-vagrantfile", ("vagrant", "down", "--dir", "{cfg}"), 2,
         "no Vagrantfile in .* \\(use --dir\\)"),
    Case("vagrant-dir-is-a-file", ("vagrant", "up", "--dir", "{file}"), 2,
         "--dir.*is a file"),
    Case("vagrant-not-installed", ("validate", "--repo", "{vagrantrepo}", "-e", "vagrant",
                                   "--state-dir", "{state}"), 2,
         r"vagrant\.yml:\d+ settings\.source: `vagrant` is not installed", lines=1,
         env={"PATH": "{gitonly}"}),
    Case("vagrant-no-vagrantfile-for-the-source", ("validate", "--repo", "{vagrantrepo}", "-e",
                                                   "vagrant", "--state-dir", "{state}"), 2,
         r"vagrant\.yml:\d+ settings\.source: no Vagrantfile in .*GITOPS_VAGRANT_DIR",
         lines=1, env={"GITOPS_VAGRANT_DIR": "{cfg}"}),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The files the cases name: repositories, state folders, settings files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    repo = sample_repo(root / "good")
    invalid = sample_repo(root / "bad", invalid=True)
    state, suspended, corrupt = root / "state", root / "suspended", root / "corrupt"
    with Store(suspended) as store:
        store.set_controls("lab", suspended=1, reason="freeze", actor="carol",
                           since="2026-12-01T09:00:00+00:00")
    corrupt.mkdir()
    (corrupt / "gitops.db").write_bytes(b"this is not SQLite " * 100)
    (root / "a-file").write_text("not a folder\n")
    cfg = root / "settings"
    cfg.mkdir()
    vagrantrepo = copy_sample(root / "vagrant")
    git_repo(vagrantrepo, {"inventories/vagrant.yml":
                           (PROJECT / "inventories/vagrant.yml").read_text(),
                           "Vagrantfile": (PROJECT / "Vagrantfile").read_text()}, "vagrant")
    gitonly = root / "gitonly"  # a PATH with git and without vagrant
    gitonly.mkdir()
    (gitonly / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    names = {"root": str(root), "repo": str(repo), "invalid": str(invalid), "state": str(state),
             "file": str(root / "a-file"), "suspended": str(suspended),
             "corrupt": str(corrupt), "cfg": str(cfg), "vagrantrepo": str(vagrantrepo),
             "gitonly": str(gitonly)}
    for name, (old, new) in EDITS.items():
        names[name] = str(_edited(root / name, old, new))
    for name, text in SETTINGS.items():
        (cfg / name).write_text(text.format(**names))
    (cfg / "latin1.toml").write_bytes('state_dir = "/tmp/caf\xe9"\n'.encode("latin-1"))
    return names


def _edited(root: Path, old: str, new: str) -> Path:
    """The sample repository with ``old`` replaced by ``new`` in its inventory, committed."""
    repo = sample_repo(root)
    inventory = repo / "inventories/lab.yml"
    text = inventory.read_text()
    assert old in text
    inventory.write_text(text.replace(old, new, 1))
    commit(repo, "one mistake")
    return repo


def test_there_are_at_least_forty_cases() -> None:
    """The table covers options, settings files, variables, repositories and paths."""
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_message_and_an_exit_code(case: Case, world: dict[str, str]) -> None:
    """The documented exit code, a message on one line saying what is wrong, no traceback."""
    args = [a.format(**world) for a in case.args]
    env = {k: v.format(**world) for k, v in case.env.items()}
    proc = gitops(*args, env=env, cwd=Path(world["root"]), timeout=120)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == case.code, output
    message = proc.stderr or proc.stdout
    assert any(re.search(case.says, line) for line in message.splitlines()), message
    if case.lines:
        assert len(re.findall(r"\.(?:toml|yml):\d+ ", message)) == case.lines, message
    assert "s3cret" not in output


def test_a_commit_of_an_empty_tree_is_a_message(tmp_path: Path) -> None:
    """A branch whose head commits an empty tree: the inventory is missing (exit 2, the
    inventories there listed), not a traceback from extracting it."""
    repo = git_repo(tmp_path / "empty", message="x")
    proc = gitops("reconcile", "--once", "--repo", str(repo), "--state-dir",
                  str(tmp_path / "state"))
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "inventories there: none" in proc.stderr


def test_an_inventory_of_no_host_reconciles_nothing(tmp_path: Path) -> None:
    """``hosts: {}`` is a run that applies and checks nothing (exit 0), not a traceback."""
    repo = git_repo(tmp_path / "nohosts", {"inventories/lab.yml": "hosts: {}\n"}, "x")
    proc = gitops("reconcile", "--once", "--repo", str(repo), "-e", "lab", "--state-dir",
                  str(tmp_path / "state"))
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "succeeded, 0 changed, 0 checks passed" in proc.stdout + proc.stderr
