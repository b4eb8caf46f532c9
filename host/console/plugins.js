// The plugin files table, the folder line and the generations that could not be unloaded.

import { $, h } from "./dom.js";
import { api } from "./api.js";

const tbody = $("#plugins tbody");
const folderLine = $("#folder");
const notUnloaded = $("#not-unloaded");

function renderPlugins(answer) {
  const plugins = answer.plugins || [];
  const fragment = document.createDocumentFragment();
  for (const p of plugins) {
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
  tbody.replaceChildren(fragment);
  const folder = answer.folder || {};
  const where = folder.path ? `folder ${folder.path}` : "";
  folderLine.textContent = folder.error ? `${where} — lost: ${folder.error}` : `${where}${folder.watching === false ? " (not watched)" : ""}`;
  folderLine.className = folder.error ? "health-bad" : "muted";
  const stuck = answer.not_unloaded || [];
  notUnloaded.hidden = stuck.length === 0;
  notUnloaded.replaceChildren(...stuck.map((n) => h("li", {
    text: `${n.file} generation ${n.generation} (${n.plugin}) could not be unloaded: ${n.reason}`,
  })));
}

/** `GET /v1/plugins`, shown. */
export async function readPlugins() {
  renderPlugins(await api("/v1/plugins"));
}
