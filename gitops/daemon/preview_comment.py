"""A preview's report as a pull/merge request comment (Markdown): the result, the change's
plan with its file diffs, the checks; cut to the Git host's size limit with a pointer to the
full report, and found again by its hidden ``marker``."""

from __future__ import annotations

from gitops.records import Plan, PreviewReport

__all__ = ["marker", "render_comment"]


def marker(environment: str) -> str:
    """The hidden line that finds a pull request's earlier preview comment again."""
    return f"<!-- gitops-preview:{environment} -->"



_ICONS = {"success": "✅", "failure": "❌", "error": "⚠️"}
_CHECK_ICONS = {"pass": "✅", "fail": "❌"}


def _plan_lines(plan: Plan | None, hosts: dict[str, str], with_diffs: bool) -> list[str]:
    if plan is None:
        return []
    changed = [(h, op) for h in plan.hosts for op in h.ops if op.would_change]
    lines = [f"#### Plan of the change: {len(changed)} operation(s) change", ""]
    errors = [h for h in plan.hosts if h.error]
    if changed:
        lines += ["| host | service | operation |", "|---|---|---|"]
        for h, op in changed:
            lines.append(f"| {_where(h.host, hosts)} | {op.service or '-'} | "
                         f"{_cell(_op_name(op.name, op.service))} |")
        lines.append("")
    for h in errors:
        lines += [f"- {h.host}: plan failed: {_cell(h.error or '')}"]
    if with_diffs:
        for h, op in changed:
            if op.diff:
                title = f"{h.host}: {_op_name(op.name, op.service)}"
                lines += ["<details><summary>" + _html(title) + "</summary>",
                          "", "```diff", op.diff.rstrip("\n"), "```", "</details>", ""]
    return lines


def _where(host: str, hosts: dict[str, str]) -> str:
    stand_in = hosts.get(host)
    return f"{host} (as {stand_in})" if stand_in and stand_in != host else host


def _op_name(name: str, service: str | None) -> str:
    """pyinfra names a deploy's operation ``<service> | <name>``: the column says the service."""
    return name.removeprefix(f"{service} | ") if service else name


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_comment(report: PreviewReport, *, mark: str, limit: int | None = None,
                   report_url: str | None = None) -> str:
    """The pull request comment (Markdown): result, plan with diffs, checks; at most
    ``limit`` characters, cut with a pointer to ``report_url`` when longer."""
    short = (report.head_sha or "")[:10]
    icon = _ICONS[report.result]
    head = [mark,
            f"### {icon} gitops preview of `{report.branch}` on `{report.environment}`: "
            f"{report.result}", "",
            f"Commit `{short or '?'}` on top of `{report.base}` (`{(report.base_sha or '?')[:10]}`)"
            + (f", on preview lab `{report.lab}` ("
               + ", ".join(f"{h} as {p}" for h, p in report.hosts.items()) + ")"
               if report.mode == "lab" else "") + ".", ""]
    if report.unchanged:
        head += ["Unchanged by the change, so not applied again: "
                 + ", ".join(f"`{s}`" for s in report.unchanged) + ".", ""]
    if report.mode == "dry-run":
        head += [f"> **Dry run** (plan only, against the environment's hosts): "
                 f"{report.dry_reason}", ""]
    head += [f"**{report.summary}**", ""]
    if report.approval:
        head += [f"> ⏸ **Waiting for approval** once merged: {report.approval}", ""]
    if report.problems:
        head += ["#### Invalid declaration", ""] + [f"- `{p}`" for p in report.problems] + [""]
    if report.apply_failed:
        head += ["#### Apply failed", ""] + [
            f"- {h}: {_cell(why)}" for h, why in report.apply_failed.items()] + [""]
    checks: list[str] = []
    if report.verify is not None:
        failed = report.verify.failed
        passed = [r for r in report.verify.results if r.status == "pass"]
        checks = [f"#### Checks: {len(passed)} passed, {len(failed)} failed", ""]
        for host, why in report.verify.host_errors.items():
            checks.append(f"- ❌ {host}: could not be checked: {_cell(why)}")
        if failed:
            checks += ["| host | check | result |", "|---|---|---|"]
            for r in failed:
                checks.append(f"| {r.host} | {r.service}/{r.check} | ❌ {r.status} |")
            checks.append("")
            for r in failed:
                if r.message:
                    checks += ["<details><summary>" + _html(f"{r.host} {r.service}/{r.check}")
                               + "</summary>", "", "```", r.message.rstrip("\n"), "```",
                               "</details>", ""]
        if passed:
            checks += ["<details><summary>passing checks</summary>", "",
                       "| host | check | result |", "|---|---|---|"]
            checks += [f"| {r.host} | {r.service}/{r.check} | ✅ pass |" for r in passed]
            checks += ["", "</details>", ""]
    foot = [f"[Full report]({report_url})" if report_url else ""]
    text = "\n".join(head + _plan_lines(report.plan, report.hosts, True) + checks + foot)
    if limit is None or len(text) <= limit:
        return text
    text = "\n".join(head + _plan_lines(report.plan, report.hosts, False) + checks + foot)
    if len(text) <= limit:
        return text
    note = ("\n\n*…cut to fit the comment size limit; the full report is "
            + (f"[on the status page]({report_url})" if report_url else "on the status page")
            + ".*")
    cut = text[: max(0, limit - len(note) - 8)]
    if cut.count("```") % 2:
        cut += "\n```"
    return cut + note
