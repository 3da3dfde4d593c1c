"""What people write into incidents' post-mortems: notes by section and action items (open or
done, given to a team).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gitops.record.base import StoreBase, parse_time
from gitops.records import ActionItem, PostmortemNote

__all__ = ["PostmortemsMixin"]


class PostmortemsMixin(StoreBase):
    """Writes and reads the ``postmortem_notes`` and ``postmortem_actions`` tables."""

    def postmortem_mark(self) -> tuple[Any, ...]:
        """Changes whenever someone writes into a post-mortem: a note, an action item, an
        item done or open again, given to a team."""
        notes = self.db.execute("SELECT COUNT(*), MAX(id) FROM postmortem_notes").fetchone()
        actions = self.db.execute("SELECT id, state, team FROM postmortem_actions"
                                  " ORDER BY id").fetchall()
        return (*notes, *(tuple(a) for a in actions))

    def add_note(self, incident: str, section: str, text: str, *, actor: str) -> PostmortemNote:
        """Record one entry of a post-mortem's ``section``, with who and when."""
        stamp = self._now()
        cur = self.db.execute(
            "INSERT INTO postmortem_notes (incident, section, text, actor, at)"
            " VALUES (?,?,?,?,?) RETURNING id", (incident, section, text, actor, stamp))
        return PostmortemNote(int(cur.fetchall()[0][0]), incident, section, text, actor,
                              datetime.fromisoformat(stamp))

    def notes(self, incident: str | None = None) -> list[PostmortemNote]:
        """Post-mortem entries (of ``incident``, or all), oldest first."""
        sql = "SELECT * FROM postmortem_notes"
        args: tuple[str, ...] = ()
        if incident is not None:
            sql, args = sql + " WHERE incident=?", (incident,)
        return [PostmortemNote(r["id"], r["incident"], r["section"], r["text"], r["actor"],
                               datetime.fromisoformat(r["at"]))
                for r in self.db.execute(sql + " ORDER BY id", args).fetchall()]

    def add_action(self, incident: str, text: str, team: str | None, *,
                   actor: str) -> ActionItem:
        """A new open action item of ``incident``'s post-mortem."""
        stamp = self._now()
        cur = self.db.execute(
            "INSERT INTO postmortem_actions (incident, text, team, state, created_by,"
            " created_at) VALUES (?,?,?,'open',?,?) RETURNING id",
            (incident, text, team, actor, stamp))
        return ActionItem(int(cur.fetchall()[0][0]), incident, text, team, "open", actor,
                          datetime.fromisoformat(stamp), None, None)

    def update_action(self, action_id: int, *, actor: str, done: bool | None = None,
                      team: str | None = None) -> ActionItem | None:
        """Mark action ``action_id`` done (or open again) and/or give it an owning team (who
        gave it and when are kept when the team changes); None when there is no such action."""
        with self._tx() as db:
            row = db.execute("SELECT team FROM postmortem_actions WHERE id=?",
                             (action_id,)).fetchone()
            if row is None:
                return None
            if team is not None and team != row["team"]:
                db.execute("UPDATE postmortem_actions SET team=?, team_by=?, team_at=?"
                           " WHERE id=?", (team, actor, self._now(), action_id))
            if done is True:
                db.execute("UPDATE postmortem_actions SET state='done', done_by=?, done_at=?"
                           " WHERE id=?", (actor, self._now(), action_id))
            elif done is False:
                db.execute("UPDATE postmortem_actions SET state='open', done_by=NULL,"
                           " done_at=NULL WHERE id=?", (action_id,))
        return next(a for a in self.actions() if a.id == action_id)

    def actions(self, incident: str | None = None) -> list[ActionItem]:
        """Action items (of ``incident``, or all), oldest first."""
        sql = "SELECT * FROM postmortem_actions"
        args: tuple[str, ...] = ()
        if incident is not None:
            sql, args = sql + " WHERE incident=?", (incident,)
        return [ActionItem(r["id"], r["incident"], r["text"], r["team"], r["state"],
                           r["created_by"], datetime.fromisoformat(r["created_at"]),
                           r["done_by"], parse_time(r["done_at"]), r["team_by"],
                           parse_time(r["team_at"]))
                for r in self.db.execute(sql + " ORDER BY id", args).fetchall()]
