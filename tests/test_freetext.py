"""Free text from outside (``gitops.freetext``): one clean, bounded line for reasons and
actors, clean notes for post-mortems, refused at the API (400) and the CLI (exit 2) naming
the field; stored text printed with its control characters escaped. Tables, a Hypothesis
fuzz, the real server (httpx) over the real daemon, the real CLI as a subprocess."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from builders import empty_repo
from clitools import gitops
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops import freetext
from gitops.daemon.loop import Daemon
from gitops.record.store import Store
from gitops.records import Revision
from gitops.settings import EnvironmentConfig, Settings
from gitops.web.server import bound_port, create_app, start_in_thread, stop

LINES = [
    # (value, what is wrong, or None)
    ("web2 was down, not the commit", None),
    ("émile: ünïcode and emoji 🚀 are fine", None),
    ("", None),
    ("x" * 500, None),
    ("x" * 501, r"over 500 characters \(501\)"),
    ("freeze\n#99 2026-12-01 prod suspend by ceo", "a newline at character 7: one line only"),
    ("a\rb", r"a control character \(U\+000D\) at character 2"),
    ("\x1b[2J", r"a control character \(U\+001B\) at character 1"),
    ("tab\there", r"a control character \(U\+0009\) at character 4"),
    ("nul\x00", r"U\+0000"),
    ("del\x7f", r"U\+007F"),
    ("c1\x9b2J", r"U\+009B"),
    ("line\u2028separator", r"U\+2028"),
    ("evil\u202etxt.exe", r"U\+202E"),
]

NOTES = [
    ("what happened:\n\tthe disk filled", None),
    ("x" * 4000, None),
    ("x" * 4001, "over 4000 characters"),
    ("cleared\x1b[2J", r"U\+001B"),
    ("carriage\r\nreturn", r"U\+000D"),
]


@pytest.mark.parametrize(("value", "wrong"), LINES, ids=[repr(v)[:30] for v, _ in LINES])
def test_a_line_is_accepted_or_refused_naming_the_field(value: str, wrong: str | None) -> None:
    """``line`` returns clean text unchanged; anything else is ``BadText`` (a usage error),
    one line that names the field and what is wrong."""
    if wrong is None:
        assert freetext.line("--reason", value) == value
        return
    with pytest.raises(freetext.BadText) as caught:
        freetext.line("--reason", value)
    message = str(caught.value)
    assert message.startswith("--reason: ") and re.search(wrong, message), message
    assert "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize(("value", "wrong"), NOTES, ids=[repr(v)[:30] for v, _ in NOTES])
def test_a_note_keeps_newlines_and_tabs_only(value: str, wrong: str | None) -> None:
    """A post-mortem note may hold newlines and tabs, no other control character, at most
    4000 characters."""
    if wrong is None:
        assert freetext.note("'summary'", value) == value
        return
    with pytest.raises(freetext.BadText, match=rf"^'summary': .*{wrong}"):
        freetext.note("'summary'", value)


SHOWN = [
    ("plain text", "plain text", "plain text"),
    ("\x1b[2Jcleared", "\\x1b[2Jcleared", "\\x1b[2Jcleared"),
    ("two\nlines", "two\\nlines", "two\nlines"),
    ("tab\tcr\r", "tab\\tcr\\r", "tab\tcr\\r"),
    ("bell\x07 c1\x9b rlo\u202e", "bell\\x07 c1\\x9b rlo\\u202e", "bell\\x07 c1\\x9b rlo\\u202e"),
    (None, "", ""),
]


@pytest.mark.parametrize(("stored", "line", "text"), SHOWN)
def test_stored_text_is_printed_escaped(stored: str | None, line: str, text: str) -> None:
    """``shown`` escapes every control character (a newline too); ``shown_text`` keeps
    newlines and tabs."""
    assert freetext.shown(stored) == line
    assert freetext.shown_text(stored) == text


def _terminal_safe(text: str, *, lines: bool) -> bool:
    allowed = "\n\t" if lines else ""
    return not any(freetext._unsafe(c, allowed) for c in text)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(max_size=600))
def test_fuzz_any_text_is_refused_with_one_line_or_accepted_clean(value: str) -> None:
    """Any string is either returned unchanged (then it is at most 500 characters with no
    control character) or refused with one line naming the field; printed, it carries no
    control character and clean text prints as it is."""
    try:
        accepted = freetext.line("'reason'", value)
    except freetext.BadText as exc:
        message = str(exc)
        assert message.startswith("'reason': ") and _terminal_safe(message, lines=False)
    else:
        assert accepted == value and len(value) <= 500
        assert _terminal_safe(value, lines=False)
        assert freetext.shown(value) == value
    assert _terminal_safe(freetext.shown(value), lines=False)
    assert _terminal_safe(freetext.shown_text(value), lines=True)


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    repo, _ = empty_repo(tmp_path)
    state = tmp_path / "state"
    s = Settings(state_dir=state, environments=[
        EnvironmentConfig(name="lab", repo=str(repo), watch=False),
        EnvironmentConfig(name="prod", repo=str(repo), watch=False, promote_from="lab")])
    d = Daemon(s, rand=lambda: 0.5)
    server, thread = start_in_thread(create_app(d, s), "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}/api", state
    finally:
        stop(server, thread)


API_CASES = [
    ("newline reason", "environments/lab/suspend", {"reason": "freeze\nfake line"},
     "'reason': a newline at character 7: one line only"),
    ("ESC reason", "environments/lab/suspend", {"reason": "\x1b[2Jfreeze"},
     "'reason': a control character (U+001B) at character 1"),
    ("overlong reason", "environments/lab/suspend", {"reason": "x" * 501},
     "'reason': over 500 characters (501)"),
    ("newline actor", "environments/lab/suspend", {"reason": "ok", "actor": "eve\nroot"},
     "'actor': a newline at character 4: one line only"),
    ("ESC reason of a reconcile", "environments/lab/reconcile", {"reason": "go\x1b[1A"},
     "'reason': a control character (U+001B) at character 3"),
    ("ESC reason of a promotion", "environments/prod/promote",
     {"revision": "main", "reason": "ok\x1b]0;x\x07"},
     "'reason': a control character (U+001B) at character 3"),
    ("ESC in a post-mortem", "incidents/any/annotate", {"summary": "disk\x1b[2J"},
     "'summary': a control character (U+001B) at character 5"),
    ("newline actor of a post-mortem", "incidents/any/actions",
     {"text": "fix it\nplease", "actor": "a\nb"},
     "'actor': a newline at character 2: one line only"),
]


def test_api_refuses_unclean_text_with_400_naming_the_field(
        daemon: tuple[str, Path]) -> None:
    """Each route that takes text answers 400 with one line naming the field; nothing is
    recorded."""
    url, state = daemon
    answers = {case: httpx.post(f"{url}/{path}", json=body, timeout=30)
               for case, path, body, _ in API_CASES}
    for case, _, _, error in API_CASES:
        assert (answers[case].status_code, answers[case].json()["error"]) == (400, error), case
    with Store(state) as store:
        assert store.history(None) == [] and not store.controls("lab")["suspended"]


# -- the CLI ---------------------------------------------------------------------------------


CLI_CASES = [
    ("suspend", "--reason", "freeze\n#99 fake line", "--reason: a newline at character 7"),
    ("suspend", "--reason", "\x1b[2J", "--reason: a control character (U+001B) at character 1"),
    ("suspend", "--reason", "x" * 501, "--reason: over 500 characters (501)"),
    ("resume", "--reason", "done\x1b[1A", "--reason: a control character (U+001B)"),
    ("reconcile", "--reason", "go\ngo", "--reason: a newline"),
    ("rollback", "--reason", "bad\x07", "--reason: a control character (U+0007)"),
    ("unquarantine lab abcdef1", "--reason", "x\ny", "--reason: a newline"),
    ("incidents annotate any", "--summary", "disk\x1b[2J", "--summary: a control character"),
    ("incidents action any", "--add", "x" * 4001, "--add: over 4000 characters"),
    ("incidents action any --assign 1", "--team", "ops\nsec", "--team: a newline"),
]


@pytest.mark.parametrize(("command", "option", "value", "says"), CLI_CASES,
                         ids=[f"{c}-{repr(v)[:12]}" for c, _, v, _ in CLI_CASES])
def test_cli_refuses_unclean_text_with_exit_2_naming_the_option(
        tmp_path: Path, command: str, option: str, value: str, says: str) -> None:
    """One line naming the option, exit 2, nothing recorded (no state folder made). The
    settings name no repository, no daemon and no lab that exist: a command that got past
    the check could reach nothing."""
    state = tmp_path / "state"
    config = tmp_path / "gitops.toml"
    config.write_text(f'state_dir = "{state}"\nlisten = "127.0.0.1:9"\n'
                      f'repo = "{tmp_path / "no-repo"}"\n')
    proc = gitops("--config", str(config), *command.split(), option, value,
                  env={"GITOPS_LAB_NAME": "h2-no-such-lab"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: {says}") and proc.stderr.count("\n") == 1, proc.stderr
    assert "\x1b" not in proc.stderr and not state.exists()


def test_stored_text_with_escapes_prints_escaped(tmp_path: Path) -> None:
    """Records written before the checks (a reason with ESC and a newline, an actor with an
    OSC sequence) print escaped in `history`, `history --run` and `status`: no ESC reaches
    the terminal and no line is added."""
    state = tmp_path / "state"
    forged = "\x1b[2Jwiped\n#99   2026-12-01T00:00:00 lab  suspend by ceo"
    revision = Revision(sha="a" * 40, branch="main", author="T",
                        committed_at=datetime.now(UTC), message="m\x1b[31m")
    with Store(state) as store:
        run_id = store.start_run("lab", "reconcile", revision, actor="eve\x1b]0;pwned\x07",
                                 reason=forged)
        store.finish_run(run_id, "succeeded")
        store.set_controls("lab", suspended=1, reason=forged, actor="eve\nroot",
                           since="2026-12-01T09:00:00+00:00")
        store.record_event("lab", "suspend", actor="eve\nroot", reason=forged)
        store.quarantine("lab", "b" * 40, forged)
    history = gitops("history", "--state-dir", str(state))
    one = gitops("history", "--run", str(run_id), "--state-dir", str(state))
    status = gitops("status", "--state-dir", str(state))
    for proc in (history, one, status):
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert len(history.stdout.splitlines()) == 2, history.stdout
    assert "\\x1b[2Jwiped\\n#99" in history.stdout
    assert "by eve\\x1b]0;pwned\\x07" in history.stdout and "by eve\\nroot" in history.stdout
    assert "reason: \\x1b[2Jwiped\\n#99" in one.stdout
    assert "Quarantined: bbbbbbbbbb" in status.stdout and "\\x1b[2Jwiped" in status.stdout
    raw = json.loads(gitops("history", "--json", "--state-dir", str(state)).stdout)
    assert raw[-1]["reason"] == forged  # --json keeps the record as it is (JSON escapes it)


@pytest.mark.parametrize(("names", "most", "expected"), [
    ([], 5, ""),
    (["a"], 5, "a"),
    (["a", "b", "c"], 3, "a, b, c"),
    (["a", "b", "c", "d"], 3, "a, b, c and 1 more"),
    ([f"h{i:02}" for i in range(12)], 5, "h00, h01, h02, h03, h04 and 7 more"),
])
def test_some_names_a_few_and_counts_the_rest(names: list[str], most: int,
                                              expected: str) -> None:
    """The messages' lists of hosts or services: the first few, then how many more."""
    assert freetext.some(names, most) == expected
