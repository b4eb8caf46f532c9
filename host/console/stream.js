// The event stream: one EventSource on /v1/events, opened again with backoff when the
// browser gives up, resuming after the last event seen; and the connection badge.

import { $ } from "./dom.js";

const EVENT_TYPES = ["state", "readiness", "health", "loaded", "unloaded", "reloaded",
  "replaced", "rolled_back", "refused", "removed"];

const badge = $("#connection");

let lastEventId = null;
let current = null; // the EventSource
let attempt = 0;
let everOpen = false;
let streamOpen = false;
let reconnectTimer = null;
/** What the page does with the stream: `open(source, reconnected)`, `event(ev)`, `lost()`. */
let hooks = null;

/** Whether the stream is open now. */
export function live() {
  return streamOpen;
}

/** Whether `source` is still the page's stream, and open. */
export function stillOpen(source) {
  return current === source && source.readyState === EventSource.OPEN;
}

/** Opens the stream, and keeps it open, telling `handlers` what happens to it. */
export function openStream(handlers) {
  hooks = handlers;
  connect();
}

function onEvent(message) {
  let ev;
  try { ev = JSON.parse(message.data); } catch { return; }
  if (message.lastEventId) lastEventId = message.lastEventId;
  else if (ev.id != null) lastEventId = String(ev.id);
  hooks.event(ev);
}

function setConnection(kind, text) {
  badge.dataset.state = kind;
  badge.textContent = text;
}

function connect() {
  clearTimeout(reconnectTimer);
  const url = lastEventId == null ? "/v1/events?since=0" : `/v1/events?since=${encodeURIComponent(lastEventId)}`;
  const source = new EventSource(url);
  current = source;
  source.addEventListener("open", () => {
    if (current !== source) return;
    const reconnected = everOpen;
    everOpen = true;
    attempt = 0;
    streamOpen = true;
    setConnection("live", "Live");
    hooks.open(source, reconnected);
  });
  source.addEventListener("error", () => {
    if (current !== source) return;
    attempt += 1;
    streamOpen = false;
    hooks.lost();
    const what = `Reconnecting… host unreachable (attempt ${attempt})`;
    setConnection(everOpen ? "reconnecting" : "connecting", everOpen ? what : `Connecting… (attempt ${attempt})`);
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an answer that was not a stream): try again ourselves.
      if (everOpen) setConnection("reconnecting", what);
      const delay = Math.min(5000, 1000 * 2 ** Math.min(attempt - 1, 3));
      reconnectTimer = setTimeout(connect, delay);
    }
  });
  source.addEventListener("message", onEvent);
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
}
