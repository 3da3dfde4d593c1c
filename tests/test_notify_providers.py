"""Every notifier kind against a receiver on 127.0.0.1 that checks each request against the
service's documented format (``tests/receivers.py``), a real SMTP server for e-mail, the
filters, the retries, the record of deliveries and ``NotifierFailing``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import self_signed
from clitools import gitops
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receivers import HttpReceiver, SmtpReceiver

from gitops.daemon.notify import Event, NotifierConfig, notify
from gitops.daemon.notify_providers import short_message
from gitops.record.store import Database, Store
from gitops.settings import SecretRef

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
TOKEN = "tok3nSECRETvalue42"
PAGE = "https://gitops.example.com/"

FAILURE = Event(kind="failure", environment="prod", sha=SHA, author="Ann <ann@example.com>",
                message="raise the worker count",
                summary="verify failed on web1: nginx port 80 not listening\nline 2\nline 3\n"
                        "line 4 stays on the page",
                failed_hosts=("web1",), run_id=7)


def config(monkeypatch: pytest.MonkeyPatch, kind: str, url: str, **extra: Any) -> NotifierConfig:
    """A notifier whose URL (and token, key) are environment variables, as in settings."""
    variable = f"T_{kind.upper()}_URL_{abs(hash(url)) % 10**6}"
    monkeypatch.setenv(variable, url)
    for field in ("token", "hmac_key"):
        if field in extra:
            monkeypatch.setenv(f"T_{field.upper()}", extra[field])
            extra[field] = SecretRef(env=f"T_{field.upper()}")
    return NotifierConfig(type=kind, url=SecretRef(env=variable), **extra)  # type: ignore[arg-type]


def no_sleep(seconds: float) -> None:
    """Backoff without waiting (the retries are counted, not timed)."""


@pytest.fixture
def receivers() -> Iterator[list[HttpReceiver]]:
    made: list[HttpReceiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[HttpReceiver], kind: str, **kw: Any) -> HttpReceiver:
    r = HttpReceiver(kind, **kw)
    made.append(r)
    return r


def test_the_message_is_short_and_says_what_where_which_commit_and_links_the_page() -> None:
    """Title: what and where; text: the commit by whom, three lines of what failed, the link."""
    title, text = short_message(FAILURE, PAGE)
    assert title == "Rollout failed in prod on web1"
    lines = text.splitlines()
    assert lines[0] == ("commit 3f786850e3 \u201craise the worker count\u201d"
                        " by Ann <ann@example.com>")
    assert lines[1:4] == ["verify failed on web1: nginx port 80 not listening", "line 2",
                          "line 3"]
    assert "line 4" not in text and lines[4] == "(and 1 more lines on the page)"
    assert lines[-1] == "https://gitops.example.com/#run-7"


def test_teams_workflows_mattermost_and_ntfy_get_the_same_message(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver], tmp_path: Path) -> None:
    """Through Apprise: a Teams adaptive card (HTTPS), a Mattermost hook and an ntfy topic,
    each in its documented form, each carrying the same title and text."""
    teams = receiver(receivers, "teams", cert=self_signed(tmp_path))
    mattermost = receiver(receivers, "mattermost")
    ntfy = receiver(receivers, "ntfy")
    configs = [
        config(monkeypatch, "apprise", f"workflows://127.0.0.1:{teams.port}/wf1/SIG{TOKEN}"
                                       "?verify=no&image=no"),
        config(monkeypatch, "apprise", f"mmost://127.0.0.1:{mattermost.port}/{TOKEN}"),
        config(monkeypatch, "apprise", f"ntfy://127.0.0.1:{ntfy.port}/deploys"),
    ]
    deliveries = notify(configs, FAILURE, page_url=PAGE, sleep=no_sleep)
    assert [d.state for d in deliveries] == ["delivered"] * 3, deliveries
    title, text = short_message(FAILURE, PAGE)
    for r in (teams, mattermost, ntfy):
        assert r.problems == [] and len(r.requests) == 1
    card = teams.requests[0].json()["attachments"][0]["content"]["body"]
    shown = [re.sub(r"\\(.)", r"\1", b["text"]) for b in card]  # markdown escapes, as shown
    assert shown == [title, text]
    assert mattermost.requests[0].json()["text"].endswith(text)
    assert title in mattermost.requests[0].json()["text"]
    sent = ntfy.requests[0]
    said = sent.json() if sent.path == "/" else {"message": sent.raw.decode(),
                                                 "title": sent.headers.get("x-title")}
    assert said["message"] == text and said["title"] == title
    assert all(TOKEN not in (d.error or "") for d in deliveries)


def test_email_reaches_a_real_smtp_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mailto://`` with the SMTP server on 127.0.0.1, no TLS: one message, the same text."""
    smtp = SmtpReceiver()
    try:
        c = config(monkeypatch, "apprise", f"mailto://127.0.0.1:{smtp.port}?from="
                   "gitops@example.com&to=ops@example.com&mode=insecure")
        deliveries = notify([c], FAILURE, page_url=PAGE, sleep=no_sleep)
    finally:
        smtp.close()
    assert [d.state for d in deliveries] == ["delivered"]
    assert smtp.envelopes == [("gitops@example.com", ["ops@example.com"])]
    title, text = short_message(FAILURE, PAGE)
    message = smtp.messages[0]
    assert message["Subject"] == title
    body = message.get_payload(decode=True) if not message.is_multipart() else \
        message.get_payload(0).get_payload(decode=True)  # type: ignore[union-attr]
    assert isinstance(body, bytes) and body.decode().replace("\r\n", "\n").strip() == text


def test_alertmanager_fires_on_failure_and_resolves_on_recovery(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """The same labels twice: startsAt on the failure, endsAt on the recovery; other kinds
    are not sent to it."""
    am = receiver(receivers, "alertmanager")
    c = config(monkeypatch, "alertmanager", f"http://127.0.0.1:{am.port}")
    recovery = Event(kind="recovery", environment="prod", sha=SHA, summary="verified")
    drift = Event(kind="drift", environment="prod", summary="web1 drifted")
    for event in (FAILURE, drift, recovery):
        notify([c], event, page_url=PAGE, sleep=no_sleep)
    assert am.problems == [] and len(am.requests) == 2
    fired, resolved = (r.json()[0] for r in am.requests)
    assert fired["labels"] == resolved["labels"] == {
        "alertname": "GitopsRolloutFailed", "environment": "prod", "severity": "critical",
        "source": "gitops"}
    assert "startsAt" in fired and "endsAt" not in fired
    assert "endsAt" in resolved


def test_grafana_gets_an_annotation_with_tags_and_the_bearer_token(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """One annotation per rollout and rollback, tagged gitops, the environment, the kind."""
    grafana = receiver(receivers, "grafana", token=TOKEN)
    c = config(monkeypatch, "grafana", f"http://127.0.0.1:{grafana.port}", token=TOKEN)
    rollback = Event(kind="rollback", environment="prod", sha=SHA, summary="rolled back")
    deliveries = notify([c], rollback, page_url=PAGE, sleep=no_sleep)
    assert [d.state for d in deliveries] == ["delivered"] and grafana.problems == []
    body = grafana.requests[0].json()
    assert body["tags"] == ["gitops", "prod", "rollback"]
    assert body["text"].startswith("Rolled back in prod")


def test_a_signed_webhook_carries_the_hmac_of_its_raw_body(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """``X-Gitops-Signature: sha256=<hex>`` recomputed by the receiver from the bytes it got."""
    hook = receiver(receivers, "webhook")
    c = config(monkeypatch, "webhook", f"http://127.0.0.1:{hook.port}/hook",
               hmac_key="k3y-of-the-hook")
    notify([c], FAILURE, page_url=PAGE, sleep=no_sleep)
    from receivers import problems_of

    sent = hook.requests[0]
    assert problems_of("webhook", sent, key="k3y-of-the-hook") == []
    assert problems_of("webhook", sent, key="another key") != []
    body = sent.json()
    assert body["schema"] == "gitops.notification/v1" and body["severity"] == "critical"
    assert body["text"] == short_message(FAILURE, PAGE)[1]


def test_4xx_is_refused_at_once_and_5xx_retried(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """A 404 ends it after one request (refused); 503s are sent again until one succeeds."""
    hook = receiver(receivers, "webhook")
    c = config(monkeypatch, "webhook", f"http://127.0.0.1:{hook.port}/hook")
    hook.script.extend([404])
    (first,) = notify([c], FAILURE, sleep=no_sleep)
    assert (first.state, first.attempts, len(hook.requests)) == ("refused", 1, 1)
    hook.script.extend([503, 503])
    (second,) = notify([c], FAILURE, sleep=no_sleep)
    assert (second.state, second.attempts, len(hook.requests)) == ("delivered", 3, 4)


def test_apprise_4xx_is_refused_without_retry(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """Mattermost answering 403 through Apprise: one request, refused, the token not shown."""
    mattermost = receiver(receivers, "mattermost")
    mattermost.script.extend([403])
    c = config(monkeypatch, "apprise", f"mmost://127.0.0.1:{mattermost.port}/{TOKEN}")
    (d,) = notify([c], FAILURE, sleep=no_sleep)
    assert (d.state, d.status, len(mattermost.requests)) == ("refused", 403, 1)
    assert TOKEN not in (d.error or "")


@pytest.mark.parametrize(("filters", "event", "team", "heard"), [
    ({}, FAILURE, None, True),
    ({"events": ["recovery"]}, FAILURE, None, False),
    ({"severities": ["critical"]}, FAILURE, None, True),
    ({"severities": ["info"]}, FAILURE, None, False),
    ({"environments": ["staging"]}, FAILURE, None, False),
    ({"environments": ["prod"]}, FAILURE, None, True),
    ({"teams": ["payments"]}, FAILURE, "search", False),
    ({"teams": ["payments"]}, FAILURE, "payments", True),
    ({"teams": ["payments"]}, FAILURE, None, False),
])
def test_filters(monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver],
                 filters: dict[str, Any], event: Event, team: str | None, heard: bool) -> None:
    """A notifier hears an event only when its kind, severity, environment and team fit."""
    hook = receiver(receivers, "webhook")
    c = config(monkeypatch, "webhook", f"http://127.0.0.1:{hook.port}/hook", **filters)
    notify([c], event, team=team, sleep=no_sleep)
    assert bool(hook.requests) is heard


def test_failing_for_an_hour_is_a_condition_until_one_delivery_succeeds(
        store_backend: Database) -> None:
    """On SQLite and PostgreSQL: NotifierFailing appears on the environment's row once every
    delivery has failed for an hour, and leaves with the next one delivered."""
    clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    with store_backend.open(clock=lambda: clock[0]) as store:
        store.set_status("prod", "", [])
        store.record_delivery("pager", "prod", "failure", "failed", "HTTP 503")
        clock[0] += timedelta(minutes=59)
        store.record_delivery("pager", "prod", "failure", "failed", "HTTP 503")
        assert not any(c.type == "NotifierFailing" for c in store.status("prod")[0].conditions)
        clock[0] += timedelta(minutes=2)
        (row,) = store.status("prod")
        (cond,) = [c for c in row.conditions if c.type == "NotifierFailing"]
        assert "notifier pager" in cond.message and "HTTP 503" in cond.message
        assert store.page_mark()[-1] == ("pager",)  # the page shows it without a write
        store.record_delivery("pager", "prod", "failure", "delivered")
        assert not any(c.type == "NotifierFailing" for c in store.status("prod")[0].conditions)


def test_a_notifier_failing_on_the_digest_is_a_condition_of_every_environment(
        store_backend: Database) -> None:
    """A digest serves every environment (its deliveries have none): a notifier that has
    failed it for an hour is NotifierFailing on each environment's row, once."""
    clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    with store_backend.open(clock=lambda: clock[0]) as store:
        store.set_status("prod", "", [])
        store.set_status("staging", "", [])
        store.record_delivery("digest-webhook-1", "", "digest", "refused", "HTTP 403")
        store.record_delivery("digest-webhook-1", "prod", "failure", "failed", "HTTP 503")
        clock[0] += timedelta(minutes=61)
        for env in ("prod", "staging"):
            (row,) = store.status(env)
            (cond,) = [c for c in row.conditions if c.type == "NotifierFailing"]
            assert "notifier digest-webhook-1" in cond.message, cond


def test_gitops_status_shows_a_failing_notifier(tmp_path: Path) -> None:
    """``gitops status`` prints the NotifierFailing condition with the last reason."""
    past = datetime.now(UTC) - timedelta(hours=2)
    with Store(tmp_path / "state", clock=lambda: past) as store:
        store.set_status("prod", "", [])
        store.record_delivery("on-call", "prod", "failure", "refused", "HTTP 404: no hook")
    done = gitops("status", "--state-dir", str(tmp_path / "state"))
    assert "NotifierFailing: notifier on-call: nothing delivered since" in done.stdout
    assert "HTTP 404: no hook" in done.stdout


# -- the command line --------------------------------------------------------------------


def settings_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gitops.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\npage_url = "{PAGE}"\n' + body)
    return path


def test_notify_test_prints_the_answer_and_list_hides_the_url(
        tmp_path: Path, receivers: list[HttpReceiver]) -> None:
    """``gitops notify test`` sends one message and prints what came back; exit 1 when
    refused; ``gitops notify list`` names where the URL is, never the URL."""
    grafana = receiver(receivers, "grafana", token=TOKEN)
    cfg = settings_file(tmp_path, (
        'teams = ["payments"]\n[[notifiers]]\nname = "dashboards"\ntype = "grafana"\n'
        'url = { env = "T_GRAFANA" }\ntoken = { env = "T_TOKEN" }\nteams = ["payments"]\n'))
    env = {"T_GRAFANA": f"http://127.0.0.1:{grafana.port}", "T_TOKEN": TOKEN}
    done = gitops("notify", "test", "dashboards", "--config", str(cfg), env=env)
    assert done.returncode == 0, done.stderr
    assert "dashboards (grafana): delivered, HTTP 200" in done.stdout
    assert "Annotation added" in done.stdout and grafana.problems == []
    grafana.script.extend([401])
    refused = gitops("notify", "test", "dashboards", "--config", str(cfg), env=env)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    listed = gitops("notify", "list", "--json", "--config", str(cfg), env=env)
    assert json.loads(listed.stdout)[0]["teams"] == ["payments"]
    assert f"127.0.0.1:{grafana.port}" not in listed.stdout and TOKEN not in listed.stdout
    unknown = gitops("notify", "test", "nobody", "--config", str(cfg), env=env)
    assert unknown.returncode == 2 and "no notifier named 'nobody'" in unknown.stderr


# -- the Apprise URL check at load -----------------------------------------------------------

_SCHEMES = st.sampled_from(["mmost", "ntfy", "mailto", "workflows", "json", "nonsense", "",
                            "discord", "tgram"])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=_SCHEMES, rest=st.text(max_size=60))
def test_an_apprise_url_is_accepted_or_refused_never_echoed(
        monkeypatch: pytest.MonkeyPatch, scheme: str, rest: str) -> None:
    """Any text as an Apprise URL: the notifier loads, or one validation error on its
    ``url`` that does not hold the URL's token; never another exception."""
    from pydantic import ValidationError

    url = f"{scheme}://{TOKEN}{rest}".replace("\x00", "")
    monkeypatch.setenv("T_FUZZ_URL", url)
    try:
        NotifierConfig(type="apprise", url=SecretRef(env="T_FUZZ_URL"))
    except ValidationError as exc:
        (error,) = exc.errors()
        assert error["loc"] == ("url",)
        assert TOKEN not in str(exc)


def test_the_digest_reaches_an_apprise_notifier_and_skips_alertmanager(
        monkeypatch: pytest.MonkeyPatch, receivers: list[HttpReceiver]) -> None:
    """A digest goes to Mattermost through Apprise as its title and text; an Alertmanager
    gets none (a digest is no alert)."""
    from gitops.daemon.notify import notify_digest

    mattermost = receiver(receivers, "mattermost")
    am = receiver(receivers, "alertmanager")
    configs = [config(monkeypatch, "apprise", f"mmost://127.0.0.1:{mattermost.port}/{TOKEN}"),
               config(monkeypatch, "alertmanager", f"http://127.0.0.1:{am.port}")]
    deliveries = notify_digest(configs, {"schema": "x"}, "web: 3 deployments", "Weekly digest")
    assert [d.state for d in deliveries] == ["delivered"]
    assert mattermost.problems == [] and am.requests == []
    said = mattermost.requests[0].json()["text"]
    assert "Weekly digest" in said and "web: 3 deployments" in said
