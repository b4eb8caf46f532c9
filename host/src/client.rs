//! The client side of the CLI: talks to a running host's HTTP API.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{CtlAction, CtlArgs, EventsArgs, Remote, StatusArgs};

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(timeout)
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn unreachable(addr: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!("no balut host is listening on {addr} (connection refused)")
        }
        e => anyhow::anyhow!("no balut host reachable at {addr}: {e}"),
    }
}

/// The token for mutating requests: from `--token-file`, else `BALUT_TOKEN`.
pub fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?,
        ),
        None => std::env::var("BALUT_TOKEN").ok(),
    };
    let token = token.map(|t| t.trim().to_owned());
    if let (Some(file), Some("")) = (file, token.as_deref()) {
        bail!("the token file {} is empty", file.display());
    }
    Ok(token.filter(|t| !t.is_empty()))
}

fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let agent = agent(Some(Duration::from_secs(10)));
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

/// `balut status`: prints the containers as a table or as JSON (or redraws the table on
/// every event with `--watch`). Returns whether no container is failed or quarantined.
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fetch = || -> anyhow::Result<(Value, Vec<Value>)> {
        let body = get_json(&args.addr, "/v1/containers")?;
        let containers = body["containers"].as_array().cloned().unwrap_or_default();
        Ok((body, containers))
    };
    let (body, containers) = fetch()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else if args.watch {
        let clear = if colour { "\x1b[2J\x1b[H" } else { "" };
        print!("{clear}{}", table(&containers, colour));
        std::io::stdout().flush()?;
        follow_events(&args.addr, None, |_event| {
            let (_, containers) = fetch()?;
            print!("{clear}{}", table(&containers, colour));
            std::io::stdout().flush()?;
            Ok(())
        })?;
    } else {
        print!("{}", table(&containers, colour));
    }
    Ok(!containers
        .iter()
        .any(|c| c["state"] == "failed" || c["state"] == "quarantined"))
}

/// `balut ctl`: one control request. Prints the answer; fails on an error answer.
pub fn ctl(args: &CtlArgs) -> anyhow::Result<()> {
    let path = match &args.action {
        CtlAction::Start { name } => format!("/v1/containers/{name}/start"),
        CtlAction::Stop { name } => format!("/v1/containers/{name}/stop"),
        CtlAction::Restart { name } => format!("/v1/containers/{name}/restart"),
        CtlAction::Reload => "/v1/reload".to_owned(),
    };
    let body = post_json(&args.remote, &path)?;
    match &args.action {
        CtlAction::Reload => println!("{}", serde_json::to_string_pretty(&body)?),
        _ => println!(
            "{}: {}{}",
            text(&body["name"]),
            text(&body["state"]),
            body["last_error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    }
    Ok(())
}

fn post_json(remote: &Remote, path: &str) -> anyhow::Result<Value> {
    let token = read_token(remote.token_file.as_deref())?;
    let url = format!("http://{}{path}", remote.addr);
    // Control requests wait for the stop or start they ask for.
    let mut request = agent(Some(Duration::from_secs(120))).post(&url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .send_empty()
        .map_err(|e| unreachable(&remote.addr, e))?;
    let status = response.status();
    let body: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("{url} did not answer with JSON"))?;
    if !status.is_success() {
        bail!("{}: {}", status, body["error"].as_str().unwrap_or("error"));
    }
    Ok(body)
}

/// `balut events`: prints the event stream, one line per event, until the host goes.
pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let json = args.json;
    follow_events(&args.remote.addr, args.since, |event| {
        if json {
            println!("{event}");
        } else {
            println!("{}", describe(&event));
        }
        std::io::stdout().flush()?;
        Ok(())
    })
}

/// One line for an event: id, time, type and its fields.
fn describe(event: &Value) -> String {
    let mut line = format!(
        "{} {} {}",
        text(&event["id"]),
        text(&event["at"]),
        text(&event["type"])
    );
    if let Some(fields) = event.as_object() {
        for (key, value) in fields {
            if !matches!(key.as_str(), "id" | "at" | "type") {
                line.push_str(&format!(" {key}={}", text(value)));
            }
        }
    }
    line
}

/// Reads `GET /v1/events` and calls `each` with every event's JSON, resuming with
/// `Last-Event-ID` when the connection drops while the host is still there.
fn follow_events(
    addr: &str,
    since: Option<u64>,
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last_id = since;
    loop {
        let mut url = format!("http://{addr}/v1/events");
        if let Some(id) = last_id {
            url.push_str(&format!("?since={id}"));
        }
        let mut response = agent(None)
            .get(&url)
            .call()
            .map_err(|e| unreachable(addr, e))?;
        if !response.status().is_success() {
            bail!("{url}: {}", response.status());
        }
        let reader = BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim())
                    .with_context(|| format!("a malformed event from {url}"))?;
                last_id = event["id"].as_u64().or(last_id);
                each(event)?;
            }
        }
        // The stream ended: the host stopped (the next connect says so) or dropped us.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// ANSI colour for a state.
fn paint(state: &str, colour: bool) -> (&'static str, &'static str) {
    if !colour {
        return ("", "");
    }
    let code = match state {
        "running" => "\x1b[32m",
        "failed" | "quarantined" => "\x1b[31m",
        "backoff" | "waiting" | "starting" | "stopping" => "\x1b[33m",
        _ => "",
    };
    if code.is_empty() {
        ("", "")
    } else {
        (code, "\x1b[0m")
    }
}

fn table(containers: &[Value], colour: bool) -> String {
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
            // Column 4 is the state.
            let (on, off) = if i == 4 {
                paint(cell, colour)
            } else {
                ("", "")
            };
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{on}{cell:<width$}{off}  ", width = widths[i]));
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
        let out = table(&rows, false);
        let lines: Vec<_> = out.lines().collect();
        assert!(lines[0].starts_with("NAME         PLUGIN"));
        assert!(lines[1].starts_with("web          http-echo  0.1.0"));
        assert!(lines[2].ends_with("failed   2026-01-01T00:00:00.000Z  boom"));
    }
}
