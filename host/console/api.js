// The host's HTTP API as the page uses it: requests and their errors, the bearer token
// (kept in session storage) and its dialog, and the notice line that reports outcomes.

import { $ } from "./dom.js";

const TOKEN_KEY = "balut.token";
const REASONS = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
  422: "Unprocessable Entity", 500: "Internal Server Error", 502: "Bad Gateway",
  503: "Service Unavailable",
};

const noticeEl = $("#notice");
const tokenDialog = $("#token-dialog");
const tokenInput = $("#token-input");

/** Whether the host wants a token for actions (what `GET /v1/host` last said). */
let tokenRequired = false;

// ---------- notices ----------

let noticeTimer = null;
export function notice(kind, text) {
  noticeEl.hidden = false;
  noticeEl.dataset.kind = kind;
  noticeEl.textContent = text;
  clearTimeout(noticeTimer);
  if (kind === "ok") noticeTimer = setTimeout(() => { noticeEl.hidden = true; }, 15000);
}

/** An API answer that is not 2xx, as an Error naming its status and message. */
export class HttpError extends Error {
  constructor(status, message) {
    super(`${status} ${REASONS[status] || "Error"}: ${message}`);
    this.status = status;
  }
}

export async function api(path, options = {}) {
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

export function fail(what) {
  return (e) => notice("error", what ? `${what}: ${e.message}` : e.message);
}

// ---------- the token ----------

/** What the host said about tokens: `required` is truthy when actions need one. */
export function requireToken(required) {
  tokenRequired = required;
}

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

/** Shows `dialog` modally; `wire(done)` sets its buttons up; resolves with what
 * `done` is given (`fallback` when it is closed otherwise, e.g. by Escape). */
export function modal(dialog, fallback, wire, focus) {
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

/** Whether the token dialog is showing. */
export function askingToken() {
  return tokenDialog.open;
}

function askToken() {
  tokenInput.value = "";
  return modal(tokenDialog, null, (done) => {
    $("#token-form").onsubmit = (e) => {
      e.preventDefault();
      const value = tokenInput.value.trim();
      if (!value) { tokenInput.focus(); return; }
      try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* private mode: kept for this action only */ }
      done(value);
    };
    $("#token-cancel").onclick = () => done(null);
  }, tokenInput);
}

/** A POST with the token when the host wants one (asked once per session). */
export async function post(path) {
  let secret = token();
  if (!secret && tokenRequired) {
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
