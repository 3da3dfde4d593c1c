"""Previews of branches on disposable hosts (``gitops.daemon.preview``): asked for, running,
finished with their reports, or interrupted by a crash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gitops.record.base import StoreBase, parse_time
from gitops.records import PreviewReport, PreviewRow

__all__ = ["PreviewsMixin"]


def _preview_row(row: Any, *, report: bool) -> PreviewRow:
    created = parse_time(row["created_at"])
    assert created is not None
    return PreviewRow(
        id=row["id"], environment=row["environment"], provider=row["provider"],
        number=row["number"], branch=row["branch"], base=row["base"],
        head_sha=row["head_sha"], state=row["state"], result=row["result"], mode=row["mode"],
        summary=row["summary"] or "", lab=row["lab"], created_at=created,
        finished_at=parse_time(row["finished_at"]),
        report=PreviewReport.model_validate_json(row["report"])
        if report and row["report"] else None)


# -- PostgreSQL (psycopg 3) ---------------------------------------------------------------


class PreviewsMixin(StoreBase):
    """Writes and reads the ``previews`` table."""

    def start_preview(self, environment: str, *, provider: str, number: int | None,
                      branch: str, base: str, head_sha: str | None) -> int:
        """A preview asked for (``queued``); its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO previews (environment, provider, number, branch, base, head_sha,"
                " state, created_at) VALUES (?,?,?,?,?,?,'queued',?) RETURNING id",
                (environment, provider, number, branch, base, head_sha, self._now()))
            return int(cur.fetchall()[0][0])

    def preview_running(self, preview_id: int, lab: str | None) -> None:
        """The preview started, on lab ``lab`` (None: a dry run); found by it after a crash."""
        self.db.execute("UPDATE previews SET state='running', lab=? WHERE id=?",
                        (lab, preview_id))

    def finish_preview(self, preview_id: int, report: PreviewReport | None, *,
                       state: str = "finished", summary: str | None = None) -> None:
        """The preview ended: its report (already redacted), or why there is none."""
        self.db.execute(
            "UPDATE previews SET state=?, result=?, mode=?, summary=?, head_sha="
            " COALESCE(?, head_sha), finished_at=?, report=? WHERE id=?",
            (state, report.result if report else None, report.mode if report else None,
             summary if summary is not None else (report.summary if report else ""),
             report.head_sha if report else None, self._now(),
             report.model_dump_json() if report else None, preview_id))

    def interrupt_previews(self) -> list[PreviewRow]:
        """Mark the previews a crash cut short (queued or running) interrupted; return them
        as they were (their labs are to be taken down)."""
        cut = self.previews(unfinished=True)
        for row in cut:
            self.finish_preview(row.id, None, state="interrupted",
                                summary="interrupted: the daemon stopped before it ended")
        return cut

    def previews(self, environment: str | None = None, *, limit: int = 50,
                 unfinished: bool = False) -> list[PreviewRow]:
        """Previews, newest first, without their reports (``preview(id)`` has it)."""
        where, args = [], []
        if environment is not None:
            where.append("environment = ?")
            args.append(environment)
        if unfinished:
            where.append("state IN ('queued', 'running')")
        sql = ("SELECT * FROM previews" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [_preview_row(r, report=False) for r in self.db.execute(sql, (*args, limit))]

    def previewed_since(self, since: datetime) -> set[tuple[str, str, int]]:
        """(environment, provider, number) of the pull requests with a preview not finished
        (queued or running) or asked for or finished since ``since``: their refs stay in the
        mirror (``gitops.daemon.retention.preview_refs``)."""
        rows = self.db.execute(
            "SELECT DISTINCT environment, provider, number FROM previews WHERE number IS NOT"
            " NULL AND (state IN ('queued', 'running') OR created_at >= ? OR finished_at >= ?)",
            (since.isoformat(), since.isoformat()))
        return {(r["environment"], r["provider"], int(r["number"])) for r in rows}

    def preview(self, preview_id: int) -> PreviewRow | None:
        row = self.db.execute("SELECT * FROM previews WHERE id = ?", (preview_id,)).fetchone()
        return _preview_row(row, report=True) if row is not None else None
