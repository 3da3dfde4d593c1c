"""Who may do what, where: roles granted per team, decided by a Casbin model and policy (the
only module that imports ``casbin``; an import-linter contract keeps it so).

A grant gives a subject (a token's name, ``api``, ``local``; later a sign-in group) a role
for the environments one team owns, or for all (team ``*``). The policy is written as Argo
CD's ``policy.csv`` is: ``p`` lines say what each role may do, ``g`` lines put a subject in
a role within a team's domain. ``policy_csv`` prints it; ``Roles.allows`` answers the role
that allows a permission, or None.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["ANY_TEAM", "PERMISSIONS", "ROLES", "Grant", "Roles", "check_role"]

ANY_TEAM = "*"
"""A grant's team that stands for every environment, owned by a team or not."""

PERMISSIONS = ("read", "reconcile", "retry", "suspend", "resume", "promote", "unquarantine",
               "postmortem", "approve", "rollback", "forget", "tokens")
"""Every permission a route or a command names."""

_OPERATE = ("reconcile", "retry", "suspend", "resume", "promote", "unquarantine",
            "postmortem", "approve")
ROLES: dict[str, tuple[str, ...]] = {
    "viewer": ("read",),
    "operator": ("read", *_OPERATE),
    "rollback": ("read", "rollback"),
    "admin": PERMISSIONS,
}
"""Each role's permissions: every role reads; ``rollback`` changes nothing but a rollback;
``approve`` (an operator's) signs off a revision of an environment with ``require_approval``."""

_MODEL = """
[request_definition]
r = sub, team, act

[policy_definition]
p = sub, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = (g(r.sub, p.sub, r.team) || g(r.sub, p.sub, "*")) && r.act == p.act
"""


def check_role(role: str) -> str:
    """``role`` if it is one of ``ROLES``, else ``ValueError`` naming them."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Grant:
    """``subject`` holds ``role`` for the environments ``team`` owns (``*``: all)."""

    subject: str
    role: str
    team: str = ANY_TEAM


class Roles:
    """The policy of a set of grants, as a Casbin enforcer; safe to share between threads."""

    def __init__(self, grants: Iterable[Grant]) -> None:
        import casbin

        self.grants = tuple(dict.fromkeys(grants))
        model = casbin.model.Model()
        model.load_model_from_text(_MODEL)
        self._enforcer: Any = casbin.Enforcer(model)
        self._enforcer.add_policies([[f"role:{role}", act] for role, acts in ROLES.items()
                                     for act in acts])
        if self.grants:
            self._enforcer.add_grouping_policies(
                [[g.subject, f"role:{check_role(g.role)}", g.team] for g in self.grants])
        self._lock = threading.Lock()

    def allows(self, subject: str, permission: str, team: str | None) -> str | None:
        """The role that lets ``subject`` do ``permission`` on an environment of ``team``
        ("": owned by none; None: on any environment, as for reading everything), or None."""
        teams = ([team] if team is not None else
                 sorted({g.team for g in self.grants if g.subject == subject}))
        with self._lock:
            for one in teams:
                allowed, rule = self._enforcer.enforce_ex(subject, one, permission)
                if allowed:
                    return str(rule[0]).removeprefix("role:")
        return None

    def policy_csv(self) -> str:
        """The policy as Argo CD's ``policy.csv`` reads: ``p`` and ``g`` lines."""
        lines = [f"p, role:{role}, {act}" for role, acts in ROLES.items() for act in acts]
        lines += [f"g, {g.subject}, role:{g.role}, {g.team}" for g in self.grants]
        return "\n".join(lines) + "\n"
