// The gitops status page: reads /api/page every few seconds and draws it.
// Every piece of data goes into the page through textContent or setAttribute, never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  let lastText = null;
  let lastOk = null;
  let selectedRun = null;
  let teams = [];  // the teams an action item may name (the answer's "teams")

  // -- small helpers -----------------------------------------------------------------------

  // dom.js: el() builds an element, add() appends children skipping null, undefined and
  // false (a bare node.append(null) shows the text "null"): every append goes through them.
  const { el, add } = window.gitopsDom;

  // Replaces node's children with these, skipping nulls as add() does.
  function put(node, ...children) {
    node.replaceChildren();
    return add(node, ...children);
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) add(node, child);
    return node;
  }

  function shortRev(ref) {
    if (!ref) return "—";
    const sha = String(ref).split(":").pop();
    return sha.slice(0, 10);
  }

  function firstLine(text) {
    return text ? String(text).split("\n")[0] : "";
  }

  function ago(iso) {
    if (!iso) return "—";
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return String(iso);
    const s = Math.max(0, Math.round((Date.now() - then) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "—";
    const s = Number(seconds);
    if (s < 1) return s.toFixed(2) + " s";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function time(iso) {
    return el("time", { datetime: iso || null, title: iso || null, text: ago(iso) });
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + (kind || ""), text: text });
  }

  function readyBadge(status) {
    const kind = status === "True" ? "ok" : status === "False" ? "bad" : "unknown";
    const text = status === "True" ? "Ready" : status === "False" ? "Not ready" : "Unknown";
    return badge(text, kind);
  }

  function resultBadge(result) {
    if (result === null || result === undefined) return badge("running", "running");
    return badge(result, result === "succeeded" ? "ok" : result === "interrupted" ? "warn" : "bad");
  }

  // A history entry's result; an operator's action (suspend, a rollback's hold) ran nothing.
  function runBadge(run) {
    return run.event ? badge("action", "action") : resultBadge(run.result);
  }

  // -- charts ------------------------------------------------------------------------------

  // Stacked bars: rows [{label, parts: {name: number}}], colors {name: css class}.
  function barChart(title, rows, classes) {
    const width = 300, height = 80, pad = 2;
    const max = Math.max(1, ...rows.map((r) => Object.values(r.parts).reduce((a, b) => a + b, 0)));
    const step = width / Math.max(1, rows.length);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    add(chart, svg("title", {}, document.createTextNode(title)));
    rows.forEach((row, i) => {
      let y = height;
      for (const [name, value] of Object.entries(row.parts)) {
        if (!value) continue;
        const h = (value / max) * (height - 4);
        y -= h;
        const bar = svg("rect", {
          x: (i * step + pad).toFixed(1), y: y.toFixed(1),
          width: Math.max(1, step - 2 * pad).toFixed(1), height: h.toFixed(1),
          class: classes[name] || "",
        });
        add(bar, svg("title", {}, document.createTextNode(`${row.label}: ${value} ${name}`)));
        add(chart, bar);
      }
    });
    add(chart, svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
    return chart;
  }

  function lineChart(title, points) {
    const width = 300, height = 80;
    const values = points.map((p) => p.value).filter((v) => typeof v === "number");
    const max = Math.max(...values, 0), min = Math.min(...values, 0);
    const span = max - min || 1;
    const step = points.length > 1 ? width / (points.length - 1) : width;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    add(chart, svg("title", {}, document.createTextNode(title)));
    const coords = [];
    points.forEach((p, i) => {
      if (typeof p.value !== "number") return;
      const x = points.length > 1 ? i * step : width / 2;
      const y = height - 4 - ((p.value - min) / span) * (height - 8);
      coords.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      const dot = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: "dot" });
      add(dot, svg("title", {}, document.createTextNode(`${p.label}: ${p.text}`)));
      add(chart, dot);
    });
    chart.prepend(svg("polyline", { points: coords.join(" "), class: "line" }));
    chart.prepend(svg("title", {}, document.createTextNode(title)));
    return chart;
  }

  // -- sections ----------------------------------------------------------------------------

  function conditionsList(conditions) {
    if (!conditions || !conditions.length) return el("p", { class: "muted", text: "no status yet" });
    return el("ul", { class: "conditions" }, conditions.map((c) =>
      el("li", {},
        badge(`${c.type}=${c.status}`, c.status === "True" ? (c.type === "Ready" ? "ok" : "warn")
          : c.type === "Ready" ? "bad" : "unknown"),
        " ", el("strong", { text: c.reason }), " ", el("span", { class: "message", text: c.message }))));
  }

  function environmentHeader(env) {
    const flags = [readyBadge(env.ready)];
    if (env.suspended) flags.push(badge("suspended", "warn"));
    if (env.held) flags.push(badge("held at " + shortRev(env.held.sha), "warn"));
    if (env.quarantined.length) flags.push(badge(env.quarantined.length + " quarantined", "bad"));
    const facts = el("dl", { class: "facts" },
      el("dt", { text: "desired" }), el("dd", { class: "rev", text: shortRev(env.desired) },
        el("span", { class: "muted", text: env.desired_from === "held" ? " (held)" : " (last attempted)" })),
      el("dt", { text: "applied" }), el("dd", { class: "rev", text: shortRev(env.applied) }),
      env.verified ? el("dt", { text: "verified" }) : null,
      env.verified ? el("dd", { class: "rev", text: shortRev(env.verified) }) : null,
      el("dt", { text: "updated" }), el("dd", {}, time(env.updated_at)),
      env.controller ? el("dt", { text: "controller" }) : null,
      env.controller ? el("dd", { text: env.controller }) : null);
    const notes = [];
    if (env.suspended) {
      notes.push(el("p", { class: "note warn" }, "Suspended by ", el("strong", { text: env.suspended_by }),
        " ", time(env.suspended_since), ": ", el("span", { text: env.suspended_reason })));
    }
    if (env.held) {
      notes.push(el("p", { class: "note warn" }, "Held at ", el("code", { text: shortRev(env.held.sha) }),
        " by ", el("strong", { text: env.held.by || "" }), " until resume or a commit newer than ",
        el("code", { text: shortRev(env.held.head) })));
    }
    for (const q of env.quarantined) {
      notes.push(el("p", { class: "note bad" }, "Quarantined ", el("code", { text: shortRev(q.sha) }),
        " ", time(q.since), ": ", el("span", { text: q.reason })));
    }
    if (env.awaiting_approval) {
      flags.push(badge("waiting for approval", "warn"));
      notes.push(approvalNote(env));
    }
    if (env.team) flags.push(badge("team " + env.team, "team"));
    return [el("div", { class: "env-title" }, el("h2", { text: env.name }), ...flags), facts,
      conditionsList(env.conditions), ...notes];
  }

  // The revision waiting for approval (require_approval), and an Approve button for those
  // the daemon says may approve it (an operator of the owning team, an admin).
  function approvalNote(env) {
    const sha = env.awaiting_approval;
    const path = `/api/environments/${encodeURIComponent(env.name)}`;
    const said = el("span", { class: "approval-answer", "aria-live": "polite" });
    const note = el("p", { class: "note warn", "data-testid": "approval" }, "Waiting for approval of ",
      el("code", { text: shortRev(sha) }), " ", said);
    fetch(`${path}/approval`, { credentials: "same-origin", cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null)).then((info) => {
        if (!info || !info.may_approve || info.waiting !== sha) return;
        const reason = el("input", { type: "text", placeholder: "reason (recorded)", "aria-label": "reason" });
        const button = el("button", { type: "button", text: "Approve" });
        button.addEventListener("click", async () => {
          const response = await fetch(`${path}/approve`, { method: "POST", credentials: "same-origin",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ revision: sha, reason: reason.value }) });
          const answer = await response.json().catch(() => ({}));
          put(said, response.ok ? `approved by ${answer.approved_by}; applying` : String(answer.error || response.status));
        });
        add(note, reason, " ", button);
      }).catch(() => {});
    return note;
  }

  function rolloutSection(env) {
    const r = env.rollout;
    if (!r) return null;
    const total = r.hosts_done.length + r.hosts_pending.length;
    const progress = el("progress", { max: Math.max(1, total), value: r.hosts_done.length });
    return el("section", { class: "rollout", "data-testid": "rollout" },
      el("h3", {}, `Rollout in progress: run #${r.run} (${r.kind})`),
      el("p", {}, "revision ", el("code", { text: shortRev(r.sha) }), " ",
        el("span", { text: firstLine(r.message) }), " · started ", time(r.started_at),
        " by ", el("span", { text: r.actor })),
      el("p", {}, progress, ` ${r.hosts_done.length}/${total} hosts done`),
      el("p", { class: "muted" }, "done: ", el("span", { text: r.hosts_done.join(", ") || "none yet" }),
        " · pending: ", el("span", { text: r.hosts_pending.join(", ") || "none" })));
  }

  function serviceCell(env, host, service) {
    const cell = host.services[service];
    const td = el("td", { class: "cell", "data-label": service, "data-service": service });
    const kept = (host.not_removed || []).find((k) => k.service === service);
    if (!cell && kept) {
      add(td, badge(notRemoved(kept), "warn"));
      return td;
    }
    if (!cell) {
      add(td, el("span", { class: "muted", text: "—" }));
      return td;
    }
    const counts = el("span", { class: "counts" },
      el("span", { class: "pass", text: "✓ " + cell.pass }),
      cell.fail ? el("span", { class: "fail", text: " ✗ " + cell.fail }) : null);
    if (!cell.failing.length) {
      td.classList.add("ok");
      add(td, counts);
      return td;
    }
    td.classList.add("bad");
    const hover = cell.failing.map((f) => `${f.check}: ${f.message}`).join("\n");
    const details = el("details", { "data-key": `${env.name}/${host.name}/${service}`, title: hover },
      el("summary", {}, counts),
      el("ul", { class: "failing" }, cell.failing.map((f) =>
        el("li", { "data-check": f.check },
          el("strong", { text: f.check }), el("span", { class: "muted", text: ` (${f.status})` }),
          el("pre", { text: f.message })))));
    add(td, details);
    return td;
  }

  function notRemoved(kept) {
    return kept.state === "left in place" ? "left in place (no remove.py)" : "not removed (prune is off)";
  }

  function hostsGrid(env) {
    if (!env.hosts.length) return el("p", { class: "muted", text: "no host has been reconciled yet" });
    const head = el("tr", {}, el("th", { text: "host" }), el("th", { text: "ready" }),
      el("th", { text: "applied / desired" }), env.services.map((s) => el("th", { text: s })));
    const rows = env.hosts.map((h) => {
      const sync = h.in_sync ? badge("in sync", "ok") : badge("behind", "warn");
      const message = (h.conditions.find((c) => c.type === "Ready") || {}).message || "";
      return el("tr", { "data-host": h.name },
        el("th", { scope: "row", class: "host", "data-label": "host", text: h.name }),
        el("td", { "data-label": "ready", title: message }, readyBadge(h.ready),
          h.check_error ? el("div", { class: "message", text: h.check_error }) : null,
          (h.not_removed || []).map((k) => el("div", { class: "message not-removed", "data-service": k.service,
            text: `${k.service}: ${notRemoved(k)}` }))),
        el("td", { class: "revs", "data-label": "applied / desired" },
          el("code", { class: "applied", text: shortRev(h.applied) }), " / ",
          el("code", { class: "desired", text: shortRev(env.desired) }), " ", sync),
        env.services.map((s) => serviceCell(env, h, s)));
    });
    return el("div", { class: "grid-wrap" },
      el("table", { class: "grid", "data-testid": "grid" }, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function dayLabels(first, last) {
    return el("div", { class: "chart-axis" }, el("span", { text: first }), el("span", { text: last }));
  }

  function tile(value, label, kind) {
    return el("div", { class: "tile" + (kind ? " " + kind : "") },
      el("div", { class: "tile-value", text: value }), el("div", { class: "tile-label", text: label }));
  }

  function deliverySection(env) {
    const section = el("section", { class: "delivery", "data-testid": "delivery" }, el("h3", { text: "Delivery" }));
    if (!env.delivery.available) {
      const rows = env.activity.map((d) => ({ label: d.day, parts: { succeeded: d.succeeded, failed: d.failed } }));
      const total = env.activity.reduce((a, d) => a + d.succeeded + d.failed, 0);
      add(section, el("p", { class: "muted", text: "Delivery metrics (DORA): " + env.delivery.reason }),
        el("div", { class: "cards" }, el("div", { class: "card" },
          el("h4", { text: "Apply runs per day (14 days)" }),
          barChart("Apply runs per day", rows, { succeeded: "bar-ok", failed: "bar-bad" }),
          dayLabels(rows.length ? rows[0].label : "", "today"),
          el("p", { class: "muted", text: `${total} runs · green succeeded, red failed` }))));
      return section;
    }
    const d = env.delivery.data;
    const days = Math.round(d.days);
    const rate = d.change_failure_rate === null ? "—" : (d.change_failure_rate * 100).toFixed(0) + " %";
    const lead = d.lead_time_median_s === null ? "—" : duration(d.lead_time_median_s);
    const tiles = el("div", { class: "tiles" },
      tile(String(d.deployments), `deployments in ${days} days`),
      tile(d.deployment_frequency_per_day.toFixed(2), "deployments per day"),
      tile(lead, "lead time, median" + (d.lead_time_p90_s === null ? "" : ` (p90 ${duration(d.lead_time_p90_s)})`)),
      tile(rate, `change failure rate (${d.failed_rollouts} of ${d.rollouts} rollouts)`,
        d.failed_rollouts ? "warn" : ""),
      tile(d.time_to_restore_median_s === null ? "—" : duration(d.time_to_restore_median_s),
        `time to restore, median (${d.restore_intervals_s.length} restored)`),
      d.unrestored_since ? tile(ago(d.unrestored_since), "failing since, not restored", "bad") : null,
      d.rollouts_pending ? tile(String(d.rollouts_pending), "rollouts not decided yet") : null,
      d.short_of_checks ? tile(String(d.short_of_checks), "rollouts short of a new check (not failed changes)") : null);
    const rows = d.series.map((x) => ({ label: x.day, parts: { deployments: x.deployments, "failed rollouts": x.failures } }));
    const cards = el("div", { class: "cards" },
      el("div", { class: "card" }, el("h4", { text: `Deployments and failed rollouts per day (${days} days)` }),
        barChart("Deployments and failed rollouts per day", rows, { deployments: "bar-ok", "failed rollouts": "bar-bad" }),
        dayLabels(rows.length ? rows[0].label : "", rows.length ? rows[rows.length - 1].label : "")),
      d.lead_times_s.length > 1 ? el("div", { class: "card" }, el("h4", { text: "Lead times, shortest to longest" }),
        lineChart("Lead times", d.lead_times_s.map((v, i) => ({ label: `#${i + 1}`, value: v / 3600, text: duration(v) }))),
        dayLabels(duration(d.lead_times_s[0]), duration(d.lead_times_s[d.lead_times_s.length - 1]))) : null);
    add(section, tiles, cfrNote(env, d, days), stagesTable(d), cards);
    return section;
  }

  // Lead time per stage of the promotion pipeline (commit -> staging -> production).
  function stagesTable(d) {
    if (!d.stages || !d.stages.length) return null;
    return el("div", { class: "card", "data-testid": "stages" }, el("h4", { text: "Lead time per stage" }),
      table(["stage", "median", "p90", "revisions"], d.stages.map((st) => [
        st.stage, duration(st.median_s), duration(st.p90_s), String(st.count)])));
  }

  // Which revision is where, and what waits for which environment (promote_from).
  function pipelineSection(stages) {
    return el("section", { class: "pipeline", "data-testid": "pipeline" }, el("h2", { text: "Pipeline" }),
      table(["environment", "promotes from", "applied", "verified on every host", "waiting"],
        stages.map((st) => [st.environment, st.promote_from || "—", st.applied ? st.applied.slice(0, 10) : "—",
          st.verified ? st.verified.slice(0, 10) : "—", st.waiting || "—"])));
  }

  // Why an open failure can sit beside a rate that does not count it (gitops/delivery.py).
  function cfrNote(env, d, days) {
    const open = env.incidents && env.incidents.available ? env.incidents.open.length : 0;
    if (!open && !d.unrestored_since && !d.rollouts_pending && !d.short_of_checks) return null;
    return el("p", { class: "muted", "data-testid": "cfr-note", text:
      `The change failure rate counts rollouts: the first attempts of a commit not yet verified here, ` +
      `first tried in the last ${days} days, once decided (verified, or failed before it was verified, ` +
      `or rolled back). A failed re-run of a commit already verified (reconcile --once, retry) opens ` +
      `an incident and counts in time to restore, not in the rate; a rollout that only errored, ` +
      `was interrupted or is still running counts once it is decided. A rollout whose checks failed ` +
      `while nothing changed on the hosts (a commit that made a check stricter) found the hosts short ` +
      `of the new check: it is counted apart, not as a failed change, and not in time to restore.` });
  }

  function incidentItem(incident) {
    const commit = incident.commit || {};
    const open = incident.status === "open";
    const summary = el("summary", {}, badge(open ? "open" : "closed", open ? "bad" : "ok"), " ",
      el("strong", { text: incident.cause }), " ", el("code", { text: shortRev(commit.sha) }), " ",
      el("span", { text: firstLine(commit.message) }), " · ",
      open ? el("span", {}, "since ", time(incident.opened_at))
        : el("span", { text: `restored after ${duration(incident.duration_s)}` }));
    const failures = (incident.failures || []).map((f) => el("li", {},
      el("strong", { text: f.host }), el("span", { class: "muted", text: ` run #${f.run_id}` }),
      f.error ? el("pre", { class: "error", text: f.error }) : null,
      el("ul", {}, (f.checks || []).map((c) => el("li", {},
        el("span", { text: `${c.service}/${c.check} (${c.status}): ` }), el("span", { class: "message", text: c.message }))),
      (f.ops || []).map((o) => el("li", {}, el("span", { text: o.name }), o.stderr ? el("pre", { text: o.stderr }) : null)))));
    const timeline = (incident.timeline || []).map((e) => el("li", {},
      el("time", { datetime: e.at, title: e.at, text: e.at.replace("T", " ").slice(0, 19) }), " ",
      el("span", { text: e.event })));
    return el("li", { "data-incident": incident.id }, el("details", { "data-key": `incident/${incident.id}` }, summary,
      el("dl", { class: "facts" },
        el("dt", { text: "commit" }), el("dd", {}, el("code", { text: commit.sha || "—" })),
        el("dt", { text: "author" }), el("dd", { text: commit.author || "—" }),
        el("dt", { text: "opened" }), el("dd", { text: incident.opened_at }),
        el("dt", { text: "closed" }), el("dd", { text: incident.closed_at || "open" }),
        incident.restored_by ? el("dt", { text: "restored by" }) : null,
        incident.restored_by ? el("dd", { text: `${incident.restored_by.kind} run #${incident.restored_by.run_id} of ${shortRev(incident.restored_by.sha)}` }) : null,
        el("dt", { text: "rollbacks" }), el("dd", { text: String((incident.rollbacks || []).length) })),
      failures.length ? el("h4", { text: "What failed" }) : null,
      failures.length ? el("ul", { class: "failures" }, failures) : null,
      el("h4", { text: "Timeline" }), el("ol", { class: "timeline" }, timeline),
      postmortemBlock(incident)));
  }

  // -- post-mortems and who did what: postmortem.js draws them (and the controls to write) --

  function postmortemBlock(incident) {
    return window.gitopsPostmortem ? window.gitopsPostmortem.block(incident, teams) : null;
  }

  // -- teams and environments side by side -------------------------------------------------

  const KEYS = [
    ["deployment_frequency_per_day", "Deployment frequency", (v) => v.toFixed(2) + "/day", (v) => v],
    ["lead_time_median_s", "Lead time (median)", duration, (v) => v / 3600],
    ["change_failure_rate", "Change failure rate", (v) => (v * 100).toFixed(0) + " %", (v) => v * 100],
    ["time_to_restore_median_s", "Time to restore (median)", duration, (v) => v / 3600],
  ];

  function trendText(key, t, show) {
    if (!t || t.direction === null) return el("span", { class: "trend none", "data-trend": "none",
      text: t && t.previous !== null ? `none now, ${show(t.previous)} before` : "no figure to compare" });
    if (t.direction === "same") return el("span", { class: "trend same", "data-trend": "same", text: "= same as before" });
    const arrow = t.direction === "up" ? "↑" : "↓";
    return el("span", { class: "trend " + (t.better ? "better" : "worse"), "data-trend": t.direction,
      text: `${arrow} from ${show(t.previous)} (${t.better ? "better" : "worse"})` });
  }

  function groupCard(g, kind) {
    const rows = KEYS.map(([key, label, show]) => el("div", { class: "key-row", "data-key": key },
      el("span", { class: "key-label", text: label }),
      el("strong", { class: "key-value", text: g[key] === null ? "—" : show(g[key]) }),
      trendText(key, g.trends[key], show)));
    return el("div", { class: "card team-card", ["data-" + kind]: g.name },
      el("h4", { text: g.name }),
      kind === "team" ? el("p", { class: "muted", text: "environments: " + g.environments.join(", ") })
        : el("p", { class: "muted", text: "team: " + (g.team || "none") }),
      ...rows);
  }

  // One chart per key: a line per team over the window's buckets (SVG drawn here).
  function keyChart(key, label, scale, groups) {
    const width = 300, height = 90;
    const buckets = groups.length ? groups[0].series.length : 0;
    const values = groups.flatMap((g) => g.series.map((p) => p[key])).filter((v) => typeof v === "number").map(scale);
    const max = Math.max(...values, 0) || 1;
    const step = buckets > 1 ? width / (buckets - 1) : width;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "data-chart": key });
    add(chart, svg("title", {}, document.createTextNode(label + ", one line per team")));
    groups.forEach((g, n) => {
      let segment = [];
      const flush = () => {
        if (segment.length > 1) add(chart, svg("polyline", { points: segment.join(" "), class: "series s" + (n % 6) }));
        segment = [];
      };
      g.series.forEach((p, i) => {
        const v = p[key];
        if (typeof v !== "number") { flush(); return; }
        const x = buckets > 1 ? i * step : width / 2;
        const y = height - 4 - (scale(v) / max) * (height - 8);
        segment.push(`${x.toFixed(1)},${y.toFixed(1)}`);
        const dot = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: "dot s" + (n % 6) });
        add(dot, svg("title", {}, document.createTextNode(`${g.name}, from ${p.start.slice(0, 10)}: ${v}`)));
        add(chart, dot);
      });
      flush();
    });
    add(chart, svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
    return chart;
  }

  function comparisonSection(data) {
    const c = data.comparison;
    if (!c || !c.available || !c.teams_declared) return null;  // no teams: nothing to compare
    const legend = el("p", { class: "legend" }, c.teams.map((g, n) =>
      el("span", { class: "legend-item" }, el("span", { class: "swatch s" + (n % 6) }), g.name)));
    const first = c.teams.length && c.teams[0].series.length ? c.teams[0].series[0].start.slice(0, 10) : "";
    const charts = KEYS.map(([key, label, , scale]) => el("div", { class: "card" },
      el("h4", { text: label + (key.endsWith("_s") ? " (hours)" : key === "change_failure_rate" ? " (%)" : "") }),
      keyChart(key, label, scale, c.teams), dayLabels(first, "now")));
    const bands = el("details", { class: "bands", "data-key": "bands", "data-testid": "bands" },
      el("summary", { text: "What good looks like (DORA performance bands, a reference, not a verdict)" }),
      el("dl", { class: "facts" }, KEYS.flatMap(([key, label]) => [el("dt", { text: label }),
        el("dd", { text: (c.bands[key] || []).map(([band, text]) => `${band}: ${text}`).join("; ") })])),
      el("p", { class: "muted", text: "From the DORA \"Accelerate State of DevOps\" report (2021). Teams differ in what they " +
        "run and how often it changes; compare a team with its own trend first." }));
    return el("section", { class: "comparison", "data-testid": "comparison" },
      el("h2", { text: `Teams side by side (last ${c.days} days, against the ${c.days} before)` }),
      el("div", { class: "cards teams" }, c.teams.map((g) => groupCard(g, "team"))),
      legend, el("div", { class: "cards" }, charts),
      el("h3", { text: "Environments side by side" }),
      el("div", { class: "cards teams" }, c.environments.map((g) => groupCard(g, "environment"))),
      bands);
  }

  function incidentsSection(env) {
    const section = el("section", { class: "incidents", "data-testid": "incidents" }, el("h3", { text: "Incidents" }));
    const inc = env.incidents;
    if (!inc.available) {
      add(section, el("p", { class: "muted", text: "Incident timelines: " + inc.reason }));
      return section;
    }
    const more = inc.closed_total > inc.closed.length ? `, newest ${inc.closed.length} shown` : "";
    add(section, el("h4", { text: `Open (${inc.open.length})` }),
      inc.open.length ? el("ul", { class: "incident-list" }, inc.open.map(incidentItem)) : el("p", { class: "muted", text: "none" }),
      el("h4", { text: `Closed (${inc.closed_total}${more})` }),
      inc.closed.length ? el("ul", { class: "incident-list" }, inc.closed.map(incidentItem)) : el("p", { class: "muted", text: "none" }));
    return section;
  }

  function historySection(env) {
    const rows = env.history.map((r) => el("tr", {
      class: "run-row" + (selectedRun === r.id ? " selected" : ""), "data-run": r.id, tabindex: 0,
      onclick: () => openRun(r.id),
      onkeydown: (e) => { if (e.key === "Enter") openRun(r.id); },
    },
    el("td", { "data-label": "run", text: "#" + r.id }),
    el("td", { "data-label": "kind", text: r.kind }),
    el("td", { "data-label": "result" }, runBadge(r)),
    el("td", { "data-label": "revision" }, el("code", { text: shortRev(r.sha) })),
    el("td", { "data-label": "message", class: "message", text: firstLine(r.message || r.reason || r.error) }),
    el("td", { "data-label": "by", text: r.actor }),
    el("td", { "data-label": "started" }, time(r.started_at)),
    el("td", { "data-label": "took", text: r.event ? "" : duration(r.duration_s) })));
    return el("section", { class: "history", "data-testid": "history" },
      el("h3", { text: `History (last ${env.history.length})` }),
      el("div", { class: "grid-wrap" }, el("table", { class: "runs" },
        el("thead", {}, el("tr", {}, ["run", "kind", "result", "revision", "message", "by", "started", "took"].map((t) => el("th", { text: t })))),
        el("tbody", {}, rows))));
  }

  function environmentSection(env, data) {
    const actions = window.gitopsActions ? window.gitopsActions.card(env, data) : null;  // actions.js
    return el("section", { class: "environment", "data-environment": env.name },
      ...environmentHeader(env), actions, rolloutSection(env),
      el("h3", { text: "Hosts × services (latest checks)" }), hostsGrid(env),
      deliverySection(env), incidentsSection(env), historySection(env));
  }

  // -- one run -----------------------------------------------------------------------------

  function table(columns, rows) {
    return el("div", { class: "grid-wrap" }, el("table", { class: "detail" },
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v, i) => el("td", { "data-label": columns[i] },
        v instanceof Node ? v : el("span", { text: v === null || v === undefined ? "—" : String(v) }))))))));
  }

  function renderRun(run) {
    const body = document.getElementById("run-body");
    document.getElementById("run-title").textContent = `Run #${run.id}: ${run.kind}`;
    const checks = [...run.checks].sort((a, b) => (a.status === "pass") - (b.status === "pass"));
    const ops = run.operations.filter((o) => o.status !== "unchanged");
    put(body,
      el("dl", { class: "facts" },
        el("dt", { text: "environment" }), el("dd", { text: run.environment }),
        el("dt", { text: "result" }), el("dd", {}, runBadge(run)),
        el("dt", { text: "revision" }), el("dd", {}, el("code", { text: run.sha || "—" })),
        el("dt", { text: "commit" }), el("dd", { class: "message", text: run.message || "—" }),
        el("dt", { text: "author" }), el("dd", { text: run.author || "—" }),
        el("dt", { text: "by" }), el("dd", { text: run.actor }),
        el("dt", { text: "reason" }), el("dd", { text: run.reason || "—" }),
        el("dt", { text: "started" }), el("dd", {}, time(run.started_at)),
        el("dt", { text: "took" }), el("dd", { text: duration(run.duration_s) }),
        el("dt", { text: "changes" }), el("dd", { text: run.changed }),
        el("dt", { text: "failed hosts" }), el("dd", { text: run.failed_hosts.join(", ") || "none" })),
      run.error ? el("pre", { class: "error", text: run.error }) : null,
      el("h3", { text: "Hosts" }),
      run.hosts.length ? table(["host", "apply", "changed", "verify", "took", "error"], run.hosts.map((h) =>
        [h.host, h.apply_status, h.changed, h.verify_status, duration(h.duration_s), h.error])) : el("p", { class: "muted", text: "none" }),
      el("h3", { text: `Checks (${checks.length})` }),
      checks.length ? table(["host", "service", "check", "status", "message"], checks.map((c) =>
        [c.host, c.service, c.check, badge(c.status, c.status === "pass" ? "ok" : "bad"), c.message])) : el("p", { class: "muted", text: "none" }),
      el("h3", { text: `Operations that changed or failed (${ops.length} of ${run.operations.length})` }),
      ops.length ? table(["host", "service", "operation", "status", "output"], ops.map((o) =>
        [o.host, o.service, o.name, o.status, o.stderr ? el("pre", { text: o.stderr }) : ""])) : el("p", { class: "muted", text: "none" }),
      el("h3", { text: "Stages" }),
      el("p", { text: Object.entries(run.stage_s || {}).map(([k, v]) => `${k} ${duration(v)}`).join(" · ") || "—" }));
  }

  async function openRun(id) {
    selectedRun = id;
    const panel = document.getElementById("run");
    panel.hidden = false;
    document.getElementById("run-title").textContent = `Run #${id}`;
    put(document.getElementById("run-body"), el("p", { class: "muted", text: "loading…" }));
    for (const row of document.querySelectorAll(".run-row")) {
      row.classList.toggle("selected", Number(row.dataset.run) === id);
    }
    try {
      const response = await fetch(`/api/page/runs/${encodeURIComponent(id)}`, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const run = await response.json();
      if (selectedRun === id) renderRun(run);
    } catch (err) {
      put(document.getElementById("run-body"), el("p", { class: "error", text: `could not load run #${id}: ${err.message}` }));
    }
  }

  function closeRun() {
    selectedRun = null;
    document.getElementById("run").hidden = true;
    for (const row of document.querySelectorAll(".run-row.selected")) row.classList.remove("selected");
  }

  // -- refresh -----------------------------------------------------------------------------

  function previewsSection(previews) {
    if (!previews || !previews.length) return null;
    return el("section", { class: "previews", "data-testid": "previews" },
      el("h2", { text: "Previews" }),
      table(["#", "environment", "branch", "request", "result", "mode", "summary", "report"], previews.map((p) => [
        String(p.id), p.environment, p.branch, p.number ? `${p.provider} #${p.number}` : p.provider,
        p.result ? badge(p.result, p.result === "success" ? "ok" : "bad") : badge(p.state, "running"),
        p.mode, p.summary, el("a", { href: `/previews/${p.id}`, text: "report" })])));
  }

  function render(data) {
    const app = document.getElementById("app");
    const open = new Set([...app.querySelectorAll("details[open]")].map((d) => d.dataset.key));
    const typing = kept(document.activeElement);  // before the sections take the actions' nodes
    teams = data.teams || [];
    const sections = data.environments.map((env) => environmentSection(env, data));
    if (!sections.length) sections.push(el("p", { class: "muted", text: "No environment has been reconciled yet." }));
    if (data.pipeline && data.pipeline.length) sections.unshift(pipelineSection(data.pipeline));
    const comparison = comparisonSection(data);
    if (comparison) sections.push(comparison);  // after the environments' health
    const previews = previewsSection(data.previews);
    if (previews) sections.push(previews);
    put(app, ...sections);
    for (const d of app.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
    if (typing) typing();
  }

  // A field of an action's form (actions.js keeps its node across redraws) that has the
  // focus: the redraw moves it, which drops the focus; the function returned gives it back,
  // with the caret where it was.
  function kept(node) {
    if (!node || !node.closest || !node.closest("section.actions")) return null;
    const start = typeof node.selectionStart === "number" ? node.selectionStart : null;
    const end = node.selectionEnd;
    return () => {
      if (!node.isConnected || document.activeElement === node) return;
      node.focus();
      if (start !== null) node.setSelectionRange(start, end);
    };
  }

  async function refresh() {
    const updated = document.getElementById("updated");
    try {
      const response = await fetch("/api/page", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {  // the session expired: the page shows the sign-in form
        window.location.reload();
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const text = await response.text();
      if (text !== lastText) {
        render(JSON.parse(text));
        lastText = text;
      }
      lastOk = new Date();
      updated.textContent = "updated " + lastOk.toLocaleTimeString();
      updated.classList.remove("stale");
    } catch (err) {
      updated.textContent = `cannot read the status (${err.message})` + (lastOk ? `; last update ${lastOk.toLocaleTimeString()}` : "");
      updated.classList.add("stale");
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  // Who is signed in (a session opened by the API token or the OpenID provider), and sign-out.
  async function showPerson() {
    const who = document.getElementById("who");
    const response = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;  // loopback without a session: nobody to show
    const person = await response.json();
    if (!person.session) {  // a loopback client or a script's token: nothing to sign out of
      put(who, el("span", { id: "who-name", text: person.name }));
      return;
    }
    const out = el("button", { type: "button", id: "signout", text: "Sign out" });
    out.addEventListener("click", async () => {
      await fetch("/api/session", { method: "DELETE", credentials: "same-origin",
                                    headers: { "Content-Type": "application/json" }, body: "{}" });
      window.location.reload();
    });
    put(who, el("span", { id: "who-name", text: `signed in as ${person.name}` }), " ", out);
  }

  document.getElementById("run-close").addEventListener("click", closeRun);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeRun(); });
  refresh();
  showPerson().catch(() => {});
})();
