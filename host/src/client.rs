//! The client side of the CLI: talks to a running host's HTTP API.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::StatusArgs;

fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let url = format!("http://{addr}{path}");
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            bail!("no balut host is listening on {addr} (connection refused)")
        }
        Err(e) => bail!("no balut host reachable at {addr}: {e}"),
    };
    let status = response.status();
    let body: Value = response.body_mut().read_json().with_context(|| {
        format!("{url} did not answer with JSON; is a balut host listening on {addr}?")
    })?;
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    Ok(body)
}

/// `balut status`: prints the containers as a table or as JSON. Returns whether every
/// container is healthy (none failed).
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let body = get_json(&args.addr, "/v1/containers")?;
    let containers = body["containers"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", table(&containers));
    }
    Ok(!containers.iter().any(|c| c["state"] == "failed"))
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(containers: &[Value]) -> String {
    let header = [
        "NAME", "PLUGIN", "VERSION", "GEN", "STATE", "SINCE", "ERROR",
    ];
    let rows: Vec<[String; 7]> = containers
        .iter()
        .map(|c| {
            [
                text(&c["name"]),
                text(&c["plugin"]),
                text(&c["version"]),
                text(&c["generation"]),
                text(&c["state"]),
                text(&c["since"]),
                text(&c["last_error"]),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(no containers)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let rows = [
            json!({"name": "web", "plugin": "http-echo", "version": "0.1.0", "generation": 1,
                   "state": "running", "since": "2026-01-01T00:00:00.000Z", "last_error": null}),
            json!({"name": "chaos-start", "plugin": "chaos", "version": null, "generation": null,
                   "state": "failed", "since": "2026-01-01T00:00:00.000Z", "last_error": "boom"}),
        ];
        let out = table(&rows);
        let lines: Vec<_> = out.lines().collect();
        assert!(lines[0].starts_with("NAME         PLUGIN"));
        assert!(lines[1].starts_with("web          http-echo  0.1.0"));
        assert!(lines[2].ends_with("failed   2026-01-01T00:00:00.000Z  boom"));
    }
}
