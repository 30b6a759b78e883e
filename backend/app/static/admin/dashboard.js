/**
 * The admin dashboard: signs in through /api/auth/login (the token stays in this module's client, in
 * memory), then polls the admin monitoring API and draws each panel. Every call goes through
 * oriel-client.js, so writes carry an Idempotency-Key and failures arrive as OrielError; a panel whose
 * call failed shows the error's message, code and request ID instead of going blank.
 */
import { createClient, OrielError } from "/static/js/oriel-client.js";
import { el, clear, code, fmtTime, timeEl, lineChart, gauge } from "/static/admin/draw.js";

const REFRESH_MS = 5000;
const MON = "/admin/api/monitoring";
const api = createClient({ baseUrl: "", maxAttempts: 2, deadlineMs: 8000, timeoutMs: 8000 });
const $ = (sel) => document.querySelector(sel);

const state = { window: "1h", requestId: "", timer: null, signedIn: false, current: null, inboxKind: "", discarding: null };

/** Show a failure in a panel: message, code, request ID; never a blank panel. */
function showError(panel, error) {
  const box = panel.querySelector(".panel-error");
  clear(box);
  const err = error instanceof OrielError ? error : null;
  box.append(
    el("strong", {}, err ? err.message : String(error && error.message ? error.message : error)),
    err ? el("span", {}, " (", code(err.code), err.status ? `, HTTP ${err.status}` : "", ")") : "",
    err && err.requestId ? el("div", {}, "Request ID: ", el("code", { class: "request-id" }, err.requestId)) : "",
  );
  box.hidden = false;
  if (err && err.status === 401 && state.signedIn) signOut("Your session ended; sign in again.");
}

const STICKY_MS = 20000;

/** Hide a panel's error, unless it is an admin action's failure shown less than STICKY_MS ago. */
function hideError(panel, { force = false } = {}) {
  const box = panel.querySelector(".panel-error");
  if (!force && Date.now() - Number(box.dataset.shownAt || 0) < STICKY_MS) return;
  box.hidden = true;
}

/** Run one panel's load: its error box shows the failure; other panels are not affected. */
async function load(panelId, loader) {
  const panel = document.getElementById(panelId);
  try {
    await loader();
    hideError(panel);
  } catch (error) {
    showError(panel, error);
  }
}

function toast(text) {
  const box = $("#toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

/** A write from a button: the panel shows its failure, the dashboard refreshes on success. */
async function act(panelId, label, call) {
  const panel = document.getElementById(panelId);
  try {
    const { data } = await call();
    hideError(panel, { force: true });
    toast(data && data.message ? data.message : `${label}: done`);
    await refresh();
    return data;
  } catch (error) {
    showError(panel, error);
    // A failed action stays on screen through the next polls (they would otherwise hide it).
    panel.querySelector(".panel-error").dataset.shownAt = String(Date.now());
    return null;
  }
}

const stateClass = (s) =>
  ({ ok: "state-ok", closed: "state-ok", degraded: "state-warn", half_open: "state-warn", not_configured: "state-off",
    disabled: "state-off", open: "state-bad", forced_open: "state-bad", error: "state-bad", timeout: "state-bad",
    down: "state-bad", unhealthy: "state-bad", misconfigured: "state-bad" })[s] || "state-unknown";

function emptyRow(tbody, cols, text) {
  tbody.append(el("tr", {}, el("td", { colspan: String(cols), class: "empty" }, text)));
}

// -- panels ---------------------------------------------------------------------------------------

/** A service is red when its probe fails, it refuses our credentials or its breaker is open; amber when degraded
 * or half-open. */
function serviceState(svc) {
  const probe = svc.probe ? svc.probe.status : "unknown";
  const breaker = svc.breaker ? svc.breaker.state : null;
  if (["error", "timeout", "down", "misconfigured"].includes(probe) || ["open", "forced_open"].includes(breaker)) {
    return "bad";
  }
  if (probe === "degraded" || breaker === "half_open") return "warn";
  if (probe === "not_configured") return "off";
  return probe === "ok" ? "ok" : "unknown";
}

async function loadServices() {
  const { data } = await api.get(`${MON}/health/services`);
  const tiles = $("#services");
  clear(tiles);
  let worst = "ok";
  for (const [name, svc] of Object.entries(data.services).sort()) {
    const s = serviceState(svc);
    if (s === "bad") worst = "bad";
    else if (s === "warn" && worst !== "bad") worst = "warn";
    const probe = svc.probe || {};
    tiles.append(
      el("div", { class: `tile state-${s}`, "data-service": name, "data-state": s },
        el("h3", {}, name),
        el("div", { class: "state" }, probe.status || "unknown"),
        el("div", { class: "meta" }, probe.latency_ms != null ? `${probe.latency_ms} ms` : "no latency"),
        el("div", { class: "meta" }, svc.breaker ? `breaker ${svc.breaker.state}` : "no breaker"),
        probe.detail || probe.reason ? el("div", { class: "meta muted" }, probe.reason || probe.detail) : "",
      ),
    );
  }
  const overall = $("#overall");
  const label = data.status === "ok" && worst === "ok" ? "ok" : worst === "bad" ? "unhealthy" : data.status;
  overall.textContent = label;
  overall.className = `pill ${stateClass(label)}`;
  overall.dataset.state = label;
  const q = data.queue || {};
  const depth = q.depth || {};
  $("#queue-line").textContent =
    `Queue: ${depth.ready ?? 0} ready, ${depth.scheduled ?? 0} scheduled, ${depth.running ?? 0} running; ` +
    `${q.workers_alive ?? 0} worker(s) alive; ${q.dead_letters ?? 0} dead letter(s). Logs: ${data.logs ? data.logs.state : "?"}.`;
}

/** The degradation mode (open breakers and what users should expect) and the admin's notifications. */
async function loadImpact() {
  const [{ data: mode }, { data: notes }] = await Promise.all([
    api.get("/api/errors/degradation-mode"),
    api.get("/api/errors/notifications?limit=10"),
  ]);
  const level = $("#degradation-level");
  level.textContent = mode.level;
  level.className = `pill ${mode.level === "ok" ? "state-ok" : mode.level === "down" ? "state-bad" : "state-warn"}`;
  level.dataset.level = mode.level;
  const list = $("#degradation");
  clear(list);
  if (!mode.services.length) list.append(el("li", { class: "empty" }, "Every feature works normally."));
  for (const s of mode.services) {
    const state = s.state === "not_configured" ? "not set up" : s.state;
    list.append(el("li", { "data-degraded": s.service, "data-state": s.state },
      el("b", {}, `${s.service} (${state})`), `: ${s.features.join(", ")}. ${s.user_impact}`,
      s.fallback_active ? el("span", { class: "muted" }, ` Fallback: ${s.fallback}.`) : ""));
  }
  const box = $("#notifications");
  clear(box);
  if (!notes.notifications.length) box.append(el("li", { class: "empty" }, "No notifications."));
  for (const n of notes.notifications) {
    box.append(el("li", {},
      el("span", { class: `pill ${n.severity === "CRITICAL" || n.severity === "HIGH" ? "state-bad" : "state-warn"}` }, n.severity),
      ` ${n.title} `, el("span", { class: "muted" }, n.action || "")));
  }
}

async function loadTraffic() {
  const [{ data: stats }, { data: series }] = await Promise.all([
    api.get(`${MON}/errors/stats?top=10`),
    api.get(`/admin/api/dashboard/timeseries?window=${state.window}`),
  ]);
  const rates = $("#rates");
  clear(rates);
  for (const name of ["5m", "1h", "24h"]) {
    const r = stats.rates[name];
    if (!r) continue;
    // Server faults first: an hour of ordinary 404s and expired tokens is not an outage.
    const pct = (ratio) => (ratio == null ? "n/a" : `${(ratio * 100).toFixed(2)}%`);
    rates.append(el("span", { "data-rate": name }, `${name}: `,
      el("b", { class: "server-rate" }, `${pct(r.server_error_ratio)} 5xx`), ` (${r.server_errors}) · `,
      el("span", { class: "client-rate" }, `${pct(r.client_error_ratio)} 4xx`), ` (${r.client_errors}) of ${r.requests} requests`));
  }
  const chart = $("#chart");
  const width = chart.clientWidth;
  clear(chart);
  chart.append(lineChart(series.points, series.bucket_minutes, width || 600));
  renderGroups(stats.top_groups || []);
}

function renderGroups(groups) {
  const tbody = $("#groups tbody");
  clear(tbody);
  if (!groups.length) emptyRow(tbody, 5, "No errors in the last 24 hours.");
  for (const g of groups) {
    const triage = (status) => () =>
      act("groups-panel", `Group ${g.id} ${status}`, () => api.post(`/api/errors/acknowledge/${g.id}`, { status }));
    tbody.append(
      el("tr", { "data-group": String(g.id) },
        el("td", {}, code(g.code)),
        el("td", {}, g.title || g.exc_type || "", g.regressed ? el("span", { class: "pill state-bad" }, "regressed") : ""),
        el("td", {}, String(g.count_24h ?? g.count)),
        el("td", { class: "status" }, g.status),
        el("td", { class: "actions" },
          g.status !== "acknowledged" ? el("button", { type: "button", onclick: triage("acknowledged") }, "Acknowledge") : "",
          g.status !== "resolved" ? el("button", { type: "button", onclick: triage("resolved") }, "Resolve") : "",
        ),
      ),
    );
  }
}

async function loadBudgets() {
  const { data } = await api.get(`${MON}/slo`);
  const box = $("#budgets");
  clear(box);
  if (!data.budgets.length) box.append(el("p", { class: "empty" }, "No SLOs configured."));
  for (const b of data.budgets) {
    const firing = (b.burn || []).some((w) => w.firing);
    const notes = [`${(b.objective * 100).toFixed(2)}% SLO`];
    if (b.exhausted) notes.push(`exhausted: ${b.budget_consumed.toFixed(1)}× the budget spent`);
    if (b.not_configured) notes.push(`${b.not_configured} refused: not configured`);
    box.append(gauge(b.group, b.budget_remaining, notes.join(" · "), firing, b.budget_consumed));
  }
}

async function loadRecent() {
  const q = state.requestId ? `&request_id=${encodeURIComponent(state.requestId)}` : "";
  const { data } = await api.get(`${MON}/logs/recent-errors?limit=25${q}`);
  const tbody = $("#recent tbody");
  clear(tbody);
  if (!data.events.length) emptyRow(tbody, 6, state.requestId ? "No errors with this request ID." : "No recent errors.");
  for (const e of data.events) {
    tbody.append(
      el("tr", {},
        el("td", { class: "when", "data-at": e.occurred_at || "" }, timeEl(e.occurred_at)),
        el("td", {}, code(e.code)),
        el("td", {}, String(e.status_code ?? "")),
        el("td", { class: "mono" }, `${e.method || ""} ${e.path || ""}`),
        el("td", {}, e.message || ""),
        el("td", { class: "mono" }, e.request_id || ""),
      ),
    );
  }
}

/** The request IDs the API accepts; anything else is refused here, without a call. */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The searched request ID traced: the request, the jobs it started, their error groups and its log lines. */
async function loadTrace() {
  const panel = $("#trace-panel");
  const rid = state.requestId;
  panel.hidden = !rid || !REQUEST_ID.test(rid);
  if (panel.hidden) return;
  $("#trace-id").textContent = rid;
  for (const id of ["#trace-jobs tbody", "#trace-groups tbody", "#trace-logs tbody"]) clear($(id));
  $("#trace-request").textContent = "";
  $("#trace-truncated").hidden = true;
  const { data } = await api.get(`${MON}/requests/${encodeURIComponent(rid)}`);
  const req = data.request;
  $("#trace-request").textContent = req
    ? `${req.method || ""} ${req.path || ""} → ${req.status ?? "?"}${req.duration_ms != null ? ` in ${req.duration_ms} ms` : ""}` +
      ` at ${fmtTime(req.at)}${req.user_id != null ? ` by user ${req.user_id}` : ""}`
    : "The request's own line was not found; what it started is below.";
  const jobs = $("#trace-jobs tbody");
  if (!data.jobs.length) emptyRow(jobs, 5, "This request started no job.");
  for (const j of data.jobs) {
    const last = j.last_error ? `${j.last_error.code}: ${j.last_error.message || ""}` : "";
    jobs.append(
      el("tr", { "data-job": String(j.id), "data-status": j.status },
        el("td", {}, `#${j.id}`),
        el("td", { class: "mono" }, j.kind),
        el("td", {}, el("span", { class: `pill ${j.status === "succeeded" ? "state-ok" : ["dead", "failed"].includes(j.status) ? "state-bad" : "state-warn"}` }, j.status)),
        el("td", {}, `${j.attempts}/${j.max_attempts}`),
        el("td", {}, last),
      ),
    );
  }
  const groups = $("#trace-groups tbody");
  if (!data.error_groups.length) emptyRow(groups, 4, "No error was recorded under this request ID.");
  for (const g of data.error_groups) {
    const events = data.error_events.filter((e) => e.group_id === g.id).length;
    groups.append(
      el("tr", { "data-trace-group": String(g.id) },
        el("td", {}, `#${g.id}`),
        el("td", { class: "mono" }, g.code),
        el("td", {}, g.title),
        el("td", {}, String(events)),
      ),
    );
  }
  const logs = $("#trace-logs tbody");
  if (!data.logs.lines.length) emptyRow(logs, 4, "No log line with this request ID was read.");
  for (const line of data.logs.lines) {
    logs.append(
      el("tr", { "data-log": line.file },
        el("td", {}, fmtTime(line.timestamp)),
        el("td", { class: "mono" }, line.file),
        el("td", {}, line.level || ""),
        el("td", {}, line.message || ""),
      ),
    );
  }
  if (data.logs.truncated) {
    const box = $("#trace-truncated");
    box.textContent = `Showing ${data.logs.lines.length} of ${data.logs.matched} matching lines; ` +
      `only the last ${Math.round(data.logs.max_bytes_per_file / 1024)} KiB of each log file were read.`;
    box.hidden = false;
  }
}

async function loadBreakers() {
  const { data } = await api.get(`${MON}/circuit-breakers`);
  const tbody = $("#breakers tbody");
  clear(tbody);
  for (const [name, b] of Object.entries(data.breakers).sort()) {
    const call = (path, label) => () =>
      act("breakers-panel", `${name}: ${label}`, () => api.post(`${MON}/circuit-breakers/${path}`, {}));
    const svc = encodeURIComponent(name);
    tbody.append(
      el("tr", { "data-breaker": name, "data-state": b.state },
        el("td", {}, name),
        el("td", {}, el("span", { class: `pill ${stateClass(b.state)}` }, b.state)),
        el("td", {}, `${b.failures_in_window}/${b.calls_in_window} (${Math.round((b.failure_rate || 0) * 100)}%)`),
        el("td", { class: "actions" },
          el("button", { type: "button", "data-action": "reset", onclick: call(`reset/${svc}`, "reset") }, "Reset"),
          el("button", { type: "button", class: "danger", "data-action": "force-open", onclick: call(`${svc}/force-open`, "forced open") }, "Force open"),
          b.state === "disabled"
            ? el("button", { type: "button", "data-action": "enable", onclick: call(`${svc}/enable`, "enabled") }, "Enable")
            : el("button", { type: "button", "data-action": "disable", onclick: call(`${svc}/disable`, "disabled") }, "Disable"),
        ),
      ),
    );
  }
}

async function loadDeadLetters() {
  const { data } = await api.get(`${MON}/dead-letters?per_page=25`);
  $("#dlq-total").textContent = `(${data.total})`;
  const tbody = $("#dlq tbody");
  clear(tbody);
  if (!data.items.length) emptyRow(tbody, 5, "The dead-letter queue is empty.");
  for (const d of data.items) {
    const inspect = async () => {
      try {
        const { data: one } = await api.get(`${MON}/dead-letters/${d.id}`);
        const pre = $("#dlq-detail");
        pre.textContent = JSON.stringify(one.dead_letter, null, 2);
        pre.hidden = false;
        hideError(document.getElementById("dlq-panel"));
      } catch (error) {
        showError(document.getElementById("dlq-panel"), error);
      }
    };
    const requeue = async () => {
      const done = await act("dlq-panel", `Dead letter ${d.id} requeued`, () => api.post(`${MON}/dead-letters/${d.id}/requeue`, {}));
      if (done) $("#dlq-detail").hidden = true;
    };
    tbody.append(
      el("tr", { "data-dead-letter": String(d.id) },
        el("td", {}, String(d.id)),
        el("td", {}, code(d.kind)),
        el("td", {}, d.failure_analysis),
        el("td", { class: "error" }, d.last_error_code ? code(d.last_error_code) : "", ` ${d.last_error_message || ""}`),
        el("td", { class: "actions" },
          el("button", { type: "button", "data-action": "inspect", onclick: inspect }, "Inspect"),
          el("button", { type: "button", "data-action": "requeue", onclick: requeue }, "Requeue"),
        ),
      ),
    );
  }
}

// -- the failed-work inbox --------------------------------------------------------------------------

const INBOX_KINDS = { job: "Dead jobs", email: "Failed emails", storage: "Stuck files", payment: "Unapplied payments" };

/** A short age: 42 s, 45 min, 3 h, 2 d. */
function fmtAge(seconds) {
  if (seconds >= 86400) return `${Math.floor(seconds / 86400)} d`;
  if (seconds >= 3600) return `${Math.floor(seconds / 3600)} h`;
  if (seconds >= 60) return `${Math.floor(seconds / 60)} min`;
  return `${seconds} s`;
}

const itemUrl = (item) => `${MON}/failed-work/${encodeURIComponent(item.kind)}/${item.id}`;

async function loadInbox() {
  const q = state.inboxKind ? `&kind=${encodeURIComponent(state.inboxKind)}` : "";
  const { data } = await api.get(`${MON}/failed-work?per_page=50${q}`);
  const total = Object.values(data.totals).reduce((sum, n) => sum + n, 0);
  $("#inbox-total").textContent = `(${total})`;
  const tabs = $("#inbox-kinds");
  clear(tabs);
  // The API's kinds in the inbox's order (JSON objects come back with sorted keys).
  const kinds = [...Object.keys(INBOX_KINDS), ...Object.keys(data.totals)].filter((k, i, all) => k in data.totals && all.indexOf(k) === i);
  for (const kind of ["", ...kinds]) {
    const label = kind ? INBOX_KINDS[kind] || kind : "All";
    const pick = () => { state.inboxKind = kind; load("inbox-panel", loadInbox); };
    tabs.append(el("button", { type: "button", class: `kind-tab${kind === state.inboxKind ? " active" : ""}`,
      "data-kind": kind || "all", onclick: pick }, `${label} (${kind ? data.totals[kind] : total})`));
  }
  const bulk = $("#inbox-retry-kind");
  bulk.hidden = !state.inboxKind || !data.totals[state.inboxKind];
  bulk.textContent = `Retry all ${(INBOX_KINDS[state.inboxKind] || state.inboxKind).toLowerCase()}`;
  const tbody = $("#inbox tbody");
  clear(tbody);
  if (!data.items.length) emptyRow(tbody, 6, state.inboxKind ? "Nothing of this kind needs you." : "Nothing failed for good: the inbox is empty.");
  for (const item of data.items) {
    const inspect = async () => {
      try {
        const { data: one } = await api.get(itemUrl(item));
        const pre = $("#inbox-detail");
        pre.textContent = JSON.stringify(one.item, null, 2);
        pre.hidden = false;
        hideError(document.getElementById("inbox-panel"));
      } catch (error) {
        showError(document.getElementById("inbox-panel"), error);
      }
    };
    const retry = async () => {
      const done = await act("inbox-panel", `${item.title} retried`, () => api.post(`${itemUrl(item)}/retry`, {}));
      if (done) $("#inbox-detail").hidden = true;
    };
    tbody.append(
      el("tr", { "data-inbox-item": `${item.kind}:${item.id}`, "data-kind": item.kind },
        el("td", {}, INBOX_KINDS[item.kind] || item.kind),
        el("td", {}, code(item.title, { class: "title" })),
        el("td", { class: "error" }, item.error_code ? code(item.error_code) : "", ` ${item.error_message || ""}`),
        el("td", { class: "age", title: fmtTime(item.failed_at), "data-at": item.failed_at || "" }, fmtAge(item.age_seconds)),
        el("td", {}, String(item.attempts)),
        el("td", { class: "actions" },
          el("button", { type: "button", "data-action": "inspect", onclick: inspect }, "Inspect"),
          el("button", { type: "button", "data-action": "retry", onclick: retry }, "Retry"),
          el("button", { type: "button", class: "danger", "data-action": "discard", onclick: () => askReason(item) }, "Discard"),
        ),
      ),
    );
  }
}

/** Discard asks why first: the reason is required and stays with the item. */
function askReason(item) {
  state.discarding = item;
  const form = $("#inbox-discard");
  $("#inbox-discard-title").textContent = item.title;
  $("#inbox-reason").value = "";
  form.querySelector(".panel-error").hidden = true;
  form.hidden = false;
  $("#inbox-reason").focus();
}

async function discardItem(event) {
  event.preventDefault();
  const item = state.discarding;
  const form = $("#inbox-discard");
  if (!item) return;
  try {
    const { data } = await api.post(`${itemUrl(item)}/discard`, { reason: $("#inbox-reason").value });
    form.hidden = true;
    state.discarding = null;
    $("#inbox-detail").hidden = true;
    toast(data.message);
    await refresh();
  } catch (error) {
    showError(form, error);
    if (error instanceof OrielError && error.fields) {
      const box = form.querySelector(".panel-error");
      for (const [field, msg] of Object.entries(error.fields)) box.append(el("div", {}, `${field}: ${msg}`));
    }
  }
}

function retryKind() {
  const kind = state.inboxKind;
  if (!kind) return;
  act("inbox-panel", `Every ${kind} item retried`, () =>
    api.post(`${MON}/failed-work/${encodeURIComponent(kind)}/retry`, { limit: 100 }));
}

const RULE_FIELDS = ["name", "kind", "params", "channels", "severity", "cooldown_seconds", "enabled"];

function editRule(rule) {
  const body = rule
    ? Object.fromEntries(RULE_FIELDS.map((k) => [k, rule[k]]))
    : { name: "high-error-rate", kind: "error_rate", params: { threshold: 0.05, window_seconds: 300 },
        channels: [{ type: "webhook", url: "https://hooks.example.com/oriel" }], severity: "HIGH",
        cooldown_seconds: 300, enabled: true };
  $("#alert-json").value = JSON.stringify(body, null, 2);
  const form = $("#alert-form");
  form.querySelector(".panel-error").hidden = true;
  form.hidden = false;
}

async function loadAlerts() {
  const { data } = await api.get(`${MON}/alerts/configure`);
  const tbody = $("#alerts tbody");
  clear(tbody);
  if (!data.rules.length) emptyRow(tbody, 6, "No alert rules yet.");
  for (const r of data.rules) {
    tbody.append(
      el("tr", { "data-rule": r.name },
        el("td", {}, r.name, r.enabled ? "" : el("span", { class: "muted" }, " (disabled)")),
        el("td", {}, code(r.kind)),
        el("td", {}, r.severity),
        el("td", {}, el("span", { class: `pill ${r.state === "firing" ? "state-bad" : "state-ok"}` }, r.state)),
        el("td", {}, r.last_value == null ? "" : String(Math.round(r.last_value * 1000) / 1000)),
        el("td", { class: "actions" }, el("button", { type: "button", onclick: () => editRule(r) }, "Edit")),
      ),
    );
  }
}

async function saveRule(event) {
  event.preventDefault();
  const form = $("#alert-form");
  let body;
  try {
    body = JSON.parse($("#alert-json").value);
  } catch (error) {
    showError(form, new Error(`The rule is not valid JSON: ${error.message}`));
    return;
  }
  // The API shows PagerDuty routing keys masked ("abcd..."): saving one back would store the mask.
  const masked = (Array.isArray(body.channels) ? body.channels : []).some(
    (c) => typeof c.routing_key === "string" && c.routing_key.endsWith("..."));
  if (masked) {
    showError(form, new Error("Enter the PagerDuty routing key again: the one shown is masked."));
    return;
  }
  try {
    await api.post(`${MON}/alerts/configure`, body);
    form.hidden = true;
    toast(`Alert rule ${body.name} saved`);
    await load("alerts-panel", loadAlerts);
  } catch (error) {
    showError(form, error);
    if (error instanceof OrielError && error.fields) {
      const box = form.querySelector(".panel-error");
      for (const [field, msg] of Object.entries(error.fields)) box.append(el("div", {}, `${field}: ${msg}`));
    }
  }
}

async function loadRenders() {
  const { data } = await api.get("/admin/api/dashboard/renders?status=active&limit=20");
  const box = $("#renders");
  clear(box);
  if (!data.renders.length) box.append(el("p", { class: "empty" }, "No render is queued or running."));
  for (const r of data.renders) {
    const fill = el("span", {});
    fill.style.width = `${Math.max(0, Math.min(100, r.progress))}%`; // CSSOM, allowed by the CSP
    box.append(
      el("div", { class: "render", "data-render": String(r.id) },
        el("div", { class: "name" }, `#${r.id} ${r.preset} ${r.resolution} (user ${r.user_id}) `, el("span", { class: "muted" }, r.status)),
        el("div", { class: `bar ${r.status === "failed" ? "state-bad" : ""}`, role: "progressbar", "aria-valuenow": String(r.progress), "aria-valuemin": "0", "aria-valuemax": "100" }, fill),
        el("div", {}, `${r.progress}%`),
      ),
    );
  }
}

// -- refresh, sign-in -----------------------------------------------------------------------------

/** Reload every panel; a poll skips while one is running, an admin action waits for it and reloads. */
async function refresh({ poll = false } = {}) {
  if (!state.signedIn) return;
  if (state.current) {
    if (poll) return;
    await state.current.catch(() => {});
  }
  state.current = reloadAll();
  try {
    await state.current;
  } finally {
    state.current = null;
  }
}

async function reloadAll() {
  await Promise.all([
    load("services-panel", loadServices),
    load("impact-panel", loadImpact),
    load("traffic-panel", loadTraffic),
    load("budgets-panel", loadBudgets),
    load("recent-panel", loadRecent),
    load("breakers-panel", loadBreakers),
    load("dlq-panel", loadDeadLetters),
    load("inbox-panel", loadInbox),
    load("alerts-panel", loadAlerts),
    load("renders-panel", loadRenders),
  ]);
  // The groups table is filled by the traffic call; its panel shows that call's failure too.
  const trafficError = document.querySelector("#traffic-panel .panel-error");
  const groupsError = document.querySelector("#groups-panel .panel-error");
  if (Date.now() - Number(groupsError.dataset.shownAt || 0) >= STICKY_MS) {
    groupsError.hidden = trafficError.hidden;
    groupsError.replaceChildren(...[...trafficError.childNodes].map((n) => n.cloneNode(true)));
  }
  $("#refreshed").textContent = `updated ${fmtTime(new Date().toISOString(), { seconds: true })} UTC`;
  document.body.dataset.refreshed = String(Date.now());
}

function signOut(reason) {
  state.signedIn = false;
  clearInterval(state.timer);
  api.setToken(null);
  $("#dashboard").hidden = true;
  $("#login-panel").hidden = false;
  $("#logout").hidden = true;
  $("#refresh").hidden = true;
  const overall = $("#overall");
  overall.textContent = "not signed in";
  overall.className = "pill state-unknown";
  overall.dataset.state = "unknown";
  if (reason) showError($("#login-panel"), new Error(reason));
}

async function signIn(event) {
  event.preventDefault();
  const panel = $("#login-panel");
  try {
    const { data } = await api.post("/api/auth/login", { email: $("#email").value, password: $("#password").value });
    // Memory only: never stored, never in a URL; the client renews an expired access token with the refresh one.
    api.setTokens({ access: data.access_token, refresh: data.refresh_token });
    $("#password").value = "";
    hideError(panel, { force: true });
    state.signedIn = true;
    panel.hidden = true;
    $("#dashboard").hidden = false;
    $("#logout").hidden = false;
    $("#refresh").hidden = false;
    await refresh();
    state.timer = setInterval(() => refresh({ poll: true }), REFRESH_MS);
  } catch (error) {
    showError(panel, error);
  }
}

/** The emailed admin verification link (`/admin/#verify=<token>`): choose a password, then sign in. */
function verifyToken() {
  const match = /^#verify=([A-Za-z0-9_.-]+)$/.exec(window.location.hash);
  return match ? match[1] : null;
}

async function verifyAdmin(event) {
  event.preventDefault();
  const panel = $("#verify-panel");
  try {
    const { data } = await api.post("/api/auth/verify-admin", { token: verifyToken(), password: $("#verify-password").value });
    $("#verify-password").value = "";
    history.replaceState(null, "", window.location.pathname); // the token is spent: out of the address bar
    panel.hidden = true;
    $("#login-panel").hidden = false;
    $("#email").value = data.user.email;
    toast("Verified: sign in with your new password.");
  } catch (error) {
    showError(panel, error);
  }
}

function init() {
  $("#login-form").addEventListener("submit", signIn);
  $("#verify-form").addEventListener("submit", verifyAdmin);
  if (verifyToken()) {
    $("#verify-panel").hidden = false;
    $("#login-panel").hidden = true;
  }
  $("#logout").addEventListener("click", () => signOut(""));
  $("#refresh").addEventListener("click", () => refresh());
  $("#recent-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.requestId = $("#recent-request-id").value.trim();
    load("recent-panel", loadRecent);
    load("trace-panel", loadTrace);
  });
  $("#recent-clear").addEventListener("click", () => {
    $("#recent-request-id").value = "";
    state.requestId = "";
    load("recent-panel", loadRecent);
    load("trace-panel", loadTrace);
  });
  $("#reset-all").addEventListener("click", () =>
    act("breakers-panel", "Every breaker reset", () => api.post(`${MON}/circuit-breakers/reset-all`, {})));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      state.window = tab.dataset.window;
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      load("traffic-panel", loadTraffic);
    });
  }
  $("#alert-new").addEventListener("click", () => editRule(null));
  $("#alert-cancel").addEventListener("click", () => { $("#alert-form").hidden = true; });
  $("#alert-form").addEventListener("submit", saveRule);
  $("#inbox-discard").addEventListener("submit", discardItem);
  $("#inbox-discard-cancel").addEventListener("click", () => { $("#inbox-discard").hidden = true; state.discarding = null; });
  $("#inbox-retry-kind").addEventListener("click", retryKind);
  document.body.dataset.ready = "true";
}

init();
