// What the buttons ask of the host: start, stop (after the confirm dialog) and restart a
// container, read the config file again; their outcomes as notices.

import { $ } from "./dom.js";
import { modal, notice, post } from "./api.js";
import { updateContainer } from "./containers.js";
import { containerStale, listStale } from "./sync.js";

const PAST = { start: "started", stop: "stopped", restart: "restarted" };

const confirmDialog = $("#confirm-dialog");
const confirmMessage = $("#confirm-message");

/** Whether the confirm dialog is showing. */
export function confirming() {
  return confirmDialog.open;
}

function confirmStop(name) {
  confirmMessage.textContent = `Stop container “${name}”? It stays stopped until started again.`;
  const no = confirmDialog.querySelector('[data-confirm="no"]');
  return modal(confirmDialog, false, (done) => {
    confirmDialog.querySelector('[data-confirm="yes"]').onclick = () => done(true);
    no.onclick = () => done(false);
  }, no);
}

export async function act(action, name, opener) {
  if (action === "stop" && !(await confirmStop(name))) {
    if (opener) opener.focus();
    return;
  }
  if (opener) opener.focus();
  try {
    const c = await post(`/v1/containers/${encodeURIComponent(name)}/${action}`);
    if (c && c.name) {
      updateContainer(c);
      containerStale(c.name);
    }
    notice("ok", `${name}: ${PAST[action]} (now ${c && c.state ? c.state : "asked"})`);
  } catch (e) {
    notice("error", `${action} ${name}: ${e.message}`);
  }
}

export async function reloadConfig() {
  try {
    const r = await post("/v1/reload");
    const parts = [];
    for (const key of ["added", "removed", "changed"]) {
      if (r[key] && r[key].length) parts.push(`${key} ${r[key].join(", ")}`);
    }
    if (r.needs_restart && r.needs_restart.length) parts.push(`needs a restart of balut for ${r.needs_restart.join(", ")}`);
    const same = (r.unchanged || []).length;
    notice("ok", `Config reloaded: ${parts.length ? parts.join("; ") : "nothing changed"}${same ? ` (${same} unchanged)` : ""}.`);
    listStale();
  } catch (e) {
    notice("error", `reload: ${e.message}`);
  }
}
