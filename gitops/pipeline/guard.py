"""Guarded applies: a change that cuts the controller off is undone by the host itself.

A guarded service (``guard: true`` in its ``service.yml``, or ``settings.guard.all``) is
applied under a guard on each host where it changes something. Before its first change there
the apply worker (``workers/apply_guards.py``) arms a revert that lives on the host and needs
nothing from the controller: a folder ``/var/lib/gitops-guard`` with a copy of each file the
apply is about to write or remove (``cp -a``: content, owner, mode), the units it restarts or
reloads, a deadline, and a transient systemd timer (``systemd-run --on-active``) that runs
``revert.sh`` once the deadline has passed: it restores the saved files, reloads systemd and
restarts those units. The controller (``gitops.pipeline.apply``) then reaches the host again over a
NEW SSH connection (``confirm``) within ``settings.guard.confirm_timeout``; that disarms the
revert and removes the copies. If it cannot, the host reverts by itself, and when the
controller reaches it again it reads what was restored (``RevertedByHost``); a host that never
answers is ``Unreachable``.

This module holds the pure parts (which operations change which files and units, the shell
text run on the hosts, reading its answers) and ``confirm``, which runs OpenSSH's client (a
subprocess, argument lists); it never imports pyinfra. Every command here runs as root on
the host, through ``gitops.pipeline.remote.as_root`` (sudo for a host declared with
``_sudo: true`` and another user): the folder is root's. Called by the apply worker and by
``gitops.pipeline.apply``.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import remote
from gitops.pipeline.worker import Progress
from gitops.records import ApplyReport, HostApply

__all__ = [
    "FOLDER",
    "UNIT",
    "Confirmation",
    "arm_command",
    "confirm",
    "confirm_command",
    "confirm_guards",
    "extend_command",
    "parse_answer",
    "preflight_command",
    "save_command",
    "ssh_argv",
    "targets",
    "unit_command",
]

FOLDER = "/var/lib/gitops-guard"
"""Where a host keeps an armed revert: the saved files, the steps, the deadline."""
UNIT = "gitops-guard"
"""The transient timer and service that run the revert (``gitops-guard.timer``)."""

_MARK = "gitops-guard:"
"""The prefix of every line the guard's commands print for the controller."""

# -- what an operation changes ----------------------------------------------------------

_FILE_ARGS: Mapping[tuple[str, str], str] = {
    ("files", "put"): "dest",
    ("files", "template"): "dest",
    ("files", "download"): "dest",
    ("files", "file"): "path",
    ("files", "line"): "path",
    ("files", "replace"): "path",
    ("files", "block"): "path",
    ("files", "link"): "path",
}
"""pyinfra file operations (module, function) -> the argument naming the file they write or
remove."""

_UNIT_OPS = {("systemd", "service"), ("server", "service"), ("systemd", "daemon_reload")}


def targets(module: str, function: str, arguments: Mapping[str, Any]
            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The files (absolute paths) and units an operation changes when it runs: pyinfra's
    ``files.put(dest=...)``, ``files.line(path=...)``, ``systemd.service(service=...)``...
    ``module`` is the operation's module's last part (``files``)."""
    arg = _FILE_ARGS.get((module, function))
    files: tuple[str, ...] = ()
    if arg is not None:
        path = arguments.get(arg)
        if isinstance(path, str) and path.startswith("/"):
            files = (path,)
    units: tuple[str, ...] = ()
    if (module, function) in _UNIT_OPS:
        unit = arguments.get("service")
        if isinstance(unit, str) and unit:
            units = (unit,)
    return files, units


# -- the shell text run on a host -------------------------------------------------------

_DEADLINE = "$(( $(date +%s) + {seconds} ))"

_REVERT = r"""#!/bin/sh
# gitops guard: the revert of a guarded apply, run by the transient timer gitops-guard.timer
# (or by the next guarded apply, with "now"). Restores the saved files, reloads systemd,
# restarts the units, and leaves what it did in result for the controller.
D={folder}
exec 9>>"$D/lock"
flock 9
if [ ! -e "$D/armed" ]; then systemctl stop {unit}.timer >/dev/null 2>&1; exit 0; fi
if [ "$1" != now ] && [ "$(date +%s)" -lt "$(cat "$D/deadline")" ]; then exit 0; fi
restore() {{
  if cp -a "$D/saved/$1" "$2.gitops-guard" && mv -f "$2.gitops-guard" "$2"; then
    echo "restored $2 ($(stat -c '%U:%G %a' "$2"))"
  else echo "failed to restore $2"; fi
}}
remove() {{
  if [ -e "$2" ] || [ -L "$2" ]; then rm -f "$2" && echo "removed $2"; fi
}}
unit() {{
  if systemctl restart "$1"; then echo "restarted $1"; else echo "failed to restart $1"; fi
}}
{{
  echo "at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  . "$D/files.sh"
  systemctl daemon-reload
  . "$D/units.sh"
}} >"$D/result.new" 2>&1
mv -f "$D/result.new" "$D/result"
rm -f "$D/armed"
systemctl stop {unit}.timer >/dev/null 2>&1
exit 0
"""

_CHECK = r"""restore() {
  if cmp -s "$D/saved/$1" "$2"; then echo "back $2"; else echo "differs $2"; fi; }
remove() { if [ -e "$2" ] || [ -L "$2" ]; then echo "differs $2"; else echo "back $2"; fi; }
unit() { :; }
"""
"""The same steps read by the controller after a revert: is each saved file back?"""


def revert_script() -> str:
    """The script the timer runs on the host (``FOLDER/revert.sh``)."""
    return _REVERT.format(folder=FOLDER, unit=UNIT)


def preflight_command() -> str:
    """Before a guarded apply on a host: a revert armed by an earlier run (its controller
    died, or lost the host) is run now, never stacked; what it or an earlier revert that
    fired restored is printed, and the folder removed. Prints nothing when there is none."""
    d = FOLDER
    return (f"[ -d {d} ] || exit 0; "
            f"if [ -e {d}/armed ]; then echo '{_MARK} earlier' \"$(cat {d}/armed)\"; "
            f"sh {d}/revert.sh now; fi; "
            f"if [ -e {d}/result ]; then echo '{_MARK} reverted'; cat {d}/result; fi; "
            f"rm -rf {d}")


def arm_command(token: str, seconds: int) -> str:
    """Arm the revert on a host: the folder, the script, the deadline, the timer."""
    d, u = FOLDER, UNIT
    script = revert_script()
    return (f"set -e; umask 077; rm -rf {d} {d}.confirmed; mkdir -p {d}/saved; "
            f"printf '%s' {shlex.quote(script)} > {d}/revert.sh; "
            f": > {d}/files.sh; : > {d}/units.sh; "
            f"echo {_DEADLINE.format(seconds=seconds)} > {d}/deadline; "
            f"echo {shlex.quote(token)} > {d}/armed; "
            f"systemctl stop {u}.timer >/dev/null 2>&1 || true; "
            f"systemctl reset-failed {u}.timer {u}.service >/dev/null 2>&1 || true; "
            f"systemd-run --quiet --unit={u} --on-active={seconds}s --on-unit-active=1s "
            f"--timer-property=AccuracySec=100ms /bin/sh {d}/revert.sh")


def save_command(paths: Iterable[tuple[int, str]]) -> str:
    """Save each (number, path) before it changes: a copy with owner and mode, or "absent"."""
    d = FOLDER
    parts = ["set -e"]
    for n, path in paths:
        p = shlex.quote(path)
        restore = shlex.quote(f"restore {n} ") + shlex.quote(shlex.quote(path))
        remove = shlex.quote(f"remove {n} ") + shlex.quote(shlex.quote(path))
        parts.append(f"if [ -e {p} ] || [ -L {p} ]; then cp -a {p} {d}/saved/{n}; "
                     f"echo {restore} >> {d}/files.sh; "
                     f"else echo {remove} >> {d}/files.sh; fi")
    return "; ".join(parts)


def unit_command(units: Iterable[str]) -> str:
    """Remember units the apply restarts or reloads: the revert restarts them."""
    return "; ".join(["set -e"] + [
        f"echo {shlex.quote('unit ' + shlex.quote(u))} >> {FOLDER}/units.sh" for u in units])


def extend_command(seconds: int) -> str:
    """Move the deadline to ``seconds`` from now (the apply is still going on)."""
    return f"echo {_DEADLINE.format(seconds=seconds)} > {FOLDER}/deadline"


def confirm_command(token: str) -> str:
    """Run by the controller over a new connection: disarm this apply's revert and remove
    the copies; or, if the host reverted, say what was restored and whether it is back.
    The disarm leaves the token in ``FOLDER.confirmed``, so an attempt whose answer was lost
    on the way (the client timed out after the host had disarmed) is answered again."""
    d, u = FOLDER, UNIT
    check = _CHECK.replace("$D", d)
    tok = shlex.quote(token)
    return (f"D={d}; if [ -e $D.confirmed ] && [ \"$(cat $D.confirmed)\" = {tok} ]; then "
            f"echo '{_MARK} confirmed'; exit 0; fi; "
            f"[ -d $D ] || {{ echo '{_MARK} none'; exit 0; }}; "
            f"exec 9>>$D/lock; flock 9; "
            f"if [ -e $D/armed ] && [ \"$(cat $D/armed)\" = {tok} ]; then "
            f"systemctl stop {u}.timer >/dev/null 2>&1 || true; "
            f"echo {tok} > $D.confirmed; rm -rf $D; "
            f"echo '{_MARK} confirmed'; exit 0; fi; "
            f"if [ -e $D/result ]; then echo '{_MARK} reverted'; cat $D/result; "
            f"echo '{_MARK} check'; {check} . $D/files.sh; rm -rf $D; exit 0; fi; "
            f"echo '{_MARK} none'")


# -- the answers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a guard's command printed."""

    state: Literal["confirmed", "reverted", "none", "earlier"]
    restored: tuple[str, ...] = ()
    """The revert's own lines: ``restored /etc/x (root:root 644)``, ``restarted ssh``."""
    back: tuple[str, ...] = ()
    """Files seen back as saved, checked after the revert."""
    differs: tuple[str, ...] = ()
    """Files not as saved after the revert."""
    earlier: str = ""
    """The token of an earlier run's armed revert, run now (preflight)."""


def parse_answer(text: str) -> Answer | None:
    """The guard's answer in a command's output, or None when it printed none."""
    state: str | None = None
    section = ""
    restored: list[str] = []
    back: list[str] = []
    differs: list[str] = []
    earlier = ""
    for line in text.splitlines():
        if line.startswith(_MARK):
            word, _, rest = line[len(_MARK):].strip().partition(" ")
            section = word
            if word == "earlier":
                earlier = rest.strip()
                state = state or "earlier"
            elif word in ("confirmed", "reverted", "none"):
                state = "reverted" if word == "reverted" or state == "earlier" else word
            continue
        line = line.strip()
        if not line:
            continue
        if section == "check":
            kind, _, path = line.partition(" ")
            (back if kind == "back" else differs).append(path)
        elif section in ("reverted", "earlier") and not line.startswith("at "):
            restored.append(line)
    if state is None:
        return None
    return Answer(state=state,  # type: ignore[arg-type]
                  restored=tuple(restored), back=tuple(back), differs=tuple(differs),
                  earlier=earlier)


# -- the controller's new connection ----------------------------------------------------


def ssh_argv(host: DeclaredHost, *, connect_timeout: float) -> list[str]:
    """OpenSSH's client for ``host``: a connection of its own (no control master), batch
    mode, the host's user, port, key and host key policy."""
    ssh = host.ssh
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o",
            "ControlPath=none", "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
            "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2",
            "-o", f"StrictHostKeyChecking={ssh.host_key_checking}", "-p", str(ssh.port),
            "-l", ssh.user]
    if ssh.key_file:
        argv += ["-i", _expand(ssh.key_file), "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts_file:
        argv += ["-o", f"UserKnownHostsFile={_expand(ssh.known_hosts_file)}"]
    return [*argv, "--", host.address]


def _expand(path: str) -> str:
    return str(Path(path).expanduser())


@dataclass(frozen=True)
class Confirmation:
    """How a guarded apply on one host ended."""

    result: Literal["Confirmed", "RevertedByHost", "Unreachable", "Lost"]
    """Confirmed: disarmed in time. RevertedByHost: the host restored what it saved.
    Unreachable: no new connection until ``confirm_timeout`` plus the margin. Lost: the
    host answered but held no revert of this apply (removed by hand)."""
    answer: Answer | None = None
    after_s: float = 0.0
    """Seconds from the end of the apply to the answer (or to giving up)."""
    attempts: int = 0
    last_error: str = ""

    def describe(self, host_last_contact: str) -> str:
        """One line for the record."""
        if self.result == "Confirmed":
            return f"Confirmed: reached again over a new SSH connection after {self.after_s:.1f} s"
        if self.result == "RevertedByHost":
            a = self.answer or Answer("reverted")
            restored = "; ".join(a.restored) or "nothing to restore"
            back = ("; every saved file is back" if not a.differs
                    else f"; NOT back as saved: {', '.join(a.differs)}")
            return (f"RevertedByHost: the controller could not reach the host over a new SSH "
                    f"connection in time; the host reverted by itself: {restored}{back}")
        if self.result == "Lost":
            return "Lost: the host answered but held no armed revert of this apply"
        return (f"Unreachable: no new SSH connection within {self.after_s:.0f} s after the "
                f"guarded apply; last contact {host_last_contact}"
                + (f" ({self.last_error})" if self.last_error else ""))


def confirm(
    host: DeclaredHost,
    token: str,
    *,
    timeout: float,
    margin: float,
    run: Callable[[list[str], float], tuple[int, str, str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Confirmation:
    """Reach ``host`` over a new SSH connection and disarm the revert armed with ``token``;
    keep trying until ``timeout`` plus ``margin`` (the host reverts at ``timeout``)."""
    run = run or _run
    start = clock()
    attempts = 0
    error = ""
    while True:
        left = timeout + margin - (clock() - start)
        attempts += 1
        step = max(1.0, min(5.0, left))
        try:
            code, out, err = run([*ssh_argv(host, connect_timeout=step),
                                  remote.as_root(host, confirm_command(token))], step + 10)
        except subprocess.TimeoutExpired:
            code, out, err = 255, "", "timed out"
        answer = parse_answer(out) if code == 0 else None
        if answer is not None:
            kind = {"confirmed": "Confirmed", "reverted": "RevertedByHost"}.get(
                answer.state, "Lost")
            return Confirmation(kind, answer, clock() - start, attempts)  # type: ignore[arg-type]
        error = (remote.sudo_failure(host.name, host.ssh.user, err)
                 or (err.strip().splitlines() or [f"exit {code}"])[-1][:200])
        if clock() - start >= timeout + margin:
            return Confirmation("Unreachable", None, clock() - start, attempts, error)
        sleep(1.0)


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    return done.returncode, done.stdout, done.stderr


def utc_now() -> str:
    """Now, as the record writes a time of last contact."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def confirm_guards(state: DeclaredState, report: ApplyReport, *,
                   on_progress: Progress | None = None) -> ApplyReport:
    """Reach each host where the apply armed a revert again, over a new SSH connection, in
    parallel; record how each guarded apply ended (``HostGuard.result``)."""
    armed = [h for h in report.hosts if h.guard is not None and h.guard.token]
    if not armed:
        return report
    say = on_progress or (lambda _: None)
    settings = state.settings.guard
    say(f"confirming the guarded apply on {', '.join(h.host for h in armed)} over new SSH "
        f"connections (each host reverts by itself after {settings.confirm_timeout} s)")

    def one(h: HostApply) -> HostApply:
        assert h.guard is not None
        done = confirm(state.host(h.host), h.guard.token,
                             timeout=settings.confirm_timeout, margin=settings.margin)
        detail = done.describe(h.guard.last_contact or "unknown")
        say(f"{h.host}: {detail}")
        update: dict[str, object] = {"guard": h.guard.model_copy(
            update={"result": done.result, "detail": detail})}
        if done.result == "Unreachable":
            update.update(status="unreachable", error=detail)
        elif done.result != "Confirmed":
            update.update(status="failed", error=detail)
        return h.model_copy(update=update)

    with ThreadPoolExecutor(max_workers=min(len(armed), state.settings.parallel)) as pool:
        confirmed = {h.host: h for h in pool.map(one, armed)}
    return report.model_copy(update={"hosts": tuple(confirmed.get(h.host, h)
                                                    for h in report.hosts)})
