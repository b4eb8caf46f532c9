// The containers table: one row per container in the API's order, its filter, the count
// line, and which row is selected (the one whose detail is open).

import { $, h, setAttr, setText } from "./dom.js";
import { api } from "./api.js";
import { healthText, retryText, uptimeText } from "./format.js";

const filterInput = $("#filter");
const count = $("#container-count");
const tbody = $("#containers tbody");

let containers = new Map(); // name -> status (list fields)
let rows = new Map(); // name -> { tr, cells }
let selected = null; // the name whose detail is open

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
  return filterInput.value.trim().toLowerCase();
}

function matches(c, f) {
  if (!f) return true;
  return c.name.toLowerCase().includes(f) || String(c.plugin).toLowerCase().includes(f)
    || c.state.includes(f);
}

function updateCount() {
  let shown = 0;
  for (const row of rows.values()) if (row.match) shown += 1;
  setText(count, `${shown} of ${rows.size} container${rows.size === 1 ? "" : "s"}`);
}

function markSelected() {
  for (const tr of tbody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  if (selected !== null) {
    const row = rows.get(selected);
    if (row) row.tr.classList.add("selected");
  }
}

/** The whole table from `list` (the API's order): rows already shown are updated in
 * place (only the cells that changed), new ones built, gone ones removed. */
function renderContainers(list) {
  const t0 = performance.now();
  const now = Date.now();
  const filter = currentFilter();
  const old = rows;
  const fresh = new Map();
  containers = new Map(list.map((c) => [c.name, c]));
  let inOrder = true;
  let at = tbody.firstElementChild;
  for (const c of list) {
    let row = old.get(c.name);
    if (row) fillRow(row, c, now, filter);
    else row = makeRow(c, now, filter);
    fresh.set(c.name, row);
    if (inOrder && row.tr === at) at = at.nextElementSibling;
    else inOrder = false;
  }
  if (!inOrder || at !== null) {
    const fragment = document.createDocumentFragment();
    for (const row of fresh.values()) fragment.append(row.tr);
    tbody.replaceChildren(fragment);
  }
  rows = fresh;
  markSelected();
  updateCount();
  performance.measure("balut:render:containers", { start: t0, end: performance.now() });
}

/** `GET /v1/containers`, shown. */
export async function readContainers() {
  const answer = await api("/v1/containers");
  renderContainers(answer.containers || []);
}

/** One container's fresh status: its row updated (or added). */
export function updateContainer(c) {
  containers.set(c.name, c);
  const row = rows.get(c.name);
  if (row) {
    fillRow(row, c, Date.now(), currentFilter());
  } else {
    const fresh = makeRow(c, Date.now(), currentFilter());
    rows.set(c.name, fresh);
    tbody.append(fresh.tr);
  }
  updateCount();
}

/** What an event says of a container, shown in its row at once (the fetch that follows
 * fills in the rest): a transition's new state, readiness, a liveness verdict. */
export function applyEvent(ev) {
  const c = containers.get(ev.container);
  const row = rows.get(ev.container);
  if (!c || !row) return;
  let next = null;
  if (ev.type === "state") next = { ...c, state: ev.to, since: ev.at };
  else if (ev.type === "readiness") next = { ...c, ready: ev.ready };
  else if (ev.type === "health") next = { ...c, health: { ...c.health, healthy: ev.healthy, message: ev.message } };
  if (next === null) return;
  containers.set(next.name, next);
  fillRow(row, next, Date.now(), currentFilter());
  updateCount();
}

export function forgetContainer(name) {
  containers.delete(name);
  const row = rows.get(name);
  if (row) row.tr.remove();
  rows.delete(name);
  updateCount();
}

/** The row of `name` marked as the one whose detail is open (`null`: none). */
export function select(name) {
  selected = name;
  markSelected();
}

/** Where the focus goes back to when the detail of `name` closes without its opener: the
 * container's link, or the filter box when it has no row. */
export function focusTarget(name) {
  const row = rows.get(name);
  return row ? row.cells.link : filterInput;
}

function applyFilter() {
  const f = currentFilter();
  for (const [name, row] of rows) {
    const c = containers.get(name);
    row.match = c ? matches(c, f) : true;
    if (row.tr.hidden === row.match) row.tr.hidden = !row.match;
  }
  updateCount();
}

/** The filter box, listened to. */
export function watchFilter() {
  filterInput.addEventListener("input", applyFilter);
}

/** `/`: the filter box focused, its text selected. */
export function focusFilter() {
  filterInput.focus();
  filterInput.select();
}

/** Escape in the filter box (`target`): its text cleared, when it has any. */
export function clearFilter(target) {
  if (target === filterInput && filterInput.value) { filterInput.value = ""; applyFilter(); }
}

/** Each second: the uptimes and retry countdowns. */
export function tickContainers(now) {
  for (const [name, row] of rows) {
    const c = containers.get(name);
    if (!c) continue;
    if (c.state === "running") setText(row.cells.uptime, uptimeText(c, now));
    if (c.next_retry) setText(row.cells["next-retry"], retryText(c, now));
  }
}
