// Time, uptime, duration and health as the page shows them.

export function duration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function clock(iso) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso ?? "");
  return t.toLocaleTimeString(undefined, { hour12: false });
}

export function uptimeText(c, now) {
  if (c.state !== "running" || !c.since) return "—";
  const since = Date.parse(c.since);
  return Number.isNaN(since) ? "—" : duration(now - since);
}

export function retryText(c, now) {
  if (!c.next_retry) return "—";
  const at = Date.parse(c.next_retry);
  if (Number.isNaN(at)) return "—";
  const s = Math.ceil((at - now) / 1000);
  return s > 0 ? `in ${s} s` : "now";
}

export function healthText(c) {
  if (!c.health) return "—";
  return c.health.healthy ? "healthy" : "unhealthy";
}
