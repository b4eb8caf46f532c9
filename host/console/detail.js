// The detail panel of one container: its summary, state history, probe chart, the log
// lines it follows while open, and its config.

import { $, h } from "./dom.js";
import { HttpError, api, fail, notice } from "./api.js";
import { clock, healthText, retryText, uptimeText } from "./format.js";
import { focusTarget, select } from "./containers.js";

const MAX_LOG_LINES = 500;

const panel = $("#detail");
const title = $("#detail-title");
const stateBadge = $("#detail-state");
const summary = $("#detail-summary");
const historyList = $("#detail-history");
const chart = $("#probe-chart");
const logs = $("#detail-logs");
const logsState = $("#logs-state");
const config = $("#detail-config");
const configNote = $("#config-note");

/** The open detail: { name, logs: AbortController|null, opener: Element|null, data }. */
let detail = null;

/** Whether a detail is open. */
export function isOpen() {
  return detail !== null;
}

export function openDetail(name, how) {
  if (detail && detail.name !== name) stopLogs();
  const opener = how && how.opener ? how.opener : (detail ? detail.opener : null);
  const same = detail && detail.name === name;
  if (!same) detail = { name, logs: null, opener, data: null };
  panel.dataset.name = name;
  panel.hidden = false;
  title.textContent = name;
  if (!same) {
    stateBadge.textContent = "";
    summary.replaceChildren();
    historyList.replaceChildren();
    chart.replaceChildren();
    logs.replaceChildren();
    config.textContent = "";
    configNote.textContent = "";
  }
  const path = `/ui/containers/${encodeURIComponent(name)}`;
  if (how && how.push && location.pathname !== path) history.pushState({ name }, "", path);
  select(name);
  panel.focus();
  refreshDetail().catch(fail(`reading ${name}`));
  if (!detail.logs) followLogs(name);
}

export function closeDetail(push) {
  if (!detail) return;
  const { opener, name } = detail;
  stopLogs();
  detail = null;
  panel.hidden = true;
  panel.removeAttribute("data-name");
  if (push && location.pathname !== "/ui/") history.pushState({}, "", "/ui/");
  select(null);
  const target = opener && opener.isConnected ? opener : focusTarget(name);
  target.focus();
}

/** The open detail of `name` told its container is gone. */
export function detailGone(name) {
  if (!detail || detail.name !== name) return;
  stateBadge.textContent = "gone";
  stateBadge.className = "state st-stopped";
  logsState.textContent = "(the container is no longer registered)";
}

export async function refreshDetail() {
  if (!detail) return;
  const name = detail.name;
  try {
    const c = await api(`/v1/containers/${encodeURIComponent(name)}`);
    if (detail && detail.name === name) renderDetail(c);
  } catch (e) {
    if (e.status === 404 && detail && detail.name === name) {
      detailGone(name);
      notice("error", `no container named ${name} on this host`);
      return;
    }
    throw e;
  }
}

/** After a full read: the open detail read again, its logs followed again if they stopped. */
export function readDetailAgain() {
  if (detail) {
    refreshDetail().catch(fail(`reading ${detail.name}`));
    if (!detail.logs) followLogs(detail.name);
  }
}

/** The name of the open detail's container (`null`: none open). */
export function openName() {
  return detail ? detail.name : null;
}

/** `c`, the fresh status of `name`, shown when its detail is open. */
export function updateDetail(name, c) {
  if (detail && detail.name === name) renderDetail(c);
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
  summary.replaceChildren(...nodes);
}

/** Each second: the open detail's uptime and retry countdown. */
export function tickDetail(now) {
  if (detail && detail.data) renderSummary(detail.data, now);
}

function renderDetail(c) {
  detail.data = c;
  stateBadge.textContent = c.state;
  stateBadge.className = `state st-${c.state}`;
  renderSummary(c, Date.now());
  const items = (c.history || []).map((t) => h("li", null,
    h("span", { class: "when", text: clock(t.at) }), " ",
    h("span", { class: `state st-${t.to}`, text: `${t.from} → ${t.to}` }),
    t.reason ? h("span", { class: "reason", text: ` ${t.reason}` }) : ""));
  historyList.replaceChildren(...items);
  renderChart(c.probes || []);
  if (c.config == null) {
    config.textContent = "null";
    configNote.textContent = "No entry in the config file: the plugin's default instance.";
  } else {
    config.textContent = JSON.stringify(c.config, null, 2);
    configNote.textContent = "Its entry in the config file, as resolved.";
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
  chart.replaceChildren(...nodes);
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
  const stick = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
  logs.append(...lines.map(logLine));
  while (logs.childElementCount > MAX_LOG_LINES) logs.firstElementChild.remove();
  if (stick) logs.scrollTop = logs.scrollHeight;
}

/** The open detail's log stream ended (also when the event stream is lost). */
export function stopLogs() {
  if (detail && detail.logs) {
    detail.logs.abort();
    detail.logs = null;
  }
}

/** Streams the container's log lines while its detail is open. */
async function followLogs(name) {
  const controller = new AbortController();
  detail.logs = controller;
  logs.replaceChildren();
  logsState.textContent = "(following)";
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
    if (detail && detail.logs === controller) {
      logsState.textContent = "(the stream ended)";
      detail.logs = null;
    }
  } catch (e) {
    if (controller.signal.aborted) return;
    if (detail && detail.logs === controller) {
      detail.logs = null;
      logsState.textContent = `(not following: ${e.message})`;
    }
  }
}
