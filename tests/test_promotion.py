"""Promotion between environments without a lab: the rules as tables (``policy.promotion``,
``pending_promotion``, ``promotion_refusal``, ``next_run`` with a promotion), the lead time per
stage with known answers, the settings' ``promote_from`` checks at file:line, and the real
Daemon on a real Git repository (its hosts unreachable on loopback, so a run is quick and
recorded) with the real store, the HTTP API and the real CLI. The lab run is
``test_promotion_e2e.py``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import git, git_repo
from clitools import gitops

from gitops.daemon import policy
from gitops.daemon.loop import Daemon
from gitops.daemon.policy import (
    Controls,
    Cycle,
    CycleInput,
    EnvStatus,
    LastRun,
    ManualPromotion,
    Promotion,
    PromotionInput,
    RunOrder,
    Trigger,
)
from gitops.daemon.promotion import links
from gitops.record.store import Store
from gitops.records import Revision, RunRow, VerifiedRevision
from gitops.report.delivery import delivery_metrics, stage_lead_times
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.metrics import api_delivery
from gitops.web.page import page_data

C0, C1, C2, C3 = ("0" * 40, "1" * 40, "2" * 40, "3" * 40)
LINE = (C0, C1, C2, C3)
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def given(verified: tuple[str, ...] = (), quarantined: tuple[str, ...] = (),
          applied: str | None = C0, lineage: tuple[str, ...] = LINE,
          by_hand: ManualPromotion | None = None) -> PromotionInput:
    return PromotionInput("staging", lineage, frozenset(verified), frozenset(quarantined),
                          applied, by_hand)


def auto(sha: str, waiting: str | None = None) -> Promotion:
    return Promotion(sha, reason=f"promoted from staging: {sha[:10]} verified on every host "
                                 "there", waiting=waiting)


WAIT_C3 = "waiting for staging to verify 3333333333"
ALICE = ManualPromotion(C3, "alice", "hotfix INC-9", 7)

PROMOTION = [
    ("nothing verified upstream: nothing, the head waits",
     given(), Promotion(None, waiting=WAIT_C3)),
    ("the head verified upstream: applied",
     given(verified=(C1, C2, C3)), auto(C3)),
    ("the newest verified one, the newer head waits",
     given(verified=(C1, C2)), auto(C2, WAIT_C3)),
    ("never backwards: only an older revision is verified",
     given(verified=(C1,), applied=C2), Promotion(None, waiting=WAIT_C3)),
    ("the applied revision is the newest verified: nothing new",
     given(verified=(C1, C2), applied=C2), Promotion(None, waiting=WAIT_C3)),
    ("quarantined upstream: never promoted, the head says so",
     given(verified=(C1,), quarantined=(C3,)),
     auto(C1, "3333333333 is quarantined on staging: it is not promoted")),
    ("a revision both verified and quarantined upstream is not promoted",
     given(verified=(C1, C2), quarantined=(C2,)), auto(C1, WAIT_C3)),
    ("an applied revision gone from the branch (force-push) sets no floor",
     given(verified=(C1,), applied="f" * 40), auto(C1, WAIT_C3)),
    ("nothing applied yet",
     given(verified=(C2,), applied=None), auto(C2, WAIT_C3)),
    ("an operator's promotion comes first",
     given(verified=(C1,), by_hand=ALICE),
     Promotion(C3, reason="promoted by alice: hotfix INC-9", actor="alice")),
]


@pytest.mark.parametrize(("case", "inputs", "expected"), PROMOTION,
                         ids=[c[0] for c in PROMOTION])
def test_promotion(case: str, inputs: PromotionInput, expected: Promotion) -> None:
    """The decision of what a downstream environment may apply, per row of the table."""
    assert policy.promotion(inputs) == expected


def _run(id_: int, kind: str, sha: str, result: str | None, *, event: bool = False,
         actor: str = "gitops-daemon", reason: str = "") -> RunRow:
    return RunRow(id=id_, environment="production", kind=kind, actor=actor, reason=reason,
                  sha=sha, branch="main", author=None, committed_at=None, message=None,
                  started_at=T0, finished_at=T0, result=result, error=None, failed_hosts=(),
                  duration_s=0, changed=0, stage_s={}, event=event)


PROMOTE = _run(5, "promote", C3, "succeeded", event=True, actor="alice", reason="hotfix")
PENDING = [
    ("no promotion", [_run(4, "reconcile", C1, "succeeded")], None),
    ("a promotion not run yet", [PROMOTE, _run(4, "reconcile", C1, "succeeded")],
     ManualPromotion(C3, "alice", "hotfix", 5)),
    ("run and verified since", [_run(6, "reconcile", C3, "succeeded"), PROMOTE], None),
    ("run and failed since (rolled back there)",
     [_run(7, "rollback", C1, "succeeded"), _run(6, "reconcile", C3, "failed"), PROMOTE],
     None),
    ("its run errored: run again", [_run(6, "reconcile", C3, "error"), PROMOTE],
     ManualPromotion(C3, "alice", "hotfix", 5)),
]


@pytest.mark.parametrize(("case", "history", "expected"), PENDING,
                         ids=[c[0] for c in PENDING])
def test_pending_promotion(case: str, history: list[RunRow],
                           expected: ManualPromotion | None) -> None:
    """An operator's promotion waits until a run of its revision decided it."""
    assert policy.pending_promotion(history) == expected


@pytest.mark.parametrize(("sha", "force", "reason", "refused"), [
    (C2, False, "tested", None),
    (C3, False, "tested", "3333333333 is not verified on every host of staging; wait for "
                          "it, or `gitops promote --force --reason WHY`"),
    (C3, True, "hotfix INC-9", None),
    (C1, True, "again", "1111111111 is quarantined on production: it failed there; promote "
                        "a newer revision"),
    (C2, False, "  ", "a promotion needs a reason: who promoted what, and why, is recorded"),
])
def test_promotion_refusal(sha: str, force: bool, reason: str, refused: str | None) -> None:
    """A promotion by hand: verified upstream or forced with a reason; never a revision
    quarantined downstream."""
    assert policy.promotion_refusal(
        "production", "staging", sha, verified=frozenset({C2}),
        quarantined_here=frozenset({C1}), force=force, reason=reason) == refused


def _cycle(promotion: Promotion, status: EnvStatus | None = EnvStatus(C0, C0, ready=True),
           last: LastRun | None = LastRun(C0, "succeeded")) -> CycleInput:
    return CycleInput(C3, Controls(), last, frozenset(), status, promotion=promotion)


NEXT_RUN = [
    ("nothing applied, nothing verified upstream: wait, no run",
     _cycle(Promotion(None, waiting=WAIT_C3), status=None, last=None),
     Cycle(None, why=WAIT_C3, waiting_for=WAIT_C3)),
    ("nothing new: the applied revision is up to date, the head waits",
     _cycle(Promotion(None, waiting=WAIT_C3)),
     Cycle(None, why="0000000000 is up to date", waiting_for=WAIT_C3)),
    ("a verified revision: run it, said why, never the unverified head",
     _cycle(auto(C2, WAIT_C3)),
     Cycle(RunOrder("reconcile", C2, auto(C2).reason, "gitops-daemon", changed_only=True,
                    previous=C0), waiting_for=WAIT_C3)),
    ("an operator's reconcile-now of a verified revision stays theirs",
     CycleInput(C3, Controls(), LastRun(C0, "succeeded"), frozenset(),
                EnvStatus(C0, C0, ready=True), pending=Trigger("operator request", "bob"),
                promotion=auto(C2)),
     Cycle(RunOrder("reconcile", C2, "operator request", "bob", previous=C0))),
    ("an operator's promotion: run by them, with their reason",
     _cycle(Promotion(C3, reason="promoted by alice: hotfix", actor="alice")),
     Cycle(RunOrder("reconcile", C3, "promoted by alice: hotfix", "alice", changed_only=True,
                    previous=C0))),
]


@pytest.mark.parametrize(("case", "inputs", "expected"), NEXT_RUN, ids=[c[0] for c in NEXT_RUN])
def test_next_run_with_promotion(case: str, inputs: CycleInput, expected: Cycle) -> None:
    """A downstream environment's cycle runs only what the promotion allows."""
    assert policy.next_run(inputs) == expected


# -- lead time per stage -----------------------------------------------------------------


def _verified(env: str, sha: str, committed: datetime, verified: datetime,
              upstream: str | None) -> VerifiedRevision:
    return VerifiedRevision(env, sha, "main", committed, verified, 1, upstream)


def test_stage_lead_times_known_answer() -> None:
    """commit -> staging -> production: median and p90 (nearest rank) of each stage; a
    revision forced past staging (never verified there) is left out."""
    one, two = T0, T0 + timedelta(hours=1)
    rows = [
        _verified("staging", C1, one, one + timedelta(minutes=5), None),
        _verified("production", C1, one, one + timedelta(minutes=20), "staging"),
        _verified("staging", C2, two, two + timedelta(minutes=1), None),
        _verified("production", C2, two, two + timedelta(minutes=31), "staging"),
        _verified("production", C3, two, two + timedelta(minutes=40), "staging"),  # forced
    ]
    stages = stage_lead_times(rows, "production", T0, T0 + timedelta(days=1))
    assert [s.as_dict() for s in stages] == [
        {"stage": "commit -> verified on staging", "from": "commit", "to": "staging",
         "count": 2, "median_s": 180.0, "p90_s": 300.0},
        {"stage": "verified on staging -> verified on production", "from": "staging",
         "to": "production", "count": 2, "median_s": 1350.0, "p90_s": 1800.0},
    ]
    assert stage_lead_times(rows, "staging", T0, T0 + timedelta(days=1)) == ()


def test_delivery_metrics_carry_the_stages_from_the_store(tmp_path: Path) -> None:
    """``delivery_metrics`` (CLI, API, page) reads the verified revisions from the store and
    splits the production lead time per stage."""
    clock = [T0 + timedelta(minutes=10)]
    revision = Revision(sha=C1, branch="main", author="t", committed_at=T0, message="one")
    with Store(tmp_path, clock=lambda: clock[0]) as store:
        assert store.record_verified("staging", revision, 1) is True
        clock[0] = T0 + timedelta(minutes=40)
        assert store.record_verified("production", revision, 2, upstream="staging") is True
        clock[0] = T0 + timedelta(hours=3)
        assert store.record_verified("staging", revision, 3) is False  # the first time stays
        found = delivery_metrics(store, environment="production", days=1,
                                 now=T0 + timedelta(hours=4))["production"].as_dict()
        api = api_delivery(store, "production", 36500)  # GET /api/delivery
    assert [(s["stage"], s["median_s"]) for s in found["stages"]] == [
        ("commit -> verified on staging", 600.0),
        ("verified on staging -> verified on production", 1800.0)]
    assert api is not None and api["production"]["stages"] == found["stages"]


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("production", "staging", "message"), [
    ('promote_from = "stagin"', "", "no environment named 'stagin'; environments: "
                                    "production, staging"),
    ('promote_from = "production"', "", "'production' cannot promote from itself"),
    ('promote_from = "staging"', 'promote_from = "production"',
     "promotion cycle: production <- staging <- production"),
])
def test_bad_promote_from_names_file_and_line(tmp_path: Path, production: str, staging: str,
                                              message: str) -> None:
    """An unknown, self or cyclic promote_from exits 2 naming the file, the line, the field."""
    config = tmp_path / "gitops.toml"
    config.write_text('[[environments]]\nname = "staging"\nrepo = "/srv/state"\n'
                      f"{staging}\n\n[[environments]]\nname = \"production\"\n"
                      f'repo = "/srv/state"\n{production}\n')
    result = gitops("status", "--config", str(config), env={"GITOPS_STATE_DIR":
                                                            str(tmp_path / "state")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config}:9 environments.1.promote_from: {message}" in result.stderr
    assert "Traceback" not in result.stderr


# -- the real daemon, store, API and CLI on a real repository -----------------------------


def _repo(tmp_path: Path) -> Path:
    """Two inventories, each one host unreachable on loopback (a run ends fast, recorded)."""
    return git_repo(tmp_path / "repo", {
        f"inventories/{name}.yml":
            "settings:\n  ssh:\n    port: 9\n    connect_timeout: 2\ngroups:\n  web: {}\n"
            f"hosts:\n  {name}-1:\n    address: 127.0.0.1\n    groups: [web]\n"
        for name in ("staging", "production")})


def _settings(tmp_path: Path, repo: Path) -> Settings:
    envs = [EnvironmentConfig(name="staging", repo=str(repo), watch=False, interval=7200,
                              jitter=0),
            EnvironmentConfig(name="production", repo=str(repo), watch=False, interval=7200,
                              jitter=0, promote_from="staging")]
    return Settings(state_dir=tmp_path / "state", environments=envs)


def _history(d: Daemon, env: str) -> list[dict[str, Any]]:
    with Store(d.settings.state_dir) as store:
        return [r.as_dict() for r in store.history(env, limit=20)]


def _verify_on_staging(d: Daemon, sha: str) -> None:
    """What a succeeded staging run records (``reconcile`` writes it after verifying)."""
    with Store(d.settings.state_dir) as store:
        revision = Revision(sha=sha, branch="main", author="T", committed_at=T0, message="m")
        store.record_verified("staging", revision, 1)


def test_the_daemon_waits_for_staging_then_runs_what_it_verified(tmp_path: Path) -> None:
    """Production runs nothing and says what it waits for until staging verified the
    revision; then it runs that revision, and the pipeline (API, page, CLI) shows it."""
    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    d = Daemon(_settings(tmp_path, repo))
    d.cycle(d.envs["production"], None)
    assert _history(d, "production") == []
    waiting = f"waiting for staging to verify {head[:10]}"
    pipeline = {p["environment"]: p for p in d.pipeline()}
    assert pipeline["production"]["waiting"] == waiting
    assert pipeline["production"]["promote_from"] == "staging"
    with Store(d.settings.state_dir) as store:
        page = page_data(store, chain=links(d.settings.environments))
    assert [p["waiting"] for p in page["pipeline"]] == [None, waiting]
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[environments]]\n'
                      f'name = "staging"\nrepo = "{repo}"\n[[environments]]\n'
                      f'name = "production"\nrepo = "{repo}"\npromote_from = "staging"\n')
    status = gitops("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "production <- staging" in status.stdout and waiting in status.stdout

    _verify_on_staging(d, head)
    d.cycle(d.envs["production"], None)
    runs = _history(d, "production")
    assert [(r["kind"], r["sha"]) for r in runs] == [("reconcile", head)]
    assert runs[0]["reason"] == f"promoted from staging: {head[:10]} verified on every host there"
    assert {p["environment"]: p["verified"] for p in d.pipeline()}["staging"] == head


def test_promote_by_hand_over_the_api(tmp_path: Path) -> None:
    """POST promote: 409 for a revision not verified on staging, 422 without a reason or for
    an unknown revision, 401 without the token; forced with a reason it is recorded with who
    and why, and the next cycle runs it as theirs."""
    from gitops.settings import SecretRef
    from gitops.web.server import bound_port, create_app, start_in_thread, stop

    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    settings = _settings(tmp_path, repo).model_copy(
        update={"api_token": SecretRef(env="GITOPS_TEST_PROMOTE_TOKEN")})
    auth = {"Authorization": "Bearer promote-token-for-tests"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITOPS_TEST_PROMOTE_TOKEN", "promote-token-for-tests")
        d = Daemon(settings)
        server, thread = start_in_thread(create_app(d, settings), "127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{bound_port(server)}"
        url = f"{base}/api/environments/production/promote"
        no_token = httpx.post(url, json={"revision": head, "reason": "x"}, timeout=10)
        refused = httpx.post(url, json={"revision": head, "reason": "tested"}, headers=auth,
                             timeout=10)
        no_reason = httpx.post(url, json={"revision": head}, headers=auth, timeout=10)
        unknown = httpx.post(url, json={"revision": "deadbeef", "reason": "x"}, headers=auth,
                             timeout=10)
        staging = httpx.post(f"{base}/api/environments/staging/promote",
                             json={"revision": head, "reason": "x"}, headers=auth, timeout=10)
        named = httpx.post(url, json={"revision": head[:12], "reason": "hotfix INC-9",
                                      "force": True, "actor": "alice"}, headers=auth,
                           timeout=10)
        forced = httpx.post(url, json={"revision": head[:12], "reason": "hotfix INC-9",
                                       "force": True}, headers=auth, timeout=10)
        pipeline = httpx.get(f"{base}/api/pipeline", headers=auth, timeout=10)
    finally:
        stop(server, thread)
    assert no_token.status_code == 401
    assert refused.status_code == 409
    assert refused.json()["error"] == (f"production: {head[:10]} is not verified on every host "
                                       "of staging; wait for it, or `gitops promote --force "
                                       "--reason WHY`")
    assert no_reason.status_code == 422 and unknown.status_code == 422
    assert "no revision 'deadbeef'" in unknown.json()["error"]
    assert staging.status_code == 422
    assert named.status_code == 400 and "field 'actor'" in named.json()["error"]
    assert forced.status_code == 200, forced.text
    assert forced.json()["sha"] == head and forced.json()["forced"] is True
    assert [p["environment"] for p in pipeline.json()] == ["staging", "production"]
    event = _history(d, "production")[0]
    assert (event["kind"], event["actor"], event["sha"]) == ("promote", "api", head)
    assert event["reason"] == "forced: not verified on every host of staging: hotfix INC-9"
    pending = d.envs["production"].pending
    d.envs["production"].pending = None
    d.cycle(d.envs["production"], pending)
    run = _history(d, "production")[0]
    assert (run["kind"], run["sha"], run["actor"]) == ("reconcile", head, "api")
    assert run["reason"] == ("promoted by api: forced: not verified on every host of "
                             "staging: hotfix INC-9")


def test_cli_promote_refuses_an_unverified_revision_with_exit_2(tmp_path: Path) -> None:
    """`gitops promote` with no daemon: exit 2 and the reason for a revision not verified on
    staging, nothing recorded; an environment without promote_from is a usage error."""
    repo = _repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:9"\n'
                      f'[[environments]]\nname = "staging"\nrepo = "{repo}"\n'
                      f'[[environments]]\nname = "production"\nrepo = "{repo}"\n'
                      'promote_from = "staging"\n')
    refused = gitops("promote", "--config", str(config), "-e", "production", "--revision",
                     head, "--reason", "tested")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{head[:10]} is not verified on every host of staging" in refused.stderr
    assert "Traceback" not in refused.stderr
    history = gitops("history", "--json", "--config", str(config))
    assert json.loads(history.stdout or "[]") == []
    upstream = gitops("promote", "--config", str(config), "-e", "staging", "--revision", head,
                      "--reason", "x")
    assert upstream.returncode == 2
    assert "staging does not promote from another environment" in upstream.stderr
