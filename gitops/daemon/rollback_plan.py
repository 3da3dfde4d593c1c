"""What an operator's rollback would change, shown before it is asked for: computed on the
controller from Git and the record, touching no host.

The target is the one ``control.hold_rollback`` would hold (the revision asked for, else
the newest one verified on every host before the applied one; on the branch and verified
there, ``targets.rollback_target``). Both revisions are loaded as a run loads them
(``reconcile.load_revision``: snapshot, validation, SOPS keys) and compared host by host and
service by service (``changes``, a pure function): a service declared at one revision only,
its parameters that differ, and whether the files of its folder differ (the digests the
load computes). Secret values (SOPS, ``SecretStr`` parameters) are never shown: a parameter
holding one says only that it differs. It is the declared state, not a dry run: what the
hosts hold now is what the last checks recorded (the page's grid).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gitops.daemon import control
from gitops.errors import GitopsError, UsageError
from gitops.model import DeclaredHost, DeclaredState
from gitops.pipeline import source, targets
from gitops.pipeline.reconcile import load_revision
from gitops.pipeline.runs import Target
from gitops.record.store import Store

__all__ = ["SHOWN", "changes", "plan"]

SHOWN = 200
"""Characters of a parameter's value shown (longer ones are cut, with an ellipsis)."""


def _value(value: Any, secrets: Iterable[str]) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    if any(s and s in text for s in secrets):
        return "(secret)"
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def _services(host: DeclaredHost | None) -> dict[str, dict[str, Any]]:
    return dict(host.services) if host is not None else {}


def changes(now: DeclaredState | None, then: DeclaredState) -> list[dict[str, Any]]:
    """Per host declared at either revision (``now``: the applied one, None when it does
    not load; ``then``: the target), what going back to ``then`` changes: ``services``,
    each ``added`` (declared then only), ``removed`` (now only) or ``changed`` (its
    ``params`` as ``{"name", "now", "then"}``, ``files``: its folder differs); hosts with
    nothing changed are listed with no services."""
    secrets = (*(now.redact if now else ()), *then.redact)
    before = {h.name: h for h in now.hosts} if now else {}
    after = {h.name: h for h in then.hosts}
    digests_now = now.service_digests if now else {}
    out = []
    for name in [*after, *(n for n in before if n not in after)]:
        was, will = _services(before.get(name)), _services(after.get(name))
        services = []
        for service in [*will, *(s for s in was if s not in will)]:
            if service not in was:
                services.append({"service": service, "change": "added", "params": [],
                                 "files": False})
                continue
            if service not in will:
                services.append({"service": service, "change": "removed", "params": [],
                                 "files": False})
                continue
            old, new = was[service], will[service]
            params = [{"name": key, "now": _value(old.get(key), secrets),
                       "then": _value(new.get(key), secrets)}
                      for key in sorted({*old, *new}) if old.get(key) != new.get(key)]
            files = digests_now.get(service) != then.service_digests.get(service)
            if params or files:
                services.append({"service": service, "change": "changed", "params": params,
                                 "files": files})
        out.append({"host": name, "declared": ("both" if name in before and name in after
                                               else "then" if name in after else "now"),
                    "services": services})
    return out


def plan(store: Store, target: Target, revision: str | None) -> dict[str, Any]:
    """The rollback of ``target``'s environment to ``revision`` (None: the last good one)
    as the page shows it first: ``from`` and ``to`` (sha, message, author), the ``hosts``
    of ``changes``, ``files``: ``git diff --stat`` between them, and ``now_error`` when the
    applied revision does not load. ``UsageError`` when there is nothing to go back to,
    ``TargetRefused`` for a revision that may not be a target."""
    environment = target.environment
    source.fetch(target.repo, target.branch, target.state_dir)
    current = store.environment_status(environment)
    applied = current.last_applied.sha if current is not None and current.last_applied else None
    sha = (control.sha_prefix(revision) if revision else
           control.last_good_revision(store, environment, before=applied))
    if sha is None:
        raise UsageError(f"{environment}: no earlier verified revision to roll back to")
    to = targets.rollback_target(store, environment, repo=target.repo, branch=target.branch,
                                 state_dir=target.state_dir, revision=sha)
    then = load_revision(target, to, lambda _: None, keep=False)
    now: DeclaredState | None = None
    now_error = ""
    came_from = None
    if applied is not None:
        try:
            came_from = source.revision(target.repo, target.branch, applied, target.state_dir)
            now = load_revision(target, came_from, lambda _: None, keep=False)
        except GitopsError as exc:
            now_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return {
        "environment": environment,
        "from": None if applied is None else {
            "sha": applied, "message": came_from.message.splitlines()[0] if came_from else ""},
        "to": {"sha": to.sha, "message": to.message.splitlines()[0] if to.message else "",
               "author": to.author},
        "same": applied == to.sha,
        "hosts": changes(now, then),
        "files": source.diff_summary(target.repo, target.state_dir, applied, to.sha)
        if applied else "",
        "now_error": now_error,
    }
