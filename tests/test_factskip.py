"""Skipping what did not change (``gitops.pipeline.factskip``): the decision and the comparison as
tables, the record's file, and fact commands combined into one script run by a real ``sh``
and split back as each alone would have printed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitops.pipeline import factskip
from gitops.pipeline.factskip import NO_CHANGE, FactRead, HostRecord

KEY = b"k" * 32
PRINTS = {"base": "p1", "app": "p2"}
FILE = FactRead(fact="pyinfra.facts.files:File", kwargs={"path": "/etc/motd"}, digest="d1")
UNITS = FactRead(fact="pyinfra.facts.systemd:SystemdStatus", kwargs={}, digest="d2")
RECORD = HostRecord(prints=PRINTS, basis="b", facts=(FILE, UNITS))

DECIDE = [
    ("every input as recorded: gather and compare", RECORD, PRINTS, "b", {}, None),
    ("the setting off", RECORD, PRINTS, "b", {"enabled": False}, "fingerprint_skip is off"),
    ("an interrupted apply pending", RECORD, PRINTS, "b", {"pending": True},
     "an interrupted apply is pending on it"),
    ("never recorded", None, PRINTS, "b", {}, "no record of an apply that changed nothing"),
    ("recorded unfit, with why", RECORD.model_copy(update={"unfit": "its deploy runs a command"}),
     PRINTS, "b", {}, "its deploy runs a command"),
    ("the inventory or version changed", RECORD, PRINTS, "other", {},
     "the inventory or the gitops version changed"),
    ("a parameter of one service changed", RECORD, {**PRINTS, "app": "p3"}, "b", {},
     "changed since its last apply: app"),
    ("a service added", RECORD, {**PRINTS, "web": "p4"}, "b", {},
     "changed since its last apply: web"),
    ("a service taken off", RECORD, {"base": "p1"}, "b", {},
     "changed since its last apply: app"),
    ("a last apply that read no fact", RECORD.model_copy(update={"facts": ()}), PRINTS, "b", {},
     "its last apply read no fact"),
]


@pytest.mark.parametrize(("record", "prints", "basis", "flags", "expected"),
                         [c[1:] for c in DECIDE], ids=[c[0] for c in DECIDE])
def test_decide(record: HostRecord | None, prints: dict[str, str], basis: str,
                flags: dict[str, bool], expected: str | None) -> None:
    """Gather only when the setting, the journal, the record, the basis and every service's
    fingerprint allow it; otherwise the reason for the full apply."""
    assert factskip.decide(record, prints, basis, **flags) == expected


COMPARED = [
    ("every digest as recorded", ["d1", "d2"], "", NO_CHANGE),
    ("one fact changed", ["d1", "x"], "", "fact changed: SystemdStatus()"),
    ("two changed", ["x", "y"], "", "fact changed: File(path='/etc/motd') (and 1 more)"),
    ("not gathered", None, "sudo: a password is required",
     "the facts could not be gathered in one command: sudo: a password is required"),
    ("a part missing", ["d1"], "", "the facts could not be gathered in one command"),
]


@pytest.mark.parametrize(("digests", "why", "expected"), [c[1:] for c in COMPARED],
                         ids=[c[0] for c in COMPARED])
def test_compared(digests: list[str] | None, why: str, expected: str) -> None:
    """No change only when every recorded fact has its digest again; else the first changed."""
    assert factskip.compared(RECORD, digests, why) == expected


def test_digest_is_the_same_for_equal_values_in_any_order() -> None:
    """A set's or a dict's order does not change a value's digest; a different value does,
    and so does the key."""
    a = {"users": {"b", "a", "c"}, "n": (1, 2)}
    b = {"n": [1, 2], "users": {"c", "a", "b"}}
    assert factskip.digest(KEY, a) == factskip.digest(KEY, b)
    assert factskip.digest(KEY, a) != factskip.digest(KEY, {**a, "n": (2, 1)})
    assert factskip.digest(KEY, a) != factskip.digest(b"o" * 32, a)


def test_record_file_round_trip_and_forget(tmp_path: Path) -> None:
    """A saved record loads back equal, readable by its owner only; a damaged or forgotten
    one is none (a full apply)."""
    where = tmp_path / "facts" / "lab"
    factskip.save(where, "lab-1", RECORD)
    assert factskip.load(where, "lab-1") == RECORD
    assert (where / "lab-1.json").stat().st_mode & 0o077 == 0
    (where / "lab-2.json").write_text("{not json")
    assert factskip.load(where, "lab-2") is None
    factskip.forget(where, ["lab-1", "lab-3"])
    assert factskip.load(where, "lab-1") is None
    factskip.save(where, "lab-4", RECORD)
    factskip.save(where, "lab-5", RECORD)
    factskip.forget_others(where, {"lab-4"})
    assert factskip.load(where, "lab-4") == RECORD and factskip.load(where, "lab-5") is None


def _run(script: str) -> tuple[int, list[str]]:
    """A script's exit status and stdout lines, split as the apply worker's connector does."""
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    out = proc.stdout
    return proc.returncode, out.removesuffix("\n").split("\n") if out else []


TOKEN = "__gitops_facts_0123456789abcdef__"
COMMANDS = [
    ("printf 'a\\nb\\n'", True),  # two lines
    ("printf 'no newline'", True),
    ("true", True),  # no output
    ("printf 'x\\n\\n'", False),  # an empty last line
    ("echo out; exit 3", False),  # ends its own subshell only
    ("echo $((1 + 1))", True),
]


def test_combine_then_split_gives_each_command_its_own_output() -> None:
    """Each command's exit status and lines, as it alone prints them, from one ``sh`` run;
    a command that exits ends only its subshell."""
    alone = [_run(c) for c, _ in COMMANDS]
    code, lines = _run(factskip.combine(COMMANDS, TOKEN))
    parts = factskip.split(lines, TOKEN, len(COMMANDS))
    assert code == 0
    assert parts == alone
    assert parts[4] == (3, ["out"])


def test_split_refuses_output_with_parts_missing() -> None:
    """Output cut short (fewer markers than commands) is refused, never half compared."""
    _, lines = _run(factskip.combine(COMMANDS[:2], TOKEN))
    assert factskip.split(lines, TOKEN, 3) is None
    assert factskip.split(lines[:-1], TOKEN, 2) is None


def test_combine_refuses_a_marker_that_is_not_a_word() -> None:
    """The marker is printed by ``printf``: anything but letters, digits and ``_`` is refused."""
    with pytest.raises(ValueError, match="not a marker"):
        factskip.combine(COMMANDS, "x; rm -rf /")


@given(st.lists(st.text(alphabet="ab\n ", max_size=12), min_size=1, max_size=5))
def test_split_round_trips_any_output(outputs: list[str]) -> None:
    """Whatever each command prints (empty lines, no final newline), splitting the combined
    output gives each command the lines it would print alone."""
    stdout = "".join(f"{o}\n{TOKEN} 0\n" for o in outputs)
    lines = stdout.removesuffix("\n").split("\n")
    expected = [(0, o.removesuffix("\n").split("\n") if o else []) for o in outputs]
    assert factskip.split(lines, TOKEN, len(outputs)) == expected


def _covered_table(tmp_path: Path) -> tuple[Any, Path]:
    from builders import dry_repo

    from gitops.pipeline.load import load
    from gitops.workers.factcheck import Recorder

    repo = dry_repo(tmp_path)
    state = load(repo, "prod")
    skip = factskip.Skip(folder=str(tmp_path / "facts"), key=KEY.hex(), prints={}, basis="b")
    return Recorder(skip, state), repo


def test_local_reads_a_fingerprint_covers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """A deploy may read its host's services' folders, the repository's shared files and
    Python's own; not another service's folder, the inventories, hidden folders or anything
    else on the controller, whatever the worker's current folder (``/`` under systemd)."""
    monkeypatch.chdir("/")
    recorder, repo = _covered_table(tmp_path)
    root = str(repo.resolve())
    web = recorder.services["web-1"]
    assert "web" in web and "base" in web
    table = [
        (f"{root}/deploys/web/templates/site.conf.j2", True),
        (f"{root}/deploys/base/files/sshd-hardening.conf", True),
        (f"{root}/README.md", True),  # shared: in every service's fingerprint
        (f"{root}/inventories/prod.yml", False),
        (f"{root}/deploys/other/deploy.py", False),
        (f"{root}/.git/config", False),
        ("/etc/passwd", False),
        (str(tmp_path / "flag"), False),
        (subprocess.__file__, True),
    ]
    assert [(p, recorder._covered("web-1", p)) for p, _ in table] == table
