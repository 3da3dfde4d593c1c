// An incident's post-mortem on the status page, and who did what about the incident.
// page.js calls gitopsPostmortem.block(incident, teams) for each incident it draws. A person
// whose permissions (GET /api/session's "may") hold "postmortem" on the incident's environment also
// gets the controls to write: sections, action items with an owning team, done / open again,
// sent as JSON to POST /api/incidents/{id}/... (same origin, the session cookie; the server
// records the signed-in person, never a name from the page). Every text goes in through
// textContent or setAttribute, never as HTML.
"use strict";

(function () {
  const SECTIONS = [["summary", "Summary", false], ["impact", "Impact", false],
    ["causes", "Contributing causes", true], ["went_well", "What went well", true]];
  let permissions = null;  // environment -> [permission]; null until the session answers
  const shown = new Map();  // incident id -> {node, incident, teams}: the blocks drawn last
  const drafts = new Map();  // field key -> what is being written, kept across redraws
  const problems = new Map();  // incident id -> the last refusal's message
  let focused = null;  // {key, start, end}: the field being written, to focus it again

  const { el } = window.gitopsDom;

  function when(iso) {
    return iso ? String(iso).replace("T", " ").slice(0, 16) : "";
  }

  // "alice, 2026-12-06 02:10": who wrote it and when, as the record says.
  function stamp(by, at, what) {
    return el("span", { class: "muted pm-by", "data-by": by, text: `(${what ? what + " " : ""}${by}, ${when(at)})` });
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + kind, text: text });
  }

  function mayWrite(incident) {
    return permissions !== null && (permissions[incident.environment] || []).includes("postmortem");
  }

  // A field whose text survives the page's redraws (every few seconds) and keeps its focus.
  function field(tag, key, attrs) {
    const node = el(tag, { ...attrs, "data-field": key });
    node.value = drafts.get(key) || "";
    const keep = () => {
      drafts.set(key, node.value);
      focused = { key, start: node.selectionStart, end: node.selectionEnd };
    };
    node.addEventListener("input", keep);
    node.addEventListener("focus", keep);
    if (focused && focused.key === key) {
      const { start, end } = focused;
      queueMicrotask(() => {
        const active = document.activeElement;
        if (node.isConnected && (!active || active === document.body)) {
          node.focus();
          if (start !== null && start !== undefined) node.setSelectionRange(start, end);
        }
      });
    }
    return node;
  }

  async function send(incident, path, body) {
    const response = await fetch(`/api/incidents/${encodeURIComponent(incident.id)}/${path}`, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let answer = null;
    try { answer = await response.json(); } catch (err) { answer = null; }
    if (!response.ok) throw new Error((answer && answer.error) || `HTTP ${response.status}`);
    return answer.incident || answer;
  }

  // Sends one write; on success the block shows the record's answer at once (the page's next
  // poll agrees), on a refusal the server's message.
  async function write(incident, path, body, button, cleared) {
    if (button) button.disabled = true;
    try {
      const fresh = await send(incident, path, body);
      problems.delete(incident.id);
      for (const key of cleared || []) drafts.delete(key);
      const entry = shown.get(incident.id);
      if (entry) entry.incident = { ...entry.incident, postmortem: fresh.postmortem, reviewed: fresh.reviewed };
    } catch (err) {
      problems.set(incident.id, err.message);
    } finally {
      if (button) button.disabled = false;
      redraw(incident.id);
    }
  }

  function sectionPart(incident, key, title, many, editable) {
    const value = incident.postmortem[key];
    const entries = Array.isArray(value) ? value : value ? [value] : [];
    const part = el("div", { "data-section": key }, el("h5", { text: title }),
      entries.length ? el("ul", {}, entries.map((e) => el("li", { "data-by": e.by },
        el("span", { class: "pm-text", text: e.text }), " ", stamp(e.by, e.at))))
        : el("p", { class: "muted", text: "not written yet" }));
    if (!editable) return part;
    const fieldKey = `${incident.id}/${key}`;
    const text = field("textarea", fieldKey, { rows: 2, "aria-label": title, maxlength: 4000,
      placeholder: many ? `add to ${title.toLowerCase()}` : (entries.length ? "write it again" : "write it") });
    const save = el("button", { type: "button", "data-save": key, text: many ? "Add" : "Save" });
    save.addEventListener("click", () => {
      if (text.value.trim()) write(incident, "annotate", { [key]: text.value }, save, [fieldKey]);
    });
    return el("div", { class: "pm-part" }, part, el("div", { class: "pm-edit" }, text, " ", save));
  }

  function teamSelect(key, teams, current, attrs) {
    const choices = [...new Set([...teams, ...(current ? [current] : [])])];
    const select = el("select", { ...attrs, "data-field": key },
      el("option", { value: "", text: "no team yet" }), choices.map((t) => el("option", { value: t, text: t })));
    select.value = current || "";
    return select;
  }

  function actionItem(incident, a, teams, editable) {
    const item = el("li", { "data-action": a.id, "data-by": a.created_by },
      badge(a.state, a.state === "done" ? "ok" : "warn"), " ", el("span", { class: "pm-text", text: a.text }), " ",
      el("span", { class: "muted pm-team", text: "team: " + (a.team || "no owner yet") }), " ",
      a.team_by ? [el("span", { class: "pm-team-by", "data-by": a.team_by }, stamp(a.team_by, a.team_at, "given to " + a.team + " by")), " "] : null,
      stamp(a.created_by, a.created_at, "added by"),
      a.state === "done" && a.done_by ? [" ", el("span", { class: "pm-done", "data-by": a.done_by }, stamp(a.done_by, a.done_at, "done by"))] : null);
    if (!editable) return item;
    const done = a.state === "done";
    const toggle = el("button", { type: "button", "data-do": done ? "reopen" : "done", text: done ? "Open again" : "Mark done" });
    toggle.addEventListener("click", () => write(incident, `actions/${a.id}`, { done: !done }, toggle));
    const team = teamSelect(`${incident.id}/action-${a.id}-team`, teams, a.team, { "aria-label": "owning team" });
    team.addEventListener("change", () => {
      if (team.value) write(incident, `actions/${a.id}`, { team: team.value }, team);
    });
    return add(item, " ", toggle, " ", team);
  }

  function add(node, ...children) {
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function newAction(incident, teams) {
    const textKey = `${incident.id}/action-text`;
    const teamKey = `${incident.id}/action-team`;
    const text = field("input", textKey, { type: "text", "aria-label": "new action item", maxlength: 4000,
      placeholder: "what is to be done" });
    const team = teamSelect(teamKey, teams, drafts.get(teamKey) || "", { "aria-label": "owning team of the new item" });
    team.addEventListener("change", () => drafts.set(teamKey, team.value));
    const button = el("button", { type: "button", "data-save": "action", text: "Add action item" });
    button.addEventListener("click", () => {
      if (!text.value.trim()) return;
      const body = { text: text.value };
      if (team.value) body.team = team.value;
      write(incident, "actions", body, button, [textKey, teamKey]);
    });
    return el("div", { class: "pm-edit pm-new-action" }, text, " ", team, " ", button);
  }

  // Who did what about the incident: the audit trail's entries (suspend, rollback, edits).
  function whoDid(incident) {
    const entries = incident.audit || [];
    return [el("h5", { text: "Who did what" }),
      entries.length ? el("ul", { class: "pm-audit", "data-testid": "who-did" }, entries.map((e) =>
        el("li", { "data-actor": e.actor, "data-audit-action": e.action },
          el("time", { datetime: e.at, title: e.at, text: when(e.at) }), " ", el("strong", { text: e.actor }),
          e.role ? el("span", { class: "muted", text: ` (${e.role})` }) : null, " ", el("span", { text: e.action }),
          e.reason ? el("span", { class: "pm-text", text: ": " + e.reason }) : null,
          e.outcome && e.outcome !== "ok" ? el("span", { class: "muted", text: ` [${e.outcome}]` }) : null)))
        : el("p", { class: "muted", text: "nothing recorded" })];
  }

  function content(incident, teams) {
    const pm = incident.postmortem;
    const editable = mayWrite(incident);
    const actions = pm.actions || [];
    const problem = problems.get(incident.id);
    return [
      el("h4", {}, "Post-mortem ", badge(pm.reviewed ? "reviewed" : "not reviewed", pm.reviewed ? "ok" : "warn")),
      problem ? el("p", { class: "error pm-error", role: "alert", text: problem }) : null,
      permissions !== null && !editable ? el("p", { class: "muted pm-readonly",
        text: `Writing here needs the postmortem permission on ${incident.environment}; you may read it.` }) : null,
      SECTIONS.map(([key, title, many]) => sectionPart(incident, key, title, many, editable)),
      el("h5", { text: "Action items" }),
      actions.length ? el("ul", { class: "actions" }, actions.map((a) => actionItem(incident, a, teams, editable)))
        : el("p", { class: "muted", text: "none yet" }),
      editable ? newAction(incident, teams) : null,
      whoDid(incident),
    ];
  }

  function redraw(id) {
    const entry = shown.get(id);
    if (!entry || !entry.node.isConnected) return;
    entry.node.dataset.editable = mayWrite(entry.incident) ? "yes" : "no";
    entry.node.replaceChildren(...content(entry.incident, entry.teams).flat(2).filter((n) => n));
  }

  function block(incident, teams) {
    if (!incident.postmortem) return null;
    const node = el("div", { class: "postmortem", "data-testid": "postmortem", "data-editable": mayWrite(incident) ? "yes" : "no" });
    shown.set(incident.id, { node, incident, teams: teams || [] });
    node.replaceChildren(...content(incident, teams || []).flat(2).filter((n) => n));
    return node;
  }

  document.addEventListener("focusin", (e) => {
    if (!e.target.dataset || !e.target.dataset.field) focused = null;
  });

  async function loadPermissions() {
    const response = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const person = await response.json();
    permissions = person.may || {};
    for (const id of shown.keys()) redraw(id);
  }

  window.gitopsPostmortem = Object.freeze({ block });
  loadPermissions().catch(() => {});
})();
