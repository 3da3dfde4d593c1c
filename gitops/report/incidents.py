"""Incident timelines derived from the run history: the start of the team's post-mortem.

An incident is a pure function of the ``runs`` table (and the per-run host, operation and
check rows), recomputed on every call: nothing is stored apart from the history, so a crash
never loses one and a changed definition applies to the past too.

- **Opens** on a failed rollout (a ``reconcile`` or ``retry`` run whose result is ``failed``),
  a ``rollback`` (a rollback run, or an operator's rollback request), or a drift correction (a
  ``reconcile`` run with reason "drift correction"). ``opened_at`` is when the reconciler knew:
  the failed run's ``finished_at``; for a drift correction, the ``finished_at`` of the failed
  drift check before it; for a rollback that no failure preceded, its ``started_at``.
- While open, every run of the environment joins its timeline; further failures add their
  failed hosts to the hosts still to restore.
- **Closes** at the next verified success covering it: a ``succeeded`` ``reconcile``,
  ``rollback`` or ``retry`` run (one that reached hosts, not an operator's request) that verified
  every host still failing (a run with no host rows covers all). That run and its commit are
  what restored it. ``invalid`` and ``error`` runs never open or close one.

``id`` is ``INC-<environment>-<first run id>`` (``INC-lab-6``: never read as a host's name;
the older ``lab-6`` is still accepted where an id is typed): stable as long as the history
is. Called by the CLI (``gitops incidents``), the API and the status page (wired elsewhere);
``write_reports`` keeps one Markdown file per incident in a reports folder. Only what the
store holds is shown: no secrets.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gitops.errors import UsageError
from gitops.record.store import Store
from gitops.records import APPLY_KINDS, ActionItem, PostmortemNote, RunRow
from gitops.report.episodes import (
    Episode,
    default_cause,
    episodes,
    load_runs,
    verified_hosts,
)

__all__ = [
    "APPLY_KINDS",
    "SECTIONS",
    "Episode",
    "Incident",
    "RunRow",
    "add_action",
    "annotate",
    "canonical_id",
    "changed_files",
    "default_cause",
    "episodes",
    "find",
    "incidents",
    "load_runs",
    "postmortem",
    "render_markdown",
    "update_action",
    "verified_hosts",
    "write_reports",
]

ID_PREFIX = "INC-"
"""What starts an incident's id: ``INC-lab-6`` is incident 6 of ``lab``, not host ``lab-6``."""


def canonical_id(incident_id: str) -> str:
    """``incident_id`` as ids are now written: the older form ``lab-6`` (still in typed
    commands and in post-mortems recorded before) becomes ``INC-lab-6``."""
    text = incident_id.strip()
    return text if text.startswith(ID_PREFIX) else ID_PREFIX + text


DiffSummary = Callable[[str, str], str]
"""``diff_summary(old_sha, new_sha)``: e.g. ``git diff --stat``, supplied by the caller."""


# -- incidents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    """One incident with everything the store knows about it; ``as_dict()`` is JSON-ready."""

    id: str
    environment: str
    cause: str
    """``failed rollout``, ``rollback`` or ``drift correction``."""
    opened_at: datetime
    closed_at: datetime | None
    commit: dict[str, Any]
    """sha, branch, author, committed_at, message, previous_sha, diff_summary."""
    plan: list[dict[str, Any]]
    """Per host of the opening run's plan: ``host``, ``changes`` (``service: op``), ``error``,
    ``diffs`` (``change``, ``diff``: what each changed file operation wrote, secrets redacted
    by the workers)."""
    failures: list[dict[str, Any]]
    """Per failed run and host: ``run_id``, ``host``, ``error``, ``ops`` (name, stderr),
    ``checks`` (service, check, status, message)."""
    rollbacks: list[dict[str, Any]]
    restored_by: dict[str, Any] | None
    """The restoring run: run_id, kind, sha, author, message, finished_at."""
    timeline: list[dict[str, Any]] = field(default_factory=list)
    """``at`` (ISO time), ``run_id``, ``event`` (one line)."""
    team: str | None = None
    """The team owning the environment (``gitops.report.teams``), if one is recorded."""
    postmortem: dict[str, Any] = field(default_factory=dict)
    """What people wrote (see ``postmortem``): sections, action items, ``reviewed``."""

    @property
    def reviewed(self) -> bool:
        return bool(self.postmortem.get("reviewed"))

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def duration_s(self) -> float | None:
        if self.closed_at is None:
            return None
        return (self.closed_at - self.opened_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "environment": self.environment, "cause": self.cause,
            "status": "open" if self.open else "closed",
            "opened_at": self.opened_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "duration_s": self.duration_s, "commit": self.commit, "plan": self.plan,
            "failures": self.failures, "rollbacks": self.rollbacks,
            "restored_by": self.restored_by, "timeline": self.timeline,
            "team": self.team, "postmortem": self.postmortem, "reviewed": self.reviewed,
        }


def incidents(store: Store, environment: str | None = None, *,
              diff_summary: DiffSummary | None = None) -> list[Incident]:
    """Every incident (oldest first) of ``environment`` or of all environments."""
    from gitops.report.teams import environment_teams

    by_env = load_runs(store, environment)
    verified = verified_hosts(store, environment)
    owners = environment_teams(store)
    notes: dict[str, list[PostmortemNote]] = {}
    for note in store.notes():
        notes.setdefault(canonical_id(note.incident), []).append(note)
    actions: dict[str, list[ActionItem]] = {}
    for action in store.actions():
        actions.setdefault(canonical_id(action.incident), []).append(action)
    out: list[Incident] = []
    for env, runs in by_env.items():
        for ep in episodes(runs, verified):
            found = _incident(store, ep, runs, diff_summary)
            out.append(dataclasses.replace(
                found, team=owners.get(env),
                postmortem=postmortem(notes.get(found.id, []), actions.get(found.id, []))))
    out.sort(key=lambda i: (i.opened_at, i.id))
    return out


# -- post-mortems: what people write into an incident -------------------------------------

SECTIONS: dict[str, str] = {
    "summary": "Summary",
    "impact": "Impact",
    "causes": "Contributing causes",
    "went_well": "What went well",
}
"""The sections people fill, by key. ``summary`` and ``impact`` are one text (the latest
entry); ``causes`` and ``went_well`` are lists (every entry)."""
_LISTS = ("causes", "went_well")


def postmortem(notes: list[PostmortemNote], actions: list[ActionItem]) -> dict[str, Any]:
    """The post-mortem of one incident from its entries (oldest first) and action items.

    Reviewed once it has a summary and every action item has an owning team."""
    out: dict[str, Any] = {key: [] if key in _LISTS else None for key in SECTIONS}
    for note in notes:
        entry = {"text": note.text, "by": note.actor, "at": note.at.isoformat()}
        if note.section in _LISTS:
            out[note.section].append(entry)
        elif note.section in SECTIONS:
            out[note.section] = entry
    out["actions"] = [a.as_dict() for a in actions]
    out["open_actions"] = sum(a.state == "open" for a in actions)
    out["reviewed"] = out["summary"] is not None and all(a.team for a in actions)
    return out


def find(store: Store, incident_id: str) -> Incident:
    """The incident ``incident_id`` (either form, see ``canonical_id``); a ``UsageError``
    listing a few known ids if none."""
    found = incidents(store)
    wanted = canonical_id(incident_id)
    for incident in found:
        if incident.id == wanted:
            return incident
    known = ", ".join(i.id for i in found[-5:]) or "none recorded"
    raise UsageError(f"no incident {incident_id!r} (latest: {known})")


MAX_TEXT = 4000
"""Longest entry or action text accepted (characters)."""


def _text(text: str, what: str) -> str:
    body = text.strip()
    if not body:
        raise UsageError(f"the {what} is empty")
    if len(body) > MAX_TEXT:
        raise UsageError(f"the {what} is over {MAX_TEXT} characters")
    if any(ord(c) < 0x20 and c not in "\n\t" for c in body):
        raise UsageError(f"the {what} holds a control character")
    return body


def _team(team: str | None, known: Iterable[str]) -> str | None:
    if team is None:
        return None
    from gitops.model import check_team

    try:
        check_team(team)
    except ValueError as exc:
        raise UsageError(f"team: {exc}") from None
    teams = sorted(set(known))
    if teams and team not in teams:
        raise UsageError(f"unknown team {team!r} (known: {', '.join(teams)})")
    return team


def known_teams(store: Store, declared: Iterable[str] = ()) -> set[str]:
    """The teams an action item may name: ``declared`` (the settings' ``teams``) and every
    team the record knows as an owner."""
    return set(declared) | {o.team for o in store.owners()}


def annotate(store: Store, incident_id: str, sections: Mapping[str, str], *,
             actor: str) -> Incident:
    """Write entries into ``incident_id``'s post-mortem (section key -> text); every entry
    is recorded with ``actor`` and the store's time. Usage errors for an unknown incident,
    section or an empty text; nothing is written then."""
    incident_id = find(store, incident_id).id
    if not sections:
        raise UsageError(f"name a section to write: {', '.join(SECTIONS)}")
    checked = []
    for key, text in sections.items():
        if key not in SECTIONS:
            raise UsageError(f"unknown section {key!r} (one of {', '.join(SECTIONS)})")
        checked.append((key, _text(text, SECTIONS[key].lower())))
    for key, text in checked:
        store.add_note(incident_id, key, text, actor=actor)
    return find(store, incident_id)


def add_action(store: Store, incident_id: str, text: str, team: str | None, *, actor: str,
               teams: Iterable[str] = ()) -> ActionItem:
    """A new open action item of ``incident_id`` owned by ``team`` (one of ``teams``)."""
    incident_id = find(store, incident_id).id
    body = _text(text, "action")
    return store.add_action(incident_id, body, _team(team, teams), actor=actor)


def update_action(store: Store, incident_id: str, action_id: int, *, actor: str,
                  done: bool | None = None, team: str | None = None,
                  teams: Iterable[str] = ()) -> ActionItem:
    """Mark an action item of ``incident_id`` done (or open again), or give it a team."""
    wanted = find(store, incident_id).id  # an unknown incident is named as such
    if not any(a.id == action_id and canonical_id(a.incident) == wanted
               for a in store.actions()):
        raise UsageError(f"incident {incident_id!r} has no action {action_id}")
    updated = store.update_action(action_id, actor=actor, done=done, team=_team(team, teams))
    assert updated is not None
    return updated


def _short(sha: str | None) -> str:
    return sha[:10] if sha else "?"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _incident(store: Store, ep: Episode, runs: list[RunRow],
              diff_summary: DiffSummary | None) -> Incident:
    before = [r for r in runs if r.id < ep.runs[0].id]
    commit_run = ep.opener
    if ep.cause == "rollback":
        # the commit being rolled back: the newest one applied before the rollback
        commit_run = next((r for r in reversed(before) if r.verified_success
                           and r.kind == "reconcile"), ep.opener)
    sha = commit_run.sha
    previous = next((r.sha for r in reversed(before) if r.verified_success and r.sha
                     and r.sha != sha), None)
    diff = diff_summary(previous, sha) if diff_summary and previous and sha else None
    commit = {"sha": sha, "branch": commit_run.branch, "author": commit_run.author,
              "committed_at": commit_run.committed_at.isoformat()
              if commit_run.committed_at else None,
              "message": commit_run.message, "previous_sha": previous, "diff_summary": diff}
    failed_runs = [r for r in ep.runs if r.result == "failed"]
    rollbacks = [
        {"run_id": r.id, "sha": r.sha, "actor": r.actor, "reason": r.reason,
         "result": r.result, "request": r.request,
         "hosts": _hosts(store, r.id), "started_at": r.started_at.isoformat(),
         "finished_at": r.finished_at.isoformat() if r.finished_at else None}
        for r in ep.runs if r.kind == "rollback"
    ]
    restored = None
    if ep.restorer is not None:
        r = ep.restorer
        restored = {"run_id": r.id, "kind": r.kind, "sha": r.sha, "author": r.author,
                    "message": r.message, "actor": r.actor,
                    "finished_at": r.at.isoformat()}
    return Incident(
        id=f"{ID_PREFIX}{ep.environment}-{ep.runs[0].id}", environment=ep.environment,
        cause=ep.cause,
        opened_at=ep.opened_at, closed_at=ep.closed_at, commit=commit,
        plan=_plan(store, commit_run.id),
        failures=[f for r in failed_runs for f in _failures(store, r)],
        rollbacks=rollbacks, restored_by=restored, timeline=_timeline(ep),
    )


def _hosts(store: Store, run_id: int) -> list[str]:
    return [h.host for h in store.host_results(run_id)]


def _plan(store: Store, run_id: int) -> list[dict[str, Any]]:
    plan = store.plan(run_id)
    if plan is None:
        return []
    return [{"host": host.host,
             "changes": [f"{op.service or '-'}: {op.name}" for op in host.ops
                         if op.would_change],
             "error": host.error,
             "diffs": [{"change": f"{op.service or '-'}: {op.name}",
                        "diff": _ANSI.sub("", op.diff)}
                       for op in host.ops if op.would_change and op.diff]}
            for host in plan.hosts]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def changed_files(plan: list[dict[str, Any]]) -> list[tuple[str, list[str], str]]:
    """(change, hosts, diff) of ``plan`` (``Incident.plan``'s shape), the same diff on
    several hosts once, in the plan's order; without terminal colours."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for host in plan:
        for d in host.get("diffs", ()):
            hosts.setdefault((d["change"], _ANSI.sub("", d["diff"])), []).append(host["host"])
    return [(change, names, diff) for (change, diff), names in hosts.items()]


def _failures(store: Store, run: RunRow) -> list[dict[str, Any]]:
    per_host: dict[str, dict[str, Any]] = {}

    def entry(host: str) -> dict[str, Any]:
        return per_host.setdefault(host, {"run_id": run.id, "kind": run.kind, "sha": run.sha,
                                          "host": host, "error": None, "ops": [],
                                          "checks": []})

    hosts, ops, checks = store.failures(run.id)
    for h in hosts:
        entry(h.host)["error"] = h.error
    for op in ops:
        entry(op.host)["ops"].append({"service": op.service, "name": op.name,
                                      "stderr": op.stderr})
    for chk in checks:
        entry(chk.host)["checks"].append({"service": chk.service, "check": chk.check,
                                          "status": chk.status, "message": chk.message})
    for host in run.failed_hosts:
        entry(host)
    return [per_host[h] for h in sorted(per_host)]


def _timeline(ep: Episode) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def add(at: datetime, run_id: int, text: str) -> None:
        events.append({"at": at.isoformat(), "run_id": run_id, "event": text})

    for r in ep.runs:
        what = f"{r.kind} run {r.id}"
        rev = f" of {_short(r.sha)}" if r.sha else ""
        why = f" ({r.reason})" if r.reason else ""
        if r.request:
            add(r.started_at, r.id, f"{r.actor}: {r.kind}{rev}{why}")
            continue
        add(r.started_at, r.id, f"{what}{rev} started by {r.actor}{why}")
        if r.finished_at is None:
            continue
        text = f"{what} {r.result}"
        if r.failed_hosts:
            text += f" on {', '.join(r.failed_hosts)}"
        if r.error:
            text += f": {_first_line(r.error)}"
        add(r.finished_at, r.id, text)
    if ep.restorer is not None and ep.closed_at is not None:
        add(ep.closed_at, ep.restorer.id,
            f"restored by {ep.restorer.kind} run {ep.restorer.id} of "
            f"{_short(ep.restorer.sha)}")
    events.sort(key=lambda e: (e["at"], e["run_id"]))
    return events


# -- Markdown ---------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "open"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _code(text: str) -> str:
    """``text`` as inline code (backticks inside it lengthen the delimiters)."""
    body = text.replace("\n", " ")
    tick = "`"
    while tick in body:
        tick += "`"
    return f"{tick} {body} {tick}" if tick != "`" else f"`{body}`"


def _fence(text: str, lang: str = "text") -> str:
    body = text.rstrip("\n")
    fence = "```"
    while fence in body:
        fence += "`"
    return f"{fence}{lang}\n{body}\n{fence}"


def _inline(text: str | None) -> str:
    """``text`` (from a commit, a run or a person) for Markdown outside a code block: its HTML
    escaped, so a viewer that renders HTML shows ``<script>`` rather than running it."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str | None) -> str:
    return _inline(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(incident: Incident) -> str:
    """A post-mortem starting point: title, summary, timeline, what failed, questions."""
    i = incident
    c = i.commit
    title = _first_line(c.get("message")) or "no commit message"
    lines = [f"# Incident {i.id}: {i.cause} of {_short(c.get('sha'))} ({_cell(title)})", ""]
    restored = i.restored_by
    rows = [
        ("Environment", i.environment),
        ("Status", "open" if i.open else "closed"),
        ("Cause", i.cause),
        ("Opened", i.opened_at.isoformat()),
        ("Closed", i.closed_at.isoformat() if i.closed_at else "not yet"),
        ("Duration", _duration(i.duration_s)),
        ("Commit", f"`{c.get('sha')}` on {c.get('branch')}" if c.get("sha") else "unknown"),
        ("Author", c.get("author") or ""),
        ("Committed", c.get("committed_at") or ""),
        ("Message", title),
        ("Previous revision", f"`{c['previous_sha']}`" if c.get("previous_sha") else "none"),
        ("Rollbacks", ", ".join(f"run {r['run_id']} to `{_short(r['sha'])}` ({r['result']})"
                                for r in i.rollbacks) or "none"),
        ("Restored by", f"{restored['kind']} run {restored['run_id']}, commit "
                        f"`{restored['sha']}` ({_first_line(restored['message'])})"
         if restored else "not yet"),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    if c.get("message") and "\n" in c["message"].strip():
        lines += ["Full commit message:", "", _fence(c["message"]), ""]
    if c.get("diff_summary"):
        lines += [f"## Change since `{_short(c.get('previous_sha'))}`", "",
                  _fence(c["diff_summary"]), ""]
    lines += ["## Timeline", "", "| time (UTC) | run | event |", "|---|---|---|"]
    lines += [f"| {e['at']} | {e['run_id']} | {_cell(e['event'])} |" for e in i.timeline]
    lines.append("")
    if i.plan:
        lines += ["## Plan", ""]
        for host in i.plan:
            changes = _cell(", ".join(host["changes"])) or "no changes"
            lines.append(f"- **{_cell(host['host'])}**: {changes}"
                         + (f" (plan error: {_cell(host['error'])})" if host.get("error")
                            else ""))
        lines.append("")
        for change, hosts, diff in changed_files(i.plan):
            lines += [f"Diff of {_code(change)} on {_cell(', '.join(hosts))}:", "",
                      _fence(diff, "diff"), ""]
    lines += ["## What failed", ""]
    if not i.failures:
        lines += ["No failed run is recorded in this incident.", ""]
    for f in i.failures:
        lines += [f"### {_cell(f['host'])} ({f['kind']} run {f['run_id']} of "
                  f"{_short(f['sha'])})", ""]
        if f["error"]:
            lines += ["Host error:", "", _fence(f["error"]), ""]
        for op in f["ops"]:
            what = f"{op['service'] or '-'}: {op['name']}"
            lines += [f"Operation failed: {_code(what)}", ""]
            if op["stderr"]:
                lines += [_fence(op["stderr"]), ""]
        for chk in f["checks"]:
            lines += [f"Check {_cell(chk['status'])}: "
                      f"{_code(chk['service'] + '/' + chk['check'])}", ""]
            if chk["message"]:
                lines += [_fence(chk["message"]), ""]
    lines += _postmortem_markdown(i)
    lines += [
        "## Questions for the post-mortem", "",
        "- What did the change intend, and why did the checks not catch it before it shipped?",
        "- Was the failure detected by the right check, and was its output enough to act on?",
        "- Was the time to restore acceptable? What would have shortened it?",
        "- Which check, test or review step would have stopped this change earlier?",
        "- What do we share with the team, and what follow-up actions (owner, date) come out "
        "of it?", "",
    ]
    return "\n".join(lines)


_PROMPTS = {
    "summary": "What happened, in a few sentences?",
    "impact": "What did users or other teams notice, for how long?",
    "causes": "What made this possible: conditions, gaps, surprises (what, not who)?",
    "went_well": "What helped detect or restore it?",
}


def _entry(entry: dict[str, Any]) -> str:
    return f"{_inline(entry['text'])} _({_cell(entry['by'])}, {entry['at'][:16]})_"


def _postmortem_markdown(i: Incident) -> list[str]:
    pm = i.postmortem or postmortem([], [])
    state = ("reviewed" if pm["reviewed"] else
             "not reviewed yet (it needs a summary, and an owning team for every action item)")
    lines = ["## Post-mortem", "", f"Status: {state}." + (f" Owning team: {_cell(i.team)}."
                                                        if i.team else ""), ""]
    for key, title in SECTIONS.items():
        lines += [f"### {title}", ""]
        value = pm.get(key)
        if not value:
            lines += [f"_Not written yet: {_PROMPTS[key]}_ "
                      f"(`gitops incidents annotate {i.id} --{key.replace('_', '-')} TEXT`)", ""]
        elif isinstance(value, list):
            lines += [f"- {_entry(e)}" for e in value] + [""]
        else:
            lines += [_entry(value), ""]
    lines += ["### Action items", ""]
    if not pm["actions"]:
        lines += [f"_None yet_ (`gitops incidents action {i.id} --add TEXT --team TEAM`)", ""]
    else:
        lines += ["| # | action | owning team | state |", "|---|---|---|---|"]
        lines += [f"| {a['id']} | {_cell(a['text'])} | {_cell(a['team'] or 'no owner yet')}"
                  f"{_cell(' (given by ' + a['team_by'] + ')') if a.get('team_by') else ''} | "
                  f"{a['state']}{' (' + a['done_at'][:10] + ')' if a['done_at'] else ''} |"
                  for a in pm["actions"]] + [""]
    return lines


def write_reports(store: Store, folder: Path,
                  diff_summary: DiffSummary | None = None,
                  environment: str | None = None) -> list[Path]:
    """One ``<id>.md`` per incident (of ``environment``, or of all) in ``folder`` (atomic;
    rewritten only when changed)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # a folder given is left as it is
    paths = []
    for incident in incidents(store, environment, diff_summary=diff_summary):
        path = folder / f"{incident.id}.md"
        text = render_markdown(incident)
        try:
            unchanged = path.read_text(encoding="utf-8") == text
        except OSError:
            unchanged = False
        if not unchanged:
            fd, tmp = tempfile.mkstemp(prefix=f".{incident.id}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        paths.append(path)
    return paths
