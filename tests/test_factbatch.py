"""The fingerprint check reads facts of one kind in one program run (``gitops.workers.factbatch``,
``gitops.workers.factcheck.read_again``) and hands each fact what pyinfra's own command gives.

Loopback: pyinfra's ``@local`` connector runs each command through a local ``sh`` (no SSH);
the values are compared with ``host.get_fact`` running pyinfra's own fact commands."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyinfra.api import Config, Inventory, State
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.connect import connect_all
from pyinfra.facts.files import (
    Directory,
    File,
    FindDirectories,
    FindFiles,
    FindLinks,
    Link,
    Md5File,
    Sha1File,
    Sha256File,
    Socket,
)
from pyinfra.facts.server import AuthorizedKeys
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from gitops.pipeline.factskip import FactRead
from gitops.workers import connector, factbatch, factcheck
from gitops.workers.factcheck import read_again

TOKEN = "__gitops_facts_0123456789abcdef__"
CLASSES = (File, Link, Directory, Socket, Sha1File, Sha256File, Md5File)


@pytest.fixture(params=["pyinfra", "connector"])
def host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The local host, its fact commands pyinfra's own or the apply worker's
    (``connector.install``: the ones a full apply records with), fact reading unmemoized."""
    monkeypatch.setattr(pyinfra_facts, "_get_fact", connector._get_fact)
    ours = request.param == "connector"
    monkeypatch.setattr(File, "command", connector._file_command if ours
                        else connector.PYINFRA_FILE_COMMAND)
    for cls, (theirs, mine) in connector._HASH_COMMANDS.items():
        monkeypatch.setattr(cls, "_raw_cmd", mine if ours and mine else theirs)
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    yield inventory.get_host("@local")


def _reads(entries: list[tuple[type, str, dict[str, Any]]]) -> list[FactRead]:
    return [FactRead(fact=f"{cls.__module__}:{cls.__qualname__}", kwargs={"path": path},
                     connector=conn, digest="") for cls, path, conn in entries]


def _theirs(host: Any, entries: list[tuple[type, str, dict[str, Any]]]) -> list[Any]:
    return [host.get_fact(cls, path=path, **conn) for cls, path, conn in entries]


def _odd_folder(root: Path, names: list[str]) -> list[str]:
    """Under ``root``, for each name: a file, a folder, a link to each, a dangling link, a
    fifo, a socket and a missing path (atimes ahead of mtimes: reading a file does not move
    them, ``relatime``). The paths, absolute."""
    paths = []
    for number, name in enumerate(names):
        folder = root / str(number)
        folder.mkdir()
        (folder / name).write_bytes(name.encode("utf-8", "surrogateescape") * 3)
        (folder / f"{name}.d").mkdir()
        (folder / f"{name}.lnk").symlink_to(folder / name)
        (folder / f"{name}.dlnk").symlink_to(folder / f"{name}.d")
        (folder / f"{name}.gone").symlink_to(folder / "nothing here")
        os.mkfifo(folder / f"{name}.fifo")
        with closing(socket.socket(socket.AF_UNIX)) as sock:
            sock.bind(str(folder / f"{name}.sock"))
        paths += [str(folder / suffix) for suffix in (
            name, f"{name}.d", f"{name}.lnk", f"{name}.dlnk", f"{name}.gone", f"{name}.fifo",
            f"{name}.sock", f"{name}.missing")]
    ahead = time.time() + 3600
    for path in paths:
        if os.path.lexists(path):
            os.utime(path, (ahead, os.lstat(path).st_mtime), follow_symlinks=False)
    return paths


def _readable(cls: type, paths: list[str]) -> list[str]:
    """``paths`` without the fifos for a hash fact (its program would wait for a writer,
    pyinfra's own command as well)."""
    hashed = cls in (Sha1File, Sha256File, Md5File)
    return [p for p in paths if not (hashed and p.endswith(".fifo"))]


ODD = ["plain", "with space", "new\nline", "quo'te\"s", "-dash", "back\\slash", "$HOME*",
       "tab\there", "é ünï", "carriage\rreturn", "~tilde"]


def test_each_fact_gets_what_pyinfras_own_command_gives(host: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Files, folders, links (to each, dangling), fifos, sockets and missing paths with
    names holding spaces, newlines, quotes, backslashes, a leading dash (relative to the
    current folder), ``~/`` paths: every ``File``-family and hash fact read in a batch has
    the value pyinfra's own command gives it."""
    paths = _odd_folder(tmp_path, ODD)
    monkeypatch.chdir(tmp_path / "0")
    monkeypatch.setenv("HOME", str(tmp_path / "4"))
    paths += ["-dash", "plain", "./-dash", "~/-dash", "~/-dash.lnk", "~/missing", "~/", ""]
    found = {}
    for cls in CLASSES:  # a class at a time: ``@local`` passes the command as one argument
        entries = [(cls, path, {}) for path in _readable(cls, paths)]
        values, why = read_again(host, _reads(entries))
        assert why == ""
        assert values == _theirs(host, entries)
        found.update(zip(((c, p) for c, p, _ in entries), values or [], strict=True))
    assert found[File, str(tmp_path / "2" / "new\nline")]["size"] == 3 * len("new\nline")
    assert found[Link, str(tmp_path / "0" / "plain.gone")]["link_target"].endswith(
        "nothing here")
    assert found[Sha1File, str(tmp_path / "1" / "with space")] is not None
    assert found[Directory, str(tmp_path / "1" / "with space")] is False
    assert found[File, str(tmp_path / "1" / "with space.missing")] is None


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
                min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=1, max_size=3, unique=True))
@example([" -> "])
@example(["-", "\\\n\r"])
def test_any_names_give_pyinfras_values(host: Any, names: list[str]) -> None:
    """Whatever the names hold, each batched fact has pyinfra's own value; where pyinfra's
    own ``process`` raises (a link whose name holds `` -> ``), the reading raises too (the
    check then says the facts could not be gathered: a full apply)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = _odd_folder(Path(folder), names)
        entries = [(cls, path, {}) for cls in (File, Link, Directory, Sha1File)
                   for path in _readable(cls, paths)]
        theirs: list[Any] = []
        for cls, path, _conn in entries:
            try:
                theirs.append(host.get_fact(cls, path=path))
            except Exception as exc:  # pyinfra's outcome, compared below
                theirs.append(type(exc))
        raised = [t for t in theirs if isinstance(t, type)]
        if raised:
            with pytest.raises(raised[0]):
                read_again(host, _reads(entries))
            return
        values, why = read_again(host, _reads(entries))
        assert why == ""
        assert values == theirs


def test_connector_arguments_are_read_apart(host: Any, tmp_path: Path) -> None:
    """The same path read as root and with ``_su_user`` (who cannot see into the folder)
    gets each reading's own value, as pyinfra's own command with those arguments."""
    paths = _odd_folder(tmp_path, ["a", "b"])
    tmp_path.chmod(0o700)
    entries = [(cls, path, conn) for conn in ({}, {"_su_user": "nobody", "_su_shell": "/bin/sh"})
               for cls in (File, Sha1File) for path in paths[:3] + paths[8:11]]
    values, why = read_again(host, _reads(entries))
    assert why == ""
    assert values == _theirs(host, entries)
    assert values is not None and values[0] is not None and values[12] is None


def test_a_change_is_seen(host: Any, tmp_path: Path) -> None:
    """A file edited, a folder's mode changed, a link aimed elsewhere after the first
    reading: the second reading differs for exactly the facts that see it."""
    paths = _odd_folder(tmp_path, ["a", "b"])
    entries = [(cls, path, {}) for cls in (File, Link, Directory, Sha1File)
               for path in _readable(cls, paths)]
    before, _ = read_again(host, _reads(entries))
    Path(paths[0]).write_text("edited")  # 0/a
    os.chmod(paths[9], 0o700)  # 1/b.d
    os.unlink(paths[10])  # 1/b.lnk
    os.symlink(paths[0], paths[10])
    after, _ = read_again(host, _reads(entries))
    assert before is not None and after is not None
    changed = {(cls.__name__, Path(path).relative_to(tmp_path).as_posix())
               for (cls, path, _), old, new in zip(entries, before, after, strict=True)
               if old != new}
    assert changed == {("File", "0/a"), ("Sha1File", "0/a"), ("Sha1File", "0/a.lnk"),
                       ("Directory", "1/b.d"), ("Link", "1/b.lnk"), ("Sha1File", "1/b.lnk")}


def _programs(bin_dir: Path, log: Path) -> None:
    """``stat`` and ``sha1sum`` shims that log each run, then run the real program."""
    bin_dir.mkdir()
    for program in ("stat", "sha1sum"):
        real = next(p for p in (f"/usr/bin/{program}", f"/bin/{program}") if os.path.exists(p))
        shim = bin_dir / program
        shim.write_text(f'#!/bin/sh\necho {program} >> {log}\nexec {real} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)


def test_one_program_run_per_kind(host: Any, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """24 ``File``-family facts start one ``stat`` and 12 hash facts one ``sha1sum``
    (pyinfra's own commands: one per existing path and fact), with the same values."""
    (tmp_path / "f").mkdir()
    paths = [str(tmp_path / "f" / f"file {n}") for n in range(12)]
    for path in paths[:8]:
        Path(path).write_text(path)
        os.utime(path, (time.time() + 3600, os.stat(path).st_mtime))  # read: atime stays
    log = tmp_path / "log"
    _programs(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    entries = [(cls, path, {}) for cls in (File, Directory, Sha1File) for path in paths]
    values, _ = read_again(host, _reads(entries))
    batched = sorted(log.read_text().split())
    log.unlink()
    assert values == _theirs(host, entries)
    assert batched == ["sha1sum", "stat"]
    theirs = log.read_text().split()
    assert (theirs.count("stat"), theirs.count("sha1sum")) == (16, 8)


@pytest.mark.parametrize(("kind", "code", "lines", "expected"), [
    # stat: a record per existing path, each ended by the marker
    ("stat", 0, ["101", "rec one", TOKEN, "rec", "two", TOKEN],
     [(0, ["rec one"]), (0, []), (0, ["rec", "two"])]),
    ("stat", 0, ["000"], [(0, []), (0, []), (0, [])]),
    ("stat", 1, ["101", "rec one", TOKEN], [None, (0, []), None]),  # stat failed
    ("stat", 0, ["101", "rec one", TOKEN], [None, (0, []), None]),  # a record missing
    ("stat", 0, ["101", "rec one", TOKEN, "two", TOKEN, "three", TOKEN],
     [None, (0, []), None]),  # one too many
    ("stat", 0, ["101", "rec one", TOKEN, "trailing"], [None, (0, []), None]),
    ("stat", 0, ["101", TOKEN, "two", TOKEN], [None, (0, []), None]),  # an empty record
    ("stat", 0, ["10", "rec", TOKEN], [None, None, None]),  # flags of another count
    ("stat", 0, [], [None, None, None]),
    ("stat", 0, ["1x1", "a", TOKEN, "b", TOKEN], [None, None, None]),
    # a hash program: the line of each regular file, naming it
    ("sha1sum", 0, ["120", f"{'a' * 40}  /p/one"], [(0, [f"{'a' * 40}  /p/one"]), None,
                                                    (0, [])]),
    ("sha1sum", 0, ["110", f"{'a' * 40}  /p/two", f"{'b' * 40}  /p/one"],
     [None, None, (0, [])]),  # lines naming other paths
    ("sha1sum", 0, ["100", f"{'a' * 39}  /p/one"], [None, (0, []), (0, [])]),
    ("sha1sum", 0, ["100", f"{'A' * 40}  /p/one"], [None, (0, []), (0, [])]),
    ("sha1sum", 0, ["100", f"\\{'a' * 40}  /p/one"], [None, (0, []), (0, [])]),
    ("sha1sum", 1, ["110", f"{'a' * 40}  /p/one"], [None, None, (0, [])]),
])
def test_parse(kind: str, code: int, lines: list[str], expected: list[Any]) -> None:
    """What a batch cannot answer exactly is unsure (None: read one by one), never
    guessed; a path found missing by the shell's own test is answered."""
    batch = factbatch.Batch(kind=kind, quoted=("x", "y", "z"),
                            paths=("/p/one", "/p/two", "/p/three"), digits=40)
    assert batch.parse(code, lines, TOKEN) == expected


@pytest.mark.parametrize(("kind", "path", "expected"), [
    ("stat", "/etc/x", True), ("stat", "new\nline", True), ("stat", "-x", False),
    ("sha1sum", "/etc/x", True), ("sha1sum", "a\\b", False), ("sha1sum", "a\nb", False),
    ("sha1sum", "a\rb", False), ("sha1sum", "-x", False),
])
def test_batchable(kind: str, path: str, expected: bool) -> None:
    """A path a program would take as an option, or whose hash line it escapes, is read
    by its fact's own command."""
    assert factbatch.batchable(kind, path) is expected


def _lab_host(lab: Any, user: str) -> Any:
    """The lab's first host through pyinfra's own ssh connector, logged in as ``user``."""
    data = {"ssh_user": user, "ssh_key": str(lab.key_file), "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no"}
    inventory = Inventory(([(lab.hosts[0].address, data)], {}))
    state = State(inventory, Config())
    connect_all(state)
    return inventory.get_host(lab.hosts[0].address)


@pytest.mark.lab
def test_on_a_lab_host_with_sudo_each_fact_gets_pyinfras_value(
        lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over SSH, logged in as a user with sudo: systemd units (running, stopped, an alias,
    unknown) and files only root can see (atimes ahead: reading them does not move them),
    read with and without ``_sudo`` in one batch per kind and set of arguments, have
    pyinfra's own values; the batched ``systemctl show`` hands each fact the lines its own
    prints."""
    from gitops.lab.sudo import USER

    monkeypatch.setattr(pyinfra_facts, "_get_fact", connector._get_fact)
    monkeypatch.setattr(File, "command", connector.PYINFRA_FILE_COMMAND)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), lab.hosts[0].name,
                    "mkdir -p /root/batch/d && echo one > '/root/batch/a b' && "
                    "ln -sfn '/root/batch/a b' /root/batch/l && chmod 700 /root && "
                    "touch -h -a -d tomorrow /root/batch/*"], check=True, timeout=60)
    host = _lab_host(lab, USER)
    units = ["ssh.service", "sshd.service", "getty@tty1.service", "gitops-none.service",
             "systemd-journald.service"]
    files = ["/root/batch/a b", "/root/batch/d", "/root/batch/l", "/root/batch/none"]
    entries: list[tuple[type, dict[str, Any], dict[str, Any]]] = [
        (cls, {"user_mode": False, "machine": None, "user_name": None, "services": [unit]},
         conn) for conn in ({}, {"_sudo": True}) for cls in (SystemdStatus, SystemdEnabled)
        for unit in units]
    entries += [(cls, {"path": path}, conn) for conn in ({}, {"_sudo": True})
                for cls in (File, Directory, Link, Sha1File) for path in files]
    reads = [FactRead(fact=f"{cls.__module__}:{cls.__qualname__}", kwargs=kwargs,
                      connector=conn, digest="") for cls, kwargs, conn in entries]
    values, why = read_again(host, reads)
    assert why == ""
    assert values == [host.get_fact(cls, **kwargs, **conn) for cls, kwargs, conn in entries]
    found = dict(zip(((c.__name__, str(k), str(n)) for c, k, n in entries), values or [],
                     strict=True))
    assert found["SystemdStatus", str(entries[0][1]), "{}"] == {"ssh.service": True}
    assert found["SystemdStatus", str(entries[1][1]), "{}"] == {"ssh.service": True}
    assert found["SystemdStatus", str(entries[2][1]), "{}"] == {"getty@tty1.service": False}
    assert found["File", "{'path': '/root/batch/a b'}", "{}"] is None
    assert found["File", "{'path': '/root/batch/a b'}", "{'_sudo': True}"]["size"] == 4


@pytest.mark.parametrize(("lines", "expected"), [
    (["Id=a.service", "SubState=running", "UnitFileState=enabled", "",
      "Id=b.service", "SubState=dead", "UnitFileState="],
     [(0, ["Id=a.service", "SubState=running"]), (0, ["Id=a.service", "UnitFileState=enabled"]),
      (0, ["Id=b.service", "UnitFileState="])]),
    (["Id=a.service", "SubState=running", "UnitFileState=enabled"], [None] * 3),  # one block
    (["Id=a.service", "SubState=running", "", "Id=b.service", "SubState=dead"], [None] * 3),
    (["Id=a.service", "UnitFileState=enabled", "SubState=running", "",
      "Id=b.service", "SubState=dead", "UnitFileState="], [None] * 3),  # another order
    (["Id=a.service", "SubState", "UnitFileState=enabled", "",
      "Id=b.service", "SubState=dead", "UnitFileState="], [None] * 3),
])
def test_unit_parse(lines: list[str], expected: list[Any]) -> None:
    """A ``systemctl show`` of every unit is split back only when each block has the shape
    one unit's has; else each fact is read by its own command."""
    batch = factbatch.UnitBatch(units=("a.service", "a.service", "b.service"),
                                keys=("SubState", "UnitFileState", "UnitFileState"))
    assert batch.parse(0, lines, TOKEN) == expected
    assert batch.parse(1, lines, TOKEN) == [None] * 3
    assert batch.script(TOKEN) == ("systemctl show --all --property Id --property SubState "
                                   "--property UnitFileState a.service b.service")


@pytest.mark.parametrize(("services", "expected"), [
    (["ssh.service"], "ssh.service"), ("ssh.service", "ssh.service"),
    (["getty@tty1.service"], "getty@tty1.service"), (["a.service", "b.service"], None),
    (None, None), (["ssh*"], None), (["ssh"], None), (["-x.service"], None),
    (["a b.service"], None), (["a\\x20b.service"], None),
])
def test_unit_batchable(services: Any, expected: str | None) -> None:
    """Only one unit named in full, nothing to quote, is read in a batch."""
    assert factbatch.unit_batchable(services) == expected


def test_simple_commands_run_grouped_give_pyinfras_values(host: Any, tmp_path: Path) -> None:
    """``find`` and ``cat`` facts, run in the script's own shell (no subshell), have
    pyinfra's own values, whatever the names under the folder hold."""
    paths = _odd_folder(tmp_path, ODD)
    Path(paths[0]).write_text("ssh-ed25519 AAAA one\n\nssh-rsa BBBB two\n")
    reads: list[tuple[type, dict[str, Any]]] = [
        (cls, {"path": path}) for cls in (FindFiles, FindLinks, FindDirectories)
        for path in (str(tmp_path), paths[0], paths[1], paths[7], "~/")]
    reads += [(AuthorizedKeys, {"user": "root", "path": path}) for path in paths[:2]]
    reads += [(AuthorizedKeys, {"user": "nobody"})]
    values, why = read_again(host, [FactRead(fact=f"{c.__module__}:{c.__qualname__}",
                                             kwargs=k, digest="") for c, k in reads])
    assert why == ""
    assert values == [host.get_fact(cls, **kwargs) for cls, kwargs in reads]
    assert values is not None and values[15] == ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"]


@pytest.mark.parametrize(("command", "grouped"), [
    ("find '/a b' -type f || true", True),
    ("find '/x'\"'\"'y' -type l || true", True),
    ("find /a -type d -maxdepth 1 || true", True),
    ("cat ~ops/.ssh/authorized_keys 2>/dev/null || true", True),
    ("cat /x; exit 2>/dev/null || true", False),
    ("cat $(x) 2>/dev/null || true", False),
    ("find 'a'b' -type f || true", False),
    ("find /a -type f -delete || true", False),
    ("cd /tmp 2>/dev/null || true", False),
])
def test_which_simple_commands_run_grouped(command: str, grouped: bool) -> None:
    """Only one program with quoted words, which neither ends nor changes the shell."""
    assert (factcheck._SIMPLE.fullmatch(command) is not None) is grouped
