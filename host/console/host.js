// The host itself, as `GET /v1/host` tells it: its version and identity in the header,
// whether actions need a token, and the newest event a state read reflects.

import { $ } from "./dom.js";
import { api, requireToken } from "./api.js";

const version = $("#host-version");
const extra = $("#host-extra");

let host = null;

/** `GET /v1/host`, shown; whether the host restarted (another pid or start time) since
 * the last answer. */
export async function readHost() {
  const before = host;
  const answer = await api("/v1/host");
  host = answer;
  requireToken(Boolean(answer && answer.token_required));
  version.textContent = answer.version;
  extra.textContent = `interface ${answer.interface} · pid ${answer.pid}`;
  extra.title = `plugin folder ${answer.plugin_dir}${answer.config_file ? `, config ${answer.config_file}` : ""}; started ${answer.started_at}`;
  return Boolean(before && (before.pid !== answer.pid || before.started_at !== answer.started_at));
}

/** The id of the newest event the last answer's state reflects (`null`: not told). */
export function lastEventShown() {
  return typeof host.last_event_id === "number" ? host.last_event_id : null;
}
