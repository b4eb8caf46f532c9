// Keeping the page's copy of the host current: the full read (at start and after each
// reconnection, events held meanwhile), and what events made stale, fetched again once
// per frame, one batch at a time. Owns whether the console is ready (`data-console`).

import { api, fail, notice } from "./api.js";
import { applyEvent, forgetContainer, readContainers, updateContainer } from "./containers.js";
import { detailGone, openName, readDetailAgain, refreshDetail, updateDetail } from "./detail.js";
import { lastEventShown, readHost } from "./host.js";
import { readPlugins } from "./plugins.js";
import { live, stillOpen } from "./stream.js";

const FILE_EVENTS = new Set(["loaded", "unloaded", "reloaded", "rolled_back", "refused", "removed"]);
const MANY = 20;

const html = document.documentElement;

let firstRender = false;
const pending = new Set(); // containers to fetch again
let pendingList = false;
let pendingPlugins = false;
let flushScheduled = false;
let flushing = false;
let syncing = false; // a readAll is in flight: events are held until it is done
let held = [];

function later(fn) {
  if (document.hidden) setTimeout(fn, 100);
  else requestAnimationFrame(fn);
}

/** The whole state again (at start and after each reconnection). Events that arrive
 * meanwhile are held; those the fetched state already shows (ids up to the host's
 * `last_event_id` when it was asked) fetch nothing more. */
export async function readAll(reconnected) {
  pending.clear();
  pendingList = false;
  pendingPlugins = false;
  syncing = true;
  let shown = null;
  try {
    const restarted = await readHost();
    shown = lastEventShown();
    await Promise.all([readContainers(), readPlugins()]);
    readDetailAgain();
    if (restarted) notice("ok", "Reconnected: the host restarted (new pid); everything was read again.");
    else if (reconnected) notice("ok", "Reconnected to the host; everything was read again.");
    firstRender = true;
    readyCheck();
  } finally {
    syncing = false;
    const events = held;
    held = [];
    for (const ev of events) if (shown === null || !(ev.id <= shown)) note(ev);
    scheduleFlush();
  }
}

function readyCheck() {
  if (firstRender && live()) html.dataset.console = "ready";
}

/** The stream (`source`) opened: everything read again after a reconnection, or when the
 * first read is neither done nor under way. */
export function streamOpened(source, reconnected) {
  if (reconnected || (!firstRender && !syncing)) syncWhileOpen(source, reconnected);
  // The first read may have finished before the stream opened.
  else readyCheck();
}

/** readAll, tried again every 2 s while `source` stays open and it fails. */
function syncWhileOpen(source, reconnected) {
  readAll(reconnected).catch((e) => {
    notice("error", `reading the host's state: ${e.message}`);
    setTimeout(() => {
      if (stillOpen(source)) syncWhileOpen(source, reconnected);
    }, 2000);
  });
}

/** An event from the stream: held during a full read, else what it makes stale fetched. */
export function eventArrived(ev) {
  if (syncing) held.push(ev);
  else {
    applyEvent(ev);
    note(ev);
    scheduleFlush();
  }
}

/** What `ev` makes stale: its container, the plugin files, the list. */
function note(ev) {
  if (ev.container) pending.add(ev.container);
  if (FILE_EVENTS.has(ev.type)) {
    pendingPlugins = true;
    // A file's arrival or departure (un)registers its containers.
    if (ev.type === "loaded" || ev.type === "removed" || ev.type === "unloaded") pendingList = true;
  }
}

/** Container `name` to be fetched again (after an action on it). */
export function containerStale(name) {
  pending.add(name);
  scheduleFlush();
}

/** The container list to be fetched again (after a config reload). */
export function listStale() {
  pendingList = true;
  scheduleFlush();
}

/** Fetches what events concerned, once per frame, one batch at a time (so an older
 * answer never lands after a newer one). */
function scheduleFlush() {
  if (flushScheduled || flushing) return;
  flushScheduled = true;
  later(() => {
    flushScheduled = false;
    if (syncing) return; // readAll schedules the flush when it is done
    flushing = true;
    flush().finally(() => {
      flushing = false;
      if (pending.size || pendingList || pendingPlugins) scheduleFlush();
    });
  });
}

async function flush() {
  const names = [...pending];
  pending.clear();
  const jobs = [];
  if (pendingPlugins) {
    pendingPlugins = false;
    jobs.push(readPlugins().catch(fail("reading the plugin files")));
  }
  if (pendingList || names.length > MANY) {
    pendingList = false;
    jobs.push(readContainers().catch(fail("reading the containers")));
    const open = openName();
    if (open !== null && (names.includes(open) || names.length === 0)) {
      jobs.push(refreshDetail().catch(fail(`reading ${open}`)));
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
    updateDetail(name, c);
  } catch (e) {
    if (e.status === 404) {
      forgetContainer(name);
      detailGone(name);
    } else {
      notice("error", `reading ${name}: ${e.message}`);
    }
  }
}
