//! `balut status`'s tables: the containers, then the plugin files that are not loaded (with
//! their reason), the generations that stay mapped and a lost plugin folder.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::text;

/// What `balut status` shows: the container list and the plugin files, as the API gave them
/// (their shapes checked by the caller).
pub struct Seen<'a> {
    pub containers: &'a [Value],
    pub plugins: &'a Value,
}

impl<'a> Seen<'a> {
    /// The answers of `GET /v1/containers` and `GET /v1/plugins`.
    pub fn of(containers: &'a Value, plugins: &'a Value) -> Self {
        Self {
            containers: containers["containers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
            plugins,
        }
    }

    /// Whether something needs the operator: a container failed or quarantined, a plugin
    /// file refused, or the plugin folder lost.
    pub fn troubled(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c["state"] == "failed" || c["state"] == "quarantined")
            || self.refused().next().is_some()
            || !self.plugins["folder"]["error"].is_null()
    }

    /// The plugin files the host refused.
    fn refused(&self) -> impl Iterator<Item = &Value> {
        self.files().filter(|p| p["status"] == "error")
    }

    fn files(&self) -> impl Iterator<Item = &Value> {
        self.plugins["plugins"].as_array().into_iter().flatten()
    }
}

/// ANSI colour for a state.
fn paint(state: &str, colour: bool) -> (&'static str, &'static str) {
    if !colour {
        return ("", "");
    }
    let code = match state {
        "running" => "\x1b[32m",
        "failed" | "quarantined" | "refused" => "\x1b[31m",
        "backoff" | "waiting" | "starting" | "stopping" | "loading" | "unloading" => "\x1b[33m",
        _ => "",
    };
    if code.is_empty() {
        ("", "")
    } else {
        (code, "\x1b[0m")
    }
}

/// Where a container runs: `host` (a thread of the host), or its process's pid, resident
/// memory and CPU time (process isolation; the pid alone when not `volatile`), `-` while an
/// isolated one has no process.
pub fn process(container: &Value, volatile: bool) -> String {
    let process = &container["process"];
    match process["pid"].as_u64() {
        Some(pid) if !volatile => pid.to_string(),
        Some(pid) => {
            let mib = process["rss_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
            let cpu = process["cpu_seconds"].as_f64().unwrap_or(0.0);
            format!("{pid} {mib:.1}MiB {cpu:.2}s")
        }
        None if container["isolation"] == "process" => "-".to_owned(),
        None => "host".to_owned(),
    }
}

/// How long a running container has run (from `since`), e.g. `42s`, `5m03s`, `2h07m`,
/// `3d04h`; `-` in any other state.
fn uptime(container: &Value, now: SystemTime) -> String {
    if container["state"] != "running" {
        return "-".to_owned();
    }
    let Some(since) = container["since"]
        .as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
    else {
        return "-".to_owned();
    };
    let secs = now
        .duration_since(since)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The last liveness result: `ok`, `failing`, or `-` before the first.
fn health(container: &Value) -> &'static str {
    match container["health"]["healthy"].as_bool() {
        Some(true) => "ok",
        Some(false) => "failing",
        None => "-",
    }
}

/// Lines of cells, aligned in columns (the last one is not padded); `paint_column`'s cells
/// are coloured by their text.
fn aligned(header: &[&str], rows: &[Vec<String>], paint_column: usize, colour: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            let (on, off) = if i == paint_column {
                paint(cell, colour)
            } else {
                ("", "")
            };
            if i == last {
                out.push_str(&format!("{on}{cell}{off}"));
            } else {
                out.push_str(&format!("{on}{cell:<width$}{off}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// The containers' table, then the files' (when any is not loaded). `volatile`: with the
/// columns that change by themselves (uptime, a process's memory and CPU time); without
/// them, two renderings differ only when something happened.
pub fn render(seen: &Seen<'_>, colour: bool, volatile: bool, now: SystemTime) -> String {
    let header = [
        "NAME", "PLUGIN", "VERSION", "GEN", "STATE", "SINCE", "UPTIME", "READY", "HEALTH",
        "RESTARTS", "PROCESS", "ERROR",
    ];
    let rows: Vec<Vec<String>> = seen
        .containers
        .iter()
        .map(|c| {
            vec![
                text(&c["name"]),
                text(&c["plugin"]),
                text(&c["version"]),
                text(&c["generation"]),
                text(&c["state"]),
                text(&c["since"]),
                if volatile {
                    uptime(c, now)
                } else {
                    "-".to_owned()
                },
                match c["ready"].as_bool() {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "no".to_owned(),
                    None => "-".to_owned(),
                },
                health(c).to_owned(),
                text(&c["restarts"]),
                process(c, volatile),
                text(&c["last_error"]),
            ]
        })
        .collect();
    let mut out = aligned(&header, &rows, 4, colour);
    if rows.is_empty() {
        out.push_str("(no containers)\n");
    }
    out.push_str(&files(seen, colour));
    out
}

/// The plugin files that are not loaded, the generations that stay mapped, a lost folder;
/// empty when all is well.
fn files(seen: &Seen<'_>, colour: bool) -> String {
    let mut rows: Vec<Vec<String>> = seen
        .files()
        .filter(|p| p["status"] != "loaded")
        .map(|p| {
            let (status, reason) = match p["status"].as_str().unwrap_or("-") {
                "error" => ("refused", text(&p["error"])),
                "unloaded" => ("unloaded", "valid; no container of it is live".to_owned()),
                "loading" => ("loading", "being checked and opened".to_owned()),
                "unloading" => ("unloading", "its file was removed".to_owned()),
                other => (other, text(&p["error"])),
            };
            vec![
                text(&p["file"]),
                status.to_owned(),
                text(&p["error_kind"]),
                reason,
            ]
        })
        .collect();
    for kept in seen.plugins["not_unloaded"]
        .as_array()
        .into_iter()
        .flatten()
    {
        rows.push(vec![
            text(&kept["file"]),
            "not-unloaded".to_owned(),
            format!("generation {}", text(&kept["generation"])),
            text(&kept["reason"]),
        ]);
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&aligned(
            &["FILE", "STATUS", "KIND", "REASON"],
            &rows,
            1,
            colour,
        ));
    }
    let folder = &seen.plugins["folder"];
    if !folder["error"].is_null() {
        out.push_str(&format!(
            "\nplugin folder {} is lost: {}\n",
            text(&folder["path"]),
            text(&folder["error"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T01:02:03.500Z").expect("a time")
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            json!({"name": "web", "plugin": "http-echo", "version": "0.1.0", "generation": 1,
                   "state": "running", "since": "2026-01-01T00:00:00.000Z", "last_error": null,
                   "health": {"healthy": true}, "ready": true, "restarts": 0}),
            json!({"name": "chaos-start", "plugin": "chaos", "version": null, "generation": null,
                   "state": "failed", "since": "2026-01-01T00:00:00.000Z", "last_error": "boom",
                   "health": null, "ready": false, "restarts": 3}),
        ];
        let plugins = json!({"plugins": [], "not_unloaded": [], "folder": {"error": null}});
        let seen = Seen {
            containers: &rows,
            plugins: &plugins,
        };
        let out = render(&seen, false, true, now());
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME         PLUGIN"), "{out}");
        assert!(
            lines[1].starts_with("web          http-echo  0.1.0"),
            "{out}"
        );
        assert!(
            lines[1].contains(
                "running  2026-01-01T00:00:00.000Z  1h02m   yes    ok      0         host"
            ),
            "{out}"
        );
        assert!(
            lines[2].ends_with(
                "failed   2026-01-01T00:00:00.000Z  -       no     -       3         host     boom"
            ),
            "{out}"
        );
        assert!(!seen.troubled() || rows[1]["state"] == "failed");
        assert!(seen.troubled());
    }

    #[test]
    fn refused_and_unloaded_files_are_listed_with_their_reason() {
        let containers =
            [json!({"name": "web", "state": "running", "since": "2026-01-01T01:02:00Z"})];
        let plugins = json!({
            "plugins": [
                {"file": "a.so", "status": "loaded", "error": null, "error_kind": null},
                {"file": "b.so", "status": "error", "error": "b.so: not an ELF file", "error_kind": "not_elf"},
                {"file": "c.so", "status": "unloaded", "error": null, "error_kind": null}],
            "not_unloaded": [{"file": "d.so", "plugin": "d", "generation": 2, "copy": "x", "reason": "a stuck call"}],
            "folder": {"path": "/srv/plugins", "watching": true, "error": null}});
        let seen = Seen {
            containers: &containers,
            plugins: &plugins,
        };
        assert!(seen.troubled(), "a refused file");
        let out = render(&seen, false, true, now());
        let row = |file: &str| {
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(file))
                .unwrap_or_else(|| panic!("no row for {file}: {out}"))
        };
        assert!(!out.lines().any(|l| l.starts_with("a.so")), "{out}");
        let words = |file: &str| row(file).split_whitespace().take(3).collect::<Vec<_>>();
        assert_eq!(words("b.so"), ["b.so", "refused", "not_elf"], "{out}");
        assert!(row("b.so").ends_with("b.so: not an ELF file"), "{out}");
        assert!(row("c.so").contains("unloaded"), "{out}");
        assert!(row("d.so").contains("not-unloaded") && row("d.so").ends_with("a stuck call"));
        assert!(
            out.lines()
                .find(|l| l.starts_with("web"))
                .is_some_and(|l| l.contains(" 3s "))
        );
    }

    #[test]
    fn uptime_reads_like_a_duration() {
        let at = |since: &str| uptime(&json!({"state": "running", "since": since}), now());
        assert_eq!(at("2026-01-01T01:02:03.000Z"), "0s");
        assert_eq!(at("2026-01-01T01:00:00.000Z"), "2m03s");
        assert_eq!(at("2025-12-30T00:00:00.000Z"), "2d01h");
        assert_eq!(
            at("2027-01-01T00:00:00.000Z"),
            "0s",
            "a clock behind the host's"
        );
        assert_eq!(
            uptime(
                &json!({"state": "stopped", "since": "2026-01-01T00:00:00Z"}),
                now()
            ),
            "-"
        );
    }

    #[test]
    fn an_isolated_container_shows_its_process() {
        let running = json!({"isolation": "process",
            "process": {"pid": 4242, "rss_bytes": 3_250_586, "cpu_seconds": 0.25}});
        assert_eq!(process(&running, true), "4242 3.1MiB 0.25s");
        assert_eq!(process(&running, false), "4242");
        let between = json!({"isolation": "process", "process": null});
        assert_eq!(process(&between, true), "-");
        assert_eq!(
            process(&json!({"isolation": "thread", "process": null}), true),
            "host"
        );
    }
}
