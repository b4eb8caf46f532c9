// Balut console: live view of the host through its HTTP API and event stream.
// Plain modern JavaScript modules, no framework, no build step; every text from the API
// goes through textContent, never innerHTML. This is the entry: it wires the page's
// clicks, keys and address to the feature modules, opens the stream and reads the host.

import { $ } from "./dom.js";
import { askingToken, fail, notice } from "./api.js";
import { act, confirming, reloadConfig } from "./actions.js";
import { clearFilter, focusFilter, tickContainers, watchFilter } from "./containers.js";
import { closeDetail, isOpen, openDetail, stopLogs, tickDetail } from "./detail.js";
import { addEvent, watchEventsFilter } from "./events.js";
import { openStream } from "./stream.js";
import { eventArrived, readAll, streamOpened } from "./sync.js";

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
watchFilter();
watchEventsFilter();

document.addEventListener("keydown", (e) => {
  const typing = e.target instanceof HTMLElement && (e.target.isContentEditable
    || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName));
  if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault();
    focusFilter();
  } else if (e.key === "Escape") {
    if (confirming() || askingToken()) return; // the dialog closes itself
    if (isOpen()) { e.preventDefault(); closeDetail(true); }
    else if (typing) clearFilter(e.target);
  }
});

function routeFromLocation() {
  const m = location.pathname.match(/^\/ui\/containers\/([^/]+)\/?$/);
  if (m) {
    let name;
    try { name = decodeURIComponent(m[1]); } catch { name = m[1]; }
    openDetail(name, { push: false });
  } else if (isOpen()) {
    closeDetail(false);
  }
}

window.addEventListener("popstate", routeFromLocation);
window.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  notice("error", `unexpected: ${e.reason && e.reason.message ? e.reason.message : e.reason}`);
});

setInterval(() => {
  const now = Date.now();
  tickContainers(now);
  tickDetail(now);
}, 1000);
openStream({
  open: streamOpened,
  event: (ev) => {
    addEvent(ev);
    eventArrived(ev);
  },
  // The detail's log stream goes with the event stream (followed again after the full read).
  lost: stopLogs,
});
// The first read does not wait for the stream: events it already shows are skipped.
readAll(false).catch((e) => notice("error", `reading the host's state: ${e.message}`));
routeFromLocation();
