// Balut console: live view of the host through its HTTP API and event stream.
// Plain modern JavaScript, no framework; every text from the API goes through
// textContent, never innerHTML.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const EVENT_TYPES = ["state", "readiness", "health", "loaded", "unloaded", "reloaded",
    "replaced", "rolled_back", "refused", "removed"];
  const FILE_EVENTS = new Set(["loaded", "unloaded", "reloaded", "rolled_back", "refused", "removed"]);
  const MAX_EVENTS = 500;
  const MAX_LOG_LINES = 500;
  const MANY = 20;
  const TOKEN_KEY = "balut.token";
  const REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    422: "Unprocessable Entity", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable",
  };

  const el = {
    html: document.documentElement,
    connection: $("#connection"),
    version: $("#host-version"),
    hostExtra: $("#host-extra"),
    notice: $("#notice"),
    filter: $("#filter"),
    count: $("#container-count"),
    tbody: $("#containers tbody"),
    plugins: $("#plugins tbody"),
    folder: $("#folder"),
    notUnloaded: $("#not-unloaded"),
    events: $("#events"),
    eventsFilter: $("#events-filter"),
    detail: $("#detail"),
    detailTitle: $("#detail-title"),
    detailState: $("#detail-state"),
    detailSummary: $("#detail-summary"),
    detailHistory: $("#detail-history"),
    chart: $("#probe-chart"),
    logs: $("#detail-logs"),
    logsState: $("#logs-state"),
    config: $("#detail-config"),
    configNote: $("#config-note"),
    confirm: $("#confirm-dialog"),
    confirmMessage: $("#confirm-message"),
    tokenDialog: $("#token-dialog"),
    tokenInput: $("#token-input"),
  };

  /** Everything the page knows. */
  const state = {
    host: null,
    containers: new Map(), // name -> status (list fields)
    order: [], // names in the API's order
    rows: new Map(), // name -> { tr, cells }
    plugins: [],
    lastEventId: null,
    source: null,
    attempt: 0,
    everOpen: false,
    firstRender: false,
    streamOpen: false,
    detail: null, // { name, logs: AbortController|null, opener: Element|null, data }
    pending: new Set(), // containers to fetch again
    pendingList: false,
    pendingPlugins: false,
    flushScheduled: false,
    flushing: false,
    syncing: false, // a fetchAll is in flight: events are held until it is done
    held: [],
  };

  // ---------- small helpers ----------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) node.append(c);
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }

  function duration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hr = Math.floor(s / 3600); s -= hr * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function clock(iso) {
    const t = new Date(iso);
    if (Number.isNaN(t.getTime())) return String(iso ?? "");
    return t.toLocaleTimeString(undefined, { hour12: false });
  }

  function uptimeText(c, now) {
    if (c.state !== "running" || !c.since) return "—";
    const since = Date.parse(c.since);
    return Number.isNaN(since) ? "—" : duration(now - since);
  }

  function retryText(c, now) {
    if (!c.next_retry) return "—";
    const at = Date.parse(c.next_retry);
    if (Number.isNaN(at)) return "—";
    const s = Math.ceil((at - now) / 1000);
    return s > 0 ? `in ${s} s` : "now";
  }

  function healthText(c) {
    if (!c.health) return "—";
    return c.health.healthy ? "healthy" : "unhealthy";
  }

  function later(fn) {
    if (document.hidden) setTimeout(fn, 100);
    else requestAnimationFrame(fn);
  }

  // ---------- notices ----------

  let noticeTimer = null;
  function notice(kind, text) {
    el.notice.hidden = false;
    el.notice.dataset.kind = kind;
    el.notice.textContent = text;
    clearTimeout(noticeTimer);
    if (kind === "ok") noticeTimer = setTimeout(() => { el.notice.hidden = true; }, 15000);
  }

  /** An API answer that is not 2xx, as an Error naming its status and message. */
  class HttpError extends Error {
    constructor(status, message) {
      super(`${status} ${REASONS[status] || "Error"}: ${message}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options });
    } catch (e) {
      throw new Error(`cannot reach the host (${options.method || "GET"} ${path}): ${e.message}`);
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : (text.trim() || response.statusText);
      throw new HttpError(response.status, message);
    }
    return body;
  }

  function fail(what) {
    return (e) => notice("error", what ? `${what}: ${e.message}` : e.message);
  }

  // ---------- containers table ----------

  const FIELDS = ["name", "plugin", "state", "health", "ready", "generation", "restarts",
    "uptime", "next-retry", "error", "actions"];

  /** The shape of every row, cloned for each container (far cheaper than building it). */
  const ROW_TEMPLATE = (() => {
    const tr = document.createElement("tr");
    for (const f of FIELDS) {
      const td = document.createElement("td");
      td.setAttribute("data-field", f);
      tr.append(td);
    }
    const [name, , stateCell] = tr.children;
    name.append(h("a", { "data-link": "container" }));
    stateCell.append(h("span", { class: "state" }));
    tr.lastElementChild.append(
      h("button", { type: "button", "data-action": "start", text: "Start" }),
      h("button", { type: "button", "data-action": "stop", text: "Stop" }),
      h("button", { type: "button", "data-action": "restart", text: "Restart" }));
    return tr;
  })();

  function makeRow(c, now, filter) {
    const tr = ROW_TEMPLATE.cloneNode(true);
    const cells = {};
    let td = tr.firstElementChild;
    for (const f of FIELDS) {
      cells[f] = td;
      td = td.nextElementSibling;
    }
    cells.link = cells.name.firstElementChild;
    cells.link.setAttribute("href", `/ui/containers/${encodeURIComponent(c.name)}`);
    cells.stateBadge = cells.state.firstElementChild;
    const row = { tr, cells, match: true, health: undefined };
    fillRow(row, c, now, filter);
    return row;
  }

  function fillRow(row, c, now, filter) {
    const { tr, cells } = row;
    setAttr(tr, "data-name", c.name);
    setAttr(tr, "data-state", c.state);
    setText(cells.link, c.name);
    setText(cells.plugin, c.plugin + (c.version ? ` ${c.version}` : ""));
    setText(cells.stateBadge, c.state);
    const cls = `state st-${c.state}`;
    if (cells.stateBadge.className !== cls) cells.stateBadge.className = cls;
    const health = healthText(c);
    if (row.health !== health) {
      row.health = health;
      setText(cells.health, health);
      cells.health.className = health === "unhealthy" ? "health-bad" : (health === "healthy" ? "health-ok" : "dim");
    }
    const why = c.health && !c.health.healthy ? (c.health.message || "") : null;
    if (why !== null) cells.health.title = why;
    else if (cells.health.hasAttribute("title")) cells.health.removeAttribute("title");
    setText(cells.ready, c.ready ? "yes" : "no");
    setText(cells.generation, c.generation == null ? "—" : String(c.generation));
    setText(cells.restarts, String(c.restarts ?? 0));
    setText(cells.uptime, uptimeText(c, now));
    setText(cells["next-retry"], retryText(c, now));
    setText(cells.error, c.last_error || "");
    row.match = matches(c, filter);
    if (tr.hidden === row.match) tr.hidden = !row.match;
  }

  function currentFilter() {
    return el.filter.value.trim().toLowerCase();
  }

  function matches(c, f) {
    if (!f) return true;
    return c.name.toLowerCase().includes(f) || String(c.plugin).toLowerCase().includes(f)
      || c.state.includes(f);
  }

  function updateCount() {
    let shown = 0;
    for (const row of state.rows.values()) if (row.match) shown += 1;
    setText(el.count, `${shown} of ${state.rows.size} container${state.rows.size === 1 ? "" : "s"}`);
  }

  /** The whole table from `list` (the API's order): rows already shown are updated in
   * place (only the cells that changed), new ones built, gone ones removed. */
  function renderContainers(list) {
    const t0 = performance.now();
    const now = Date.now();
    const filter = currentFilter();
    const old = state.rows;
    const rows = new Map();
    state.containers = new Map(list.map((c) => [c.name, c]));
    state.order = list.map((c) => c.name);
    let inOrder = true;
    let at = el.tbody.firstElementChild;
    for (const c of list) {
      let row = old.get(c.name);
      if (row) fillRow(row, c, now, filter);
      else row = makeRow(c, now, filter);
      rows.set(c.name, row);
      if (inOrder && row.tr === at) at = at.nextElementSibling;
      else inOrder = false;
    }
    if (!inOrder || at !== null) {
      const fragment = document.createDocumentFragment();
      for (const row of rows.values()) fragment.append(row.tr);
      el.tbody.replaceChildren(fragment);
    }
    state.rows = rows;
    markSelected();
    updateCount();
    performance.measure("balut:render:containers", { start: t0, end: performance.now() });
  }

  /** One container's fresh status: its row updated (or added). */
  function updateContainer(c) {
    const known = state.containers.get(c.name);
    state.containers.set(c.name, c);
    const row = state.rows.get(c.name);
    if (row) {
      fillRow(row, c, Date.now(), currentFilter());
    } else {
      const fresh = makeRow(c, Date.now(), currentFilter());
      state.rows.set(c.name, fresh);
      if (!known) state.order.push(c.name);
      el.tbody.append(fresh.tr);
    }
    updateCount();
  }

  function forgetContainer(name) {
    state.containers.delete(name);
    state.order = state.order.filter((n) => n !== name);
    const row = state.rows.get(name);
    if (row) row.tr.remove();
    state.rows.delete(name);
    updateCount();
  }

  function applyFilter() {
    const f = currentFilter();
    for (const [name, row] of state.rows) {
      const c = state.containers.get(name);
      row.match = c ? matches(c, f) : true;
      if (row.tr.hidden === row.match) row.tr.hidden = !row.match;
    }
    updateCount();
  }

  function tick() {
    const now = Date.now();
    for (const [name, row] of state.rows) {
      const c = state.containers.get(name);
      if (!c) continue;
      if (c.state === "running") setText(row.cells.uptime, uptimeText(c, now));
      if (c.next_retry) setText(row.cells["next-retry"], retryText(c, now));
    }
    if (state.detail && state.detail.data) renderSummary(state.detail.data, now);
  }

  // ---------- plugin files ----------

  function renderPlugins(answer) {
    state.plugins = answer.plugins || [];
    const fragment = document.createDocumentFragment();
    for (const p of state.plugins) {
      const bad = p.status === "error" || p.status === "refused";
      const warn = !bad && Boolean(p.refused_sha256 || p.error);
      const reason = p.error ? (p.error_kind ? `${p.error_kind}: ${p.error}` : p.error) : "";
      const tr = h("tr", { "data-file": p.file, "data-status": p.status, class: bad ? "bad" : (warn ? "warn" : null) },
        h("td", { "data-field": "file", text: p.file }),
        h("td", { "data-field": "status", text: p.status }),
        h("td", { "data-field": "plugin", text: p.name ? `${p.name}${p.version ? ` ${p.version}` : ""}` : "—" }),
        h("td", { "data-field": "generation", text: p.generation == null ? "—" : String(p.generation) }),
        h("td", { "data-field": "reason", text: reason }));
      fragment.append(tr);
    }
    el.plugins.replaceChildren(fragment);
    const folder = answer.folder || {};
    const where = folder.path ? `folder ${folder.path}` : "";
    el.folder.textContent = folder.error ? `${where} — lost: ${folder.error}` : `${where}${folder.watching === false ? " (not watched)" : ""}`;
    el.folder.className = folder.error ? "health-bad" : "muted";
    const stuck = answer.not_unloaded || [];
    el.notUnloaded.hidden = stuck.length === 0;
    el.notUnloaded.replaceChildren(...stuck.map((n) => h("li", {
      text: `${n.file} generation ${n.generation} (${n.plugin}) could not be unloaded: ${n.reason}`,
    })));
  }

  // ---------- fetching ----------

  async function fetchContainers() {
    const answer = await api("/v1/containers");
    renderContainers(answer.containers || []);
  }

  async function fetchPlugins() {
    renderPlugins(await api("/v1/plugins"));
  }

  async function fetchHost() {
    const before = state.host;
    const host = await api("/v1/host");
    state.host = host;
    el.version.textContent = host.version;
    el.hostExtra.textContent = `interface ${host.interface} · pid ${host.pid}`;
    el.hostExtra.title = `plugin folder ${host.plugin_dir}${host.config_file ? `, config ${host.config_file}` : ""}; started ${host.started_at}`;
    return Boolean(before && (before.pid !== host.pid || before.started_at !== host.started_at));
  }

  /** The whole state again (at start and after each reconnection). Events that arrive
   * meanwhile are held; those the fetched state already shows (ids up to the host's
   * `last_event_id` when it was asked) fetch nothing more. */
  async function fetchAll(reconnected) {
    state.pending.clear();
    state.pendingList = false;
    state.pendingPlugins = false;
    state.syncing = true;
    let shown = null;
    try {
      const restarted = await fetchHost();
      shown = typeof state.host.last_event_id === "number" ? state.host.last_event_id : null;
      await Promise.all([fetchContainers(), fetchPlugins()]);
      if (state.detail) {
        refreshDetail().catch(fail(`reading ${state.detail.name}`));
        if (!state.detail.logs) followLogs(state.detail.name);
      }
      if (restarted) notice("ok", "Reconnected: the host restarted (new pid); everything was read again.");
      else if (reconnected) notice("ok", "Reconnected to the host; everything was read again.");
      state.firstRender = true;
      readyCheck();
    } finally {
      state.syncing = false;
      const held = state.held;
      state.held = [];
      for (const ev of held) if (shown === null || !(ev.id <= shown)) note(ev);
      scheduleFlush();
    }
  }

  function readyCheck() {
    if (state.firstRender && state.streamOpen) el.html.dataset.console = "ready";
  }

  /** Fetches what events concerned, once per frame, one batch at a time (so an older
   * answer never lands after a newer one). */
  function scheduleFlush() {
    if (state.flushScheduled || state.flushing) return;
    state.flushScheduled = true;
    later(() => {
      state.flushScheduled = false;
      if (state.syncing) return; // fetchAll schedules the flush when it is done
      state.flushing = true;
      flush().finally(() => {
        state.flushing = false;
        if (state.pending.size || state.pendingList || state.pendingPlugins) scheduleFlush();
      });
    });
  }

  async function flush() {
    const names = [...state.pending];
    state.pending.clear();
    const jobs = [];
    if (state.pendingPlugins) {
      state.pendingPlugins = false;
      jobs.push(fetchPlugins().catch(fail("reading the plugin files")));
    }
    if (state.pendingList || names.length > MANY) {
      state.pendingList = false;
      jobs.push(fetchContainers().catch(fail("reading the containers")));
      if (state.detail && (names.includes(state.detail.name) || names.length === 0)) {
        jobs.push(refreshDetail().catch(fail(`reading ${state.detail.name}`)));
      }
    } else {
      for (const name of names) jobs.push(fetchOne(name));
    }
    await Promise.all(jobs);
  }

  async function fetchOne(name) {
    try {
      const c = await api(`/v1/containers/${encodeURIComponent(name)}`);
      updateContainer(c);
      if (state.detail && state.detail.name === name) renderDetail(c);
    } catch (e) {
      if (e.status === 404) {
        forgetContainer(name);
        if (state.detail && state.detail.name === name) detailGone();
      } else {
        notice("error", `reading ${name}: ${e.message}`);
      }
    }
  }

  // ---------- events ----------

  function eventText(ev) {
    switch (ev.type) {
      case "state": return `${ev.container}: ${ev.from} → ${ev.to}${ev.reason ? ` (${ev.reason})` : ""}`;
      case "readiness": return `${ev.container}: ${ev.ready ? "ready" : "not ready"}`;
      case "health": return `${ev.container}: ${ev.healthy ? "healthy" : "unhealthy"}${ev.message ? ` — ${ev.message}` : ""}`;
      case "loaded": return `${ev.file}: ${ev.plugin} ${ev.version} loaded as generation ${ev.generation}`;
      case "unloaded": return `${ev.file}: generation ${ev.generation} unloaded${ev.mapped ? " (still mapped)" : ""}`;
      case "reloaded": return `${ev.file}: generation ${ev.from_generation} → ${ev.to_generation}`;
      case "replaced": return `${ev.container}: generation ${ev.from_generation} → ${ev.to_generation} (overlap)`;
      case "rolled_back": return `${ev.file}: rolled back to generation ${ev.generation}: ${ev.reason}`;
      case "refused": return `${ev.file}: refused (${ev.kind}): ${ev.error}`;
      case "removed": return `${ev.file}: removed from the folder`;
      default: return JSON.stringify(ev);
    }
  }

  function eventMatches(li, f) {
    return !f || li.textContent.toLowerCase().includes(f);
  }

  function addEvent(ev) {
    const bad = ev.type === "refused" || ev.type === "rolled_back"
      || (ev.type === "state" && ["failed", "backoff", "quarantined"].includes(ev.to))
      || (ev.type === "health" && !ev.healthy);
    const li = h("li", { "data-id": ev.id, "data-type": ev.type, class: bad ? "ev-bad" : null },
      h("span", { class: "ev-time", text: clock(ev.at) }),
      h("span", { class: "ev-type", text: ev.type }),
      h("span", { class: "ev-text", text: eventText(ev) }));
    li.title = ev.at;
    const f = el.eventsFilter.value.trim().toLowerCase();
    li.hidden = !eventMatches(li, f);
    el.events.prepend(li);
    while (el.events.childElementCount > MAX_EVENTS) el.events.lastElementChild.remove();
  }

  function onEvent(message) {
    let ev;
    try { ev = JSON.parse(message.data); } catch { return; }
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    else if (ev.id != null) state.lastEventId = String(ev.id);
    addEvent(ev);
    if (state.syncing) state.held.push(ev);
    else {
      note(ev);
      scheduleFlush();
    }
  }

  /** What `ev` makes stale: its container, the plugin files, the list. */
  function note(ev) {
    if (ev.container) state.pending.add(ev.container);
    if (FILE_EVENTS.has(ev.type)) {
      state.pendingPlugins = true;
      // A file's arrival or departure (un)registers its containers.
      if (ev.type === "loaded" || ev.type === "removed" || ev.type === "unloaded") state.pendingList = true;
    }
  }

  function setConnection(kind, text) {
    el.connection.dataset.state = kind;
    el.connection.textContent = text;
  }

  /** fetchAll, tried again every 2 s while `source` stays open and it fails. */
  function syncWhileOpen(source, reconnected) {
    fetchAll(reconnected).catch((e) => {
      notice("error", `reading the host's state: ${e.message}`);
      setTimeout(() => {
        if (state.source === source && source.readyState === EventSource.OPEN) syncWhileOpen(source, reconnected);
      }, 2000);
    });
  }

  let reconnectTimer = null;
  function connect() {
    clearTimeout(reconnectTimer);
    const url = state.lastEventId == null ? "/v1/events?since=0" : `/v1/events?since=${encodeURIComponent(state.lastEventId)}`;
    const source = new EventSource(url);
    state.source = source;
    source.addEventListener("open", () => {
      if (state.source !== source) return;
      const reconnected = state.everOpen;
      state.everOpen = true;
      state.attempt = 0;
      state.streamOpen = true;
      setConnection("live", "Live");
      if (reconnected || (!state.firstRender && !state.syncing)) syncWhileOpen(source, reconnected);
    });
    source.addEventListener("error", () => {
      if (state.source !== source) return;
      state.attempt += 1;
      state.streamOpen = false;
      if (state.detail && state.detail.logs) {
        state.detail.logs.abort();
        state.detail.logs = null;
      }
      const what = `Reconnecting… host unreachable (attempt ${state.attempt})`;
      setConnection(state.everOpen ? "reconnecting" : "connecting", state.everOpen ? what : `Connecting… (attempt ${state.attempt})`);
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an answer that was not a stream): try again ourselves.
        if (state.everOpen) setConnection("reconnecting", what);
        const delay = Math.min(5000, 1000 * 2 ** Math.min(state.attempt - 1, 3));
        reconnectTimer = setTimeout(connect, delay);
      }
    });
    source.addEventListener("message", onEvent);
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  }

  // ---------- actions ----------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
  }

  /** Shows `dialog` modally; `wire(done)` sets its buttons up; resolves with what
   * `done` is given (`fallback` when it is closed otherwise, e.g. by Escape). */
  function modal(dialog, fallback, wire, focus) {
    return new Promise((resolve) => {
      const done = (value) => {
        dialog.removeEventListener("close", onClose);
        if (dialog.open) dialog.close();
        resolve(value);
      };
      const onClose = () => done(fallback);
      dialog.addEventListener("close", onClose);
      wire(done);
      dialog.showModal();
      focus.focus();
    });
  }

  function askToken() {
    el.tokenInput.value = "";
    return modal(el.tokenDialog, null, (done) => {
      $("#token-form").onsubmit = (e) => {
        e.preventDefault();
        const value = el.tokenInput.value.trim();
        if (!value) { el.tokenInput.focus(); return; }
        try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* private mode: kept for this action only */ }
        done(value);
      };
      $("#token-cancel").onclick = () => done(null);
    }, el.tokenInput);
  }

  function confirmStop(name) {
    el.confirmMessage.textContent = `Stop container “${name}”? It stays stopped until started again.`;
    const no = el.confirm.querySelector('[data-confirm="no"]');
    return modal(el.confirm, false, (done) => {
      el.confirm.querySelector('[data-confirm="yes"]').onclick = () => done(true);
      no.onclick = () => done(false);
    }, no);
  }

  /** A POST with the token when the host wants one (asked once per session). */
  async function post(path) {
    let secret = token();
    if (!secret && state.host && state.host.token_required) {
      secret = await askToken();
      if (!secret) throw new Error("cancelled: this host needs a token for actions");
    }
    const headers = secret ? { Authorization: `Bearer ${secret}` } : {};
    try {
      return await api(path, { method: "POST", headers });
    } catch (e) {
      if (e.status === 401) {
        try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing kept */ }
      }
      throw e;
    }
  }

  const PAST = { start: "started", stop: "stopped", restart: "restarted" };

  async function act(action, name, opener) {
    if (action === "stop" && !(await confirmStop(name))) {
      if (opener) opener.focus();
      return;
    }
    if (opener) opener.focus();
    try {
      const c = await post(`/v1/containers/${encodeURIComponent(name)}/${action}`);
      if (c && c.name) {
        updateContainer(c);
        state.pending.add(c.name);
        scheduleFlush();
      }
      notice("ok", `${name}: ${PAST[action]} (now ${c && c.state ? c.state : "asked"})`);
    } catch (e) {
      notice("error", `${action} ${name}: ${e.message}`);
    }
  }

  async function reloadConfig() {
    try {
      const r = await post("/v1/reload");
      const parts = [];
      for (const key of ["added", "removed", "changed"]) {
        if (r[key] && r[key].length) parts.push(`${key} ${r[key].join(", ")}`);
      }
      if (r.needs_restart && r.needs_restart.length) parts.push(`needs a restart of balut for ${r.needs_restart.join(", ")}`);
      const same = (r.unchanged || []).length;
      notice("ok", `Config reloaded: ${parts.length ? parts.join("; ") : "nothing changed"}${same ? ` (${same} unchanged)` : ""}.`);
      state.pendingList = true;
      scheduleFlush();
    } catch (e) {
      notice("error", `reload: ${e.message}`);
    }
  }

  // ---------- detail ----------

  function markSelected() {
    for (const tr of el.tbody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
    if (state.detail) {
      const row = state.rows.get(state.detail.name);
      if (row) row.tr.classList.add("selected");
    }
  }

  function openDetail(name, how) {
    if (state.detail && state.detail.name !== name) stopLogs();
    const opener = how && how.opener ? how.opener : (state.detail ? state.detail.opener : null);
    const same = state.detail && state.detail.name === name;
    if (!same) state.detail = { name, logs: null, opener, data: null };
    el.detail.dataset.name = name;
    el.detail.hidden = false;
    el.detailTitle.textContent = name;
    if (!same) {
      el.detailState.textContent = "";
      el.detailSummary.replaceChildren();
      el.detailHistory.replaceChildren();
      el.chart.replaceChildren();
      el.logs.replaceChildren();
      el.config.textContent = "";
      el.configNote.textContent = "";
    }
    const path = `/ui/containers/${encodeURIComponent(name)}`;
    if (how && how.push && location.pathname !== path) history.pushState({ name }, "", path);
    markSelected();
    el.detail.focus();
    refreshDetail().catch(fail(`reading ${name}`));
    if (!state.detail.logs) followLogs(name);
  }

  function closeDetail(push) {
    if (!state.detail) return;
    const { opener, name } = state.detail;
    stopLogs();
    state.detail = null;
    el.detail.hidden = true;
    el.detail.removeAttribute("data-name");
    if (push && location.pathname !== "/ui/") history.pushState({}, "", "/ui/");
    markSelected();
    const row = state.rows.get(name);
    const target = opener && opener.isConnected ? opener : (row ? row.cells.link : el.filter);
    target.focus();
  }

  function detailGone() {
    if (!state.detail) return;
    el.detailState.textContent = "gone";
    el.detailState.className = "state st-stopped";
    el.logsState.textContent = "(the container is no longer registered)";
  }

  async function refreshDetail() {
    if (!state.detail) return;
    const name = state.detail.name;
    try {
      const c = await api(`/v1/containers/${encodeURIComponent(name)}`);
      if (state.detail && state.detail.name === name) renderDetail(c);
    } catch (e) {
      if (e.status === 404 && state.detail && state.detail.name === name) {
        detailGone();
        notice("error", `no container named ${name} on this host`);
        return;
      }
      throw e;
    }
  }

  function renderSummary(c, now) {
    const items = [
      ["Plugin", `${c.plugin}${c.version ? ` ${c.version}` : ""}`],
      ["Since", c.since ? `${clock(c.since)} (${c.since})` : "—"],
      ["Uptime", uptimeText(c, now)],
      ["Next retry", retryText(c, now)],
      ["Health", c.health ? `${healthText(c)}${c.health.message ? ` — ${c.health.message}` : ""} (${c.health.duration_ms} ms)` : "—"],
      ["Ready", c.ready ? "yes" : "no"],
      ["Generation", c.generation == null ? "—" : String(c.generation)],
      ["File", c.file ? `${c.file}${c.sha256 ? ` (sha256 ${c.sha256})` : ""}` : "—"],
      ["Restarts", String(c.restarts ?? 0)],
      ["Requires", c.requires && c.requires.length ? c.requires.join(", ") : "—"],
      ["Isolation", c.isolation + (c.process ? ` (pid ${c.process.pid}, ${(c.process.rss_bytes / 1048576).toFixed(1)} MiB, ${c.process.cpu_seconds.toFixed(2)} s CPU)` : "")],
      ["Last error", c.last_error || "—"],
    ];
    const nodes = [];
    for (const [k, v] of items) nodes.push(h("dt", { text: k }), h("dd", { text: v }));
    el.detailSummary.replaceChildren(...nodes);
  }

  function renderDetail(c) {
    state.detail.data = c;
    el.detailState.textContent = c.state;
    el.detailState.className = `state st-${c.state}`;
    renderSummary(c, Date.now());
    const history = (c.history || []).map((t) => h("li", null,
      h("span", { class: "when", text: clock(t.at) }), " ",
      h("span", { class: `state st-${t.to}`, text: `${t.from} → ${t.to}` }),
      t.reason ? h("span", { class: "reason", text: ` ${t.reason}` }) : ""));
    el.detailHistory.replaceChildren(...history);
    renderChart(c.probes || []);
    if (c.config == null) {
      el.config.textContent = "null";
      el.configNote.textContent = "No entry in the config file: the plugin's default instance.";
    } else {
      el.config.textContent = JSON.stringify(c.config, null, 2);
      el.configNote.textContent = "Its entry in the config file, as resolved.";
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  }

  function renderChart(probes) {
    const W = 400, H = 90, left = 34, right = 8, top = 8, bottom = 16;
    const nodes = [];
    const max = Math.max(1, ...probes.map((p) => p.duration_ms));
    nodes.push(svg("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom }));
    nodes.push(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }));
    nodes.push(svg("text", { class: "lbl", x: 2, y: top + 8 }, `${max < 10 ? Number(max.toFixed(2)) : Math.round(max)} ms`));
    nodes.push(svg("text", { class: "lbl", x: 2, y: H - bottom }, "0"));
    if (probes.length === 0) {
      nodes.push(svg("text", { class: "lbl", x: left + 10, y: H / 2 }, "no probe results yet"));
    }
    const step = probes.length > 1 ? (W - left - right - 20) / (probes.length - 1) : 0;
    const points = [];
    probes.forEach((p, i) => {
      const x = left + 10 + i * step;
      const y = H - bottom - ((p.duration_ms / max) * (H - top - bottom));
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      const circle = svg("circle", {
        cx: x.toFixed(1), cy: y.toFixed(1), r: 4,
        class: `${p.ok ? "ok" : "bad"} ${p.probe}`,
        "data-ms": p.duration_ms, "data-ok": p.ok ? "true" : "false", "data-probe": p.probe,
      });
      circle.append(svg("title", {}, `${p.probe} ${clock(p.at)}: ${p.ok ? "ok" : "failed"}, ${p.duration_ms} ms${p.message ? ` — ${p.message}` : ""}`));
      nodes.push(circle);
    });
    if (points.length > 1) nodes.splice(4, 0, svg("polyline", { class: "line", points: points.join(" ") }));
    nodes.push(svg("text", { class: "lbl", x: W - right - 120, y: H - 3 }, `${probes.length} results, oldest left`));
    el.chart.replaceChildren(...nodes);
  }

  function logLine(line) {
    const fields = line.fields && typeof line.fields === "object"
      ? Object.entries(line.fields).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ")
      : "";
    const level = String(line.level || "info");
    return h("div", { class: `log-line lv-${level}` },
      h("span", { class: "when", text: clock(line.at) }), " ",
      h("span", { class: "lv", text: level.toUpperCase().padEnd(5) }), " ",
      h("span", { class: "msg", text: String(line.message ?? "") }),
      fields ? h("span", { class: "fields", text: ` ${fields}` }) : "");
  }

  function appendLogs(lines) {
    if (!lines.length) return;
    const stick = el.logs.scrollTop + el.logs.clientHeight >= el.logs.scrollHeight - 4;
    el.logs.append(...lines.map(logLine));
    while (el.logs.childElementCount > MAX_LOG_LINES) el.logs.firstElementChild.remove();
    if (stick) el.logs.scrollTop = el.logs.scrollHeight;
  }

  function stopLogs() {
    if (state.detail && state.detail.logs) {
      state.detail.logs.abort();
      state.detail.logs = null;
    }
  }

  /** Streams the container's log lines while its detail is open. */
  async function followLogs(name) {
    const controller = new AbortController();
    state.detail.logs = controller;
    el.logs.replaceChildren();
    el.logsState.textContent = "(following)";
    try {
      const response = await fetch(`/v1/containers/${encodeURIComponent(name)}/logs?n=200&follow=1`,
        { signal: controller.signal, cache: "no-store" });
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error || message; } catch { /* not JSON */ }
        throw new HttpError(response.status, message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let rest = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += decoder.decode(value, { stream: true });
        const parts = rest.split("\n");
        rest = parts.pop();
        const lines = [];
        for (const part of parts) {
          if (!part.trim()) continue;
          try { lines.push(JSON.parse(part)); } catch { lines.push({ level: "warn", message: part, at: "" }); }
        }
        appendLogs(lines);
      }
      if (state.detail && state.detail.logs === controller) {
        el.logsState.textContent = "(the stream ended)";
        state.detail.logs = null;
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      if (state.detail && state.detail.logs === controller) {
        state.detail.logs = null;
        el.logsState.textContent = `(not following: ${e.message})`;
      }
    }
  }

  // ---------- wiring ----------

  function nameFor(button) {
    const holder = button.closest("[data-name]");
    return holder ? holder.dataset.name : null;
  }

  document.addEventListener("click", (e) => {
    const target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    const button = target.closest("button[data-action]");
    if (button) {
      const name = nameFor(button);
      if (name) act(button.dataset.action, name, button).catch(fail());
      return;
    }
    const link = target.closest('a[data-link="container"]');
    if (link && !(e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) && e.button === 0) {
      e.preventDefault();
      const name = nameFor(link);
      if (name) openDetail(name, { push: true, opener: link });
      return;
    }
    const home = target.closest('a[data-link="home"]');
    if (home && e.button === 0 && !(e.metaKey || e.ctrlKey)) {
      e.preventDefault();
      closeDetail(true);
    }
  });

  $("#detail-close").addEventListener("click", () => closeDetail(true));
  $("#reload-config").addEventListener("click", () => { reloadConfig().catch(fail("reload")); });
  el.filter.addEventListener("input", applyFilter);
  el.eventsFilter.addEventListener("input", () => {
    const f = el.eventsFilter.value.trim().toLowerCase();
    for (const li of el.events.children) li.hidden = !eventMatches(li, f);
  });

  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLElement && (e.target.isContentEditable
      || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName));
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      el.filter.focus();
      el.filter.select();
    } else if (e.key === "Escape") {
      if (el.confirm.open || el.tokenDialog.open) return; // the dialog closes itself
      if (state.detail) { e.preventDefault(); closeDetail(true); }
      else if (typing && e.target === el.filter && el.filter.value) { el.filter.value = ""; applyFilter(); }
    }
  });

  function routeFromLocation() {
    const m = location.pathname.match(/^\/ui\/containers\/([^/]+)\/?$/);
    if (m) {
      let name;
      try { name = decodeURIComponent(m[1]); } catch { name = m[1]; }
      openDetail(name, { push: false });
    } else if (state.detail) {
      closeDetail(false);
    }
  }

  window.addEventListener("popstate", routeFromLocation);
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    notice("error", `unexpected: ${e.reason && e.reason.message ? e.reason.message : e.reason}`);
  });

  setInterval(tick, 1000);
  connect();
  // The first read does not wait for the stream: events it already shows are skipped.
  fetchAll(false).catch((e) => notice("error", `reading the host's state: ${e.message}`));
  routeFromLocation();
})();
