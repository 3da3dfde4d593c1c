"""Guarded applies (gitops.pipeline.guard): which services are guarded, what an operation's revert
saves, the controller's reading of a host's answer, and a host that never answers again.
The host side (arming, reverting, confirming) runs on lab hosts in test_guard_e2e.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from builders import free_port, load_problems
from mutations import make_sample

from gitops.model import DeclaredHost, ResolvedSSH
from gitops.pipeline import guard
from gitops.pipeline.load import load


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """The project's sample (inventories/lab.yml, deploys/) in a folder."""
    return make_sample(tmp_path / "repo", links=False)


def test_the_sample_guards_base_and_saves_its_validated_installs(sample: Path) -> None:
    """The sample's base is guarded (its service.yml), with the files its shell installs
    write; the other services are not; the host waits 60 s by default."""
    state = load(sample, "lab")
    assert state.guarded == ("base",)
    assert "/etc/ssh/sshd_config.d/50-gitops-hardening.conf" in state.guard_files["base"]
    assert state.settings.guard.confirm_timeout == 60


def test_an_environment_may_guard_every_service(sample: Path) -> None:
    """``settings.guard.all`` guards every service of the environment, in apply order."""
    inv = sample / "inventories/lab.yml"
    data = yaml.safe_load(inv.read_text())
    data["settings"]["guard"] = {"all": True, "confirm_timeout": 15}
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    state = load(sample, "lab")
    assert state.guarded == state.service_order
    assert state.settings.guard.confirm_timeout == 15


@pytest.mark.parametrize(("text", "expected"), [
    ("guard: maybe\n", "deploys/base/service.yml:1 guard: Input should be a valid boolean"),
    ("guard: true\nguard_files: [etc/motd]\n",
     "deploys/base/service.yml:2 guard_files.0: should be an absolute path on the host"),
    ("guard: true\nguard_files: [/etc/../shadow]\n",
     "deploys/base/service.yml:2 guard_files.0: should be an absolute path on the host"),
    ("gaurd: true\n", "deploys/base/service.yml:1 gaurd: Extra inputs are not permitted"),
])
def test_a_bad_guard_declaration_is_refused_at_its_line(sample: Path, text: str,
                                                        expected: str) -> None:
    """A guard that is not a boolean, a saved path that is not absolute (or climbs with
    ..), and a mistyped key are problems at their service.yml line."""
    (sample / "deploys/base/service.yml").write_text(text)
    problems = load_problems(sample)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_confirm_timeout_out_of_range_is_refused(sample: Path) -> None:
    """A host cannot be asked to wait less than 5 s (a revert while the controller is still
    reconnecting)."""
    inv = sample / "inventories/lab.yml"
    data = yaml.safe_load(inv.read_text())
    data["settings"]["guard"] = {"confirm_timeout": 1}
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    assert any("settings.guard.confirm_timeout" in p for p in load_problems(sample))


@pytest.mark.parametrize(("module", "function", "arguments", "files", "units"), [
    ("files", "put", {"src": "x", "dest": "/etc/motd"}, ("/etc/motd",), ()),
    ("files", "template", {"src": "t.j2", "dest": "/etc/app.conf"}, ("/etc/app.conf",), ()),
    ("files", "line", {"path": "/etc/hosts", "line": "x"}, ("/etc/hosts",), ()),
    ("files", "file", {"path": "/etc/old", "present": False}, ("/etc/old",), ()),
    ("files", "link", {"path": "/etc/localtime"}, ("/etc/localtime",), ()),
    ("files", "put", {"src": "x", "dest": "relative"}, (), ()),
    ("systemd", "service", {"service": "ssh", "restarted": True}, (), ("ssh",)),
    ("server", "service", {"service": "nginx", "reloaded": True}, (), ("nginx",)),
    ("apt", "packages", {"packages": ["curl"]}, (), ()),
    ("server", "shell", {"commands": ["mv a /etc/b"]}, (), ()),
])
def test_what_an_operation_changes_is_read_from_its_arguments(
        module: str, function: str, arguments: dict[str, object],
        files: tuple[str, ...], units: tuple[str, ...]) -> None:
    """File operations save the file they write or remove; unit operations name the unit
    the revert restarts; packages and shell commands name nothing."""
    assert guard.targets(module, function, arguments) == (files, units)


def test_a_confirmed_answer_is_read() -> None:
    """The disarm's answer: confirmed."""
    answer = guard.parse_answer("motd noise\ngitops-guard: confirmed\n")
    assert answer is not None and answer.state == "confirmed"


def test_a_revert_is_read_with_what_it_restored_and_what_is_back() -> None:
    """A host that reverted says what it restored and, checked again, what is back."""
    text = ("gitops-guard: reverted\nat 2026-12-02T00:00:00Z\n"
            "restored /etc/ssh/sshd_config.d/x.conf (root:root 644)\nremoved /etc/new\n"
            "restarted ssh\ngitops-guard: check\nback /etc/ssh/sshd_config.d/x.conf\n"
            "differs /etc/new\n")
    answer = guard.parse_answer(text)
    assert answer is not None and answer.state == "reverted"
    assert answer.restored == ("restored /etc/ssh/sshd_config.d/x.conf (root:root 644)",
                               "removed /etc/new", "restarted ssh")
    assert answer.back == ("/etc/ssh/sshd_config.d/x.conf",) and answer.differs == ("/etc/new",)
    done = guard.Confirmation("RevertedByHost", answer)
    assert "NOT back as saved: /etc/new" in done.describe("")


def test_an_earlier_armed_revert_run_first_is_read() -> None:
    """Before a guarded apply, a revert left armed by an earlier run is run and reported."""
    answer = guard.parse_answer("gitops-guard: earlier 0123abcd\ngitops-guard: reverted\n"
                                "at 2026-12-02T00:00:00Z\nrestored /etc/motd (root:root 644)\n")
    assert answer is not None and answer.state == "reverted"
    assert answer.earlier == "0123abcd"
    assert answer.restored == ("restored /etc/motd (root:root 644)",)
    assert guard.parse_answer("") is None


def test_the_save_command_quotes_every_path() -> None:
    """A path with a space or a quote reaches the host's steps file as one word."""
    command = guard.save_command([(1, "/etc/a b"), (2, "/etc/it's")])
    assert "'/etc/a b'" in command and "cp -a '/etc/a b' /var/lib/gitops-guard/saved/1" in command
    assert "/etc/it'\"'\"'s" in command


def test_a_host_that_never_answers_is_unreachable_with_its_last_contact() -> None:
    """The controller keeps trying until the timeout plus the margin, then records the host
    as Unreachable with the time of the last contact."""
    host = DeclaredHost(
        name="gone", address="127.0.0.1", groups=("all",), vars={}, services={},
        ssh=ResolvedSSH(user="root", port=free_port(), key_file=None,
                        known_hosts_file="/dev/null", host_key_checking="no",
                        connect_timeout=2))
    done = guard.confirm(host, "token", timeout=1, margin=1)
    assert done.result == "Unreachable" and done.attempts >= 2
    assert done.after_s >= 2
    line = done.describe("2026-12-02T00:00:00+00:00")
    assert line.startswith("Unreachable") and "last contact 2026-12-02T00:00:00+00:00" in line
    assert "refused" in line.lower()


def test_a_confirm_whose_answer_was_lost_is_confirmed_on_the_retry(tmp_path: Path) -> None:
    """The host disarmed on the first attempt but the client timed out before reading the
    answer (a loaded controller): the retry is answered Confirmed, not Lost."""
    folder = tmp_path / "gitops-guard"
    folder.mkdir()
    (folder / "armed").write_text("tok123\n")
    calls: list[str] = []

    def on_the_host(argv: list[str], timeout: float) -> tuple[int, str, str]:
        script = argv[-1].replace(guard.FOLDER, str(folder))
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              timeout=30, check=False)
        calls.append(done.stdout)
        if len(calls) == 1:
            raise subprocess.TimeoutExpired(argv, timeout)  # the answer never arrived
        return done.returncode, done.stdout, done.stderr

    host = DeclaredHost(
        name="slow", address="127.0.0.1", groups=("all",), vars={}, services={},
        ssh=ResolvedSSH(user="root", port=22, key_file=None, known_hosts_file="/dev/null",
                        host_key_checking="no", connect_timeout=2))
    done = guard.confirm(host, "tok123", timeout=5, margin=5, run=on_the_host,
                         sleep=lambda _: None)
    assert "confirmed" in calls[0] and not folder.exists()  # disarmed by the first attempt
    assert done.result == "Confirmed", done
    assert done.attempts == 2
