// The events list (newest first, at most MAX_EVENTS) and its filter.

import { $, h } from "./dom.js";
import { clock } from "./format.js";

const MAX_EVENTS = 500;

const list = $("#events");
const filterInput = $("#events-filter");

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

export function addEvent(ev) {
  const bad = ev.type === "refused" || ev.type === "rolled_back"
    || (ev.type === "state" && ["failed", "backoff", "quarantined"].includes(ev.to))
    || (ev.type === "health" && !ev.healthy);
  const li = h("li", { "data-id": ev.id, "data-type": ev.type, class: bad ? "ev-bad" : null },
    h("span", { class: "ev-time", text: clock(ev.at) }),
    h("span", { class: "ev-type", text: ev.type }),
    h("span", { class: "ev-text", text: eventText(ev) }));
  li.title = ev.at;
  const f = filterInput.value.trim().toLowerCase();
  li.hidden = !eventMatches(li, f);
  list.prepend(li);
  while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
}

/** The events filter box, listened to. */
export function watchEventsFilter() {
  filterInput.addEventListener("input", () => {
    const f = filterInput.value.trim().toLowerCase();
    for (const li of list.children) li.hidden = !eventMatches(li, f);
  });
}
