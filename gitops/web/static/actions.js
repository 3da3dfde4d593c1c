// The status page's actions: per environment, a button for each action the caller's roles
// allow there (GET /api/session's "may", decided by the daemon's gate) and no others. Each one
// is a POST to the API's own route, as JSON from this origin (the server refuses any other:
// its CSRF rule); a reason is asked where the record keeps one; a rollback first shows what it
// would change (GET .../rollback/plan). The answer, or the refusal naming the permission, is
// shown under the buttons. Every text goes into the page through textContent, never as HTML.
// page.js calls window.gitopsActions.card(env, data) for each environment it draws.
"use strict";

window.gitopsActions = (function () {
  let may = null;  // {environment: [permission, ...]} once /api/session answered
  const cards = new Map();  // environment -> {root, bar, form, result, env, data}

  const { el } = window.gitopsDom;

  const short = (sha) => (sha ? String(sha).slice(0, 10) : "—");

  async function call(method, path, body) {
    const init = { method, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    return { ok: response.ok, status: response.status, data: data || {} };
  }

  // What an answer says, one line: the refusal's message, else what was done and by whom.
  function describe(action, label, answer) {
    const d = answer.data;
    if (!answer.ok) return `${label}: refused (${answer.status}): ${d.error || "no reason given"}`;
    const parts = [];
    if (action === "reconcile") parts.push(d.triggered ? "queued" : "already queued");
    if (action === "suspend" || action === "resume") parts.push(d.suspended ? "suspended" : "applies resumed");
    if (action === "rollback" && d.held_sha) parts.push("held at " + short(d.held_sha));
    if (action === "retry" && d.retrying) parts.push("retrying " + d.retrying.join(", "));
    if ((action === "promote" || action === "unquarantine") && d.sha) parts.push(short(d.sha));
    if (d.actor) parts.push("by " + d.actor);
    return `${label}: done` + (parts.length ? ` (${parts.join(", ")})` : "");
  }

  const path = (env, action) => `/api/environments/${encodeURIComponent(env)}/${action}`;

  // The actions in the order shown: [permission, label, when shown, the form it opens].
  const ACTIONS = [
    ["reconcile", "Reconcile now", () => true, null],
    ["suspend", "Suspend…", (env) => !env.suspended, "reason"],
    ["resume", "Resume…", (env) => env.suspended || env.held, "reason"],
    ["retry", "Retry failed hosts", () => true, null],
    ["rollback", "Roll back…", () => true, "rollback"],
    ["promote", "Promote…", (env, data) => Boolean(stageOf(data, env.name).promote_from), "promote"],
    ["unquarantine", "Unquarantine…", (env) => env.quarantined && env.quarantined.length > 0, "unquarantine"],
  ];

  function stageOf(data, name) {
    return ((data && data.pipeline) || []).find((s) => s.environment === name) || {};
  }

  function show(card, action, label, answer) {
    card.result.textContent = describe(action, label, answer);
    card.result.className = "action-result " + (answer.ok ? "ok" : "bad");
    card.result.hidden = false;
  }

  async function act(card, action, label, body) {
    card.result.hidden = true;
    let answer;
    try {
      answer = await call("POST", path(card.env.name, action), body || {});
    } catch (err) {
      answer = { ok: false, status: 0, data: { error: err.message } };
    }
    show(card, action, label, answer);
    if (answer.ok) closeForm(card);
  }

  function closeForm(card) {
    card.form.replaceChildren();
    card.form.hidden = true;
    card.open = null;
  }

  function reasonField(required) {
    return el("label", { class: "action-reason" }, required ? "Reason " : "Reason (optional) ",
      el("input", { name: "reason", type: "text", maxlength: 500, required: required || null,
        autocomplete: "off" }));
  }

  // A form: its fields, a confirm button; submitting it posts what fields() returns.
  function form(card, action, confirm, fields, body) {
    const node = el("form", { class: "action-form", "data-action": action },
      ...fields, " ", el("button", { type: "submit", class: "confirm", text: confirm }),
      " ", el("button", { type: "button", text: "Cancel", onclick: () => closeForm(card) }));
    node.addEventListener("submit", (e) => {
      e.preventDefault();
      act(card, action, confirm, body(node));
    });
    return node;
  }

  const reasonOf = (node) => node.querySelector("input[name=reason]").value.trim();

  function open(card, action, label, kind) {
    card.open = action;
    card.form.hidden = false;
    card.result.hidden = true;
    const env = card.env;
    if (kind === "reason") {
      card.form.replaceChildren(form(card, action, label.replace("…", ""), [reasonField(action === "suspend")],
        (node) => ({ reason: reasonOf(node) })));
    } else if (kind === "promote") {
      const stage = stageOf(card.data, env.name);
      const upstream = stageOf(card.data, stage.promote_from);
      card.form.replaceChildren(form(card, action, "Promote", [
        el("label", {}, `Revision (verified in ${stage.promote_from}) `,
          el("input", { name: "revision", type: "text", value: upstream.verified || "", required: true,
            pattern: "[0-9a-fA-F]{7,40}", autocomplete: "off" })), " ", reasonField(true)],
      (node) => ({ revision: node.querySelector("input[name=revision]").value.trim(), reason: reasonOf(node) })));
    } else if (kind === "unquarantine") {
      card.form.replaceChildren(form(card, action, "Unquarantine", [
        el("label", {}, "Revision ", el("select", { name: "revision" },
          env.quarantined.map((q) => el("option", { value: q.sha, text: `${short(q.sha)}: ${q.reason}` })))),
        " ", reasonField(true)],
      (node) => ({ revision: node.querySelector("select[name=revision]").value, reason: reasonOf(node) })));
    } else if (kind === "rollback") {
      openRollback(card);
    } else {
      closeForm(card);
      act(card, action, label);
    }
  }

  // A rollback: what it would change first (the daemon computes it from Git and the record),
  // then a reason; the revision held is the one shown.
  async function openRollback(card) {
    const name = card.env.name;
    card.form.replaceChildren(el("p", { class: "muted", text: "computing what the rollback would change…" }));
    let answer;
    try {
      answer = await call("GET", path(name, "rollback/plan"));
    } catch (err) {
      answer = { ok: false, status: 0, data: { error: err.message } };
    }
    if (card.open !== "rollback") return;  // cancelled meanwhile
    if (!answer.ok) {
      card.form.replaceChildren(el("p", { class: "action-result bad", "data-testid": "rollback-plan",
        text: `No rollback plan (${answer.status}): ${answer.data.error || "no reason given"}` }),
        el("button", { type: "button", text: "Close", onclick: () => closeForm(card) }));
      return;
    }
    const plan = answer.data;
    const to = plan.to;
    card.form.replaceChildren(planView(plan), form(card, "rollback", `Roll back to ${short(to.sha)}`,
      [reasonField(true)], (node) => ({ reason: reasonOf(node), revision: to.sha })));
  }

  function planView(plan) {
    const changed = plan.hosts.filter((h) => h.services.length);
    const same = plan.hosts.filter((h) => !h.services.length).map((h) => h.host);
    return el("div", { class: "rollback-plan", "data-testid": "rollback-plan" },
      el("p", {}, "From ", el("code", { class: "plan-from", text: short(plan.from && plan.from.sha) }), " ",
        el("span", { class: "muted", text: plan.from ? plan.from.message : "nothing applied" }),
        " back to ", el("code", { class: "plan-to", text: short(plan.to.sha) }), " ",
        el("span", { class: "muted", text: `${plan.to.message} (${plan.to.author})` })),
      plan.now_error ? el("p", { class: "note warn", text: "The applied revision does not load: " + plan.now_error }) : null,
      changed.length ? el("ul", { class: "plan-hosts" }, changed.map((h) =>
        el("li", { "data-host": h.host }, el("strong", { text: h.host }),
          h.declared !== "both" ? el("span", { class: "muted", text: h.declared === "then" ? " (declared only at the target)" : " (no longer declared at the target)" }) : null,
          el("ul", {}, h.services.map((s) => el("li", { "data-service": s.service },
            el("span", { text: `${s.service}: ${s.change}` }),
            s.files ? el("span", { class: "muted", text: " (its files differ)" }) : null,
            s.params.length ? el("ul", {}, s.params.map((p) => el("li", { "data-param": p.name },
              el("code", { text: p.name }), ": ", el("code", { text: p.now }), " → ", el("code", { text: p.then })))) : null))))))
        : el("p", { class: "muted", text: "No declared service differs between the two revisions." }),
      same.length ? el("p", { class: "muted", text: "Unchanged: " + same.join(", ") }) : null,
      plan.files ? el("details", {}, el("summary", { text: "Files that differ (git diff --stat)" }),
        el("pre", { text: plan.files })) : null);
  }

  function fill(card) {
    const allowed = new Set((may && may[card.env.name]) || []);
    const buttons = ACTIONS.filter(([action, , when]) => allowed.has(action) && when(card.env, card.data))
      .map(([action, label, , kind]) => el("button", { type: "button", "data-action": action, text: label,
        onclick: () => open(card, action, label, kind) }));
    card.bar.replaceChildren(...buttons);
    card.root.hidden = !buttons.length && card.result.hidden && card.form.hidden;
  }

  // The actions of one environment: the same node across redraws, so an open form or the
  // last answer stays while the page refreshes.
  function cardOf(env, data) {
    let card = cards.get(env.name);
    if (!card) {
      const bar = el("div", { class: "action-bar" });
      const formBox = el("div", { class: "action-box", hidden: true });
      const result = el("p", { class: "action-result", "data-testid": "action-result", role: "status", hidden: true });
      const root = el("section", { class: "actions", "data-testid": "actions", hidden: true }, bar, formBox, result);
      card = { root, bar, form: formBox, result, open: null };
      cards.set(env.name, card);
    }
    card.env = env;
    card.data = data;
    fill(card);
    return card.root;
  }

  fetch("/api/session", { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : {}))
    .then((person) => {
      may = person.may || {};
      for (const card of cards.values()) fill(card);
      document.documentElement.dataset.actions = "ready";  // what the caller may do is known
    })
    .catch(() => {});

  return { card: cardOf };
})();
