//! The client side of the CLI: talks to a running host's HTTP API.

use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{CtlAction, CtlArgs, EndpointArgs, EventsArgs, StatusArgs};

mod unix;

/// Where the host's API is, as the client commands reach it.
#[derive(Debug, Clone)]
enum Endpoint {
    /// `--addr HOST:PORT`: HTTP over TCP, with the token on mutating requests.
    Tcp(String),
    /// `--unix-socket PATH`: HTTP over the owner-only socket, which asks for no token.
    Unix(PathBuf),
}

impl Endpoint {
    fn new(args: &EndpointArgs) -> Endpoint {
        match &args.unix_socket {
            Some(path) => Endpoint::Unix(path.clone()),
            None => Endpoint::Tcp(args.addr.clone()),
        }
    }

    /// The URL of `path` (over the socket the host part is a dummy).
    fn url(&self, path: &str) -> String {
        match self {
            Endpoint::Tcp(addr) => format!("http://{addr}{path}"),
            Endpoint::Unix(_) => format!("http://localhost{path}"),
        }
    }

    /// `path` as error messages name it.
    fn show(&self, path: &str) -> String {
        match self {
            Endpoint::Tcp(_) => self.url(path),
            Endpoint::Unix(_) => format!("{path} on {self}"),
        }
    }

    fn agent(&self, timeout: Option<Duration>) -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .timeout_global(timeout)
            .http_status_as_error(false);
        match self {
            Endpoint::Tcp(_) => config.build().new_agent(),
            // A proxy from the environment must not take a request meant for the socket.
            Endpoint::Unix(path) => unix::agent(path, config.proxy(None).build()),
        }
    }

    /// The error for a request that got no answer.
    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        match (self, e) {
            (Endpoint::Unix(path), ureq::Error::Io(e)) => {
                anyhow::anyhow!(
                    "no balut host reachable at {self}: {}",
                    unix::explain(path, &e)
                )
            }
            (_, ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!("no balut host is listening on {self} (connection refused)")
            }
            (_, e) => anyhow::anyhow!("no balut host reachable at {self}: {e}"),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => f.write_str(addr),
            Endpoint::Unix(path) => write!(f, "the unix socket {}", path.display()),
        }
    }
}

fn get_json(endpoint: &Endpoint, path: &str) -> anyhow::Result<Value> {
    let agent = endpoint.agent(Some(Duration::from_secs(10)));
    let mut response = agent
        .get(endpoint.url(path))
        .call()
        .map_err(|e| endpoint.unreachable(e))?;
    let status = response.status();
    let shown = endpoint.show(path);
    let body: Value = response.body_mut().read_json().with_context(|| {
        format!("{shown} did not answer with JSON; is a balut host listening on {endpoint}?")
    })?;
    if !status.is_success() {
        bail!(
            "{shown}: {status}: {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    Ok(body)
}

/// `balut status`: prints the containers as a table or as JSON (or redraws the table on
/// every event with `--watch`). Returns whether no container is failed or quarantined.
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let endpoint = Endpoint::new(&args.endpoint);
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fetch = || -> anyhow::Result<(Value, Vec<Value>)> {
        let body = get_json(&endpoint, "/v1/containers")?;
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
        follow_events(&endpoint, None, |_event| {
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
    let endpoint = Endpoint::new(&args.remote.endpoint);
    // The socket's file mode is its guard: no token is read or sent there.
    let token = match endpoint {
        Endpoint::Tcp(_) => crate::token::read(args.remote.token_file.as_deref())?,
        Endpoint::Unix(_) => {
            if let Some(file) = &args.remote.token_file {
                eprintln!(
                    "balut ctl: note: the token file {} is not used: the Unix socket asks for no token",
                    file.display()
                );
            }
            None
        }
    };
    let body = post_json(&endpoint, token.as_deref(), &path)?;
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

fn post_json(endpoint: &Endpoint, token: Option<&str>, path: &str) -> anyhow::Result<Value> {
    // Control requests wait for the stop or start they ask for.
    let mut request = endpoint
        .agent(Some(Duration::from_secs(120)))
        .post(endpoint.url(path));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send_empty().map_err(|e| endpoint.unreachable(e))?;
    let status = response.status();
    let body: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("{} did not answer with JSON", endpoint.show(path)))?;
    if !status.is_success() {
        bail!("{}: {}", status, body["error"].as_str().unwrap_or("error"));
    }
    Ok(body)
}

/// `balut events`: prints the event stream, one line per event, until the host goes.
pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    let json = args.json;
    follow_events(&Endpoint::new(&args.remote.endpoint), args.since, |event| {
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
    endpoint: &Endpoint,
    since: Option<u64>,
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last_id = since;
    loop {
        let mut path = "/v1/events".to_owned();
        if let Some(id) = last_id {
            path.push_str(&format!("?since={id}"));
        }
        let mut response = endpoint
            .agent(None)
            .get(endpoint.url(&path))
            .call()
            .map_err(|e| endpoint.unreachable(e))?;
        if !response.status().is_success() {
            bail!("{}: {}", endpoint.show(&path), response.status());
        }
        let reader = BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim())
                    .with_context(|| format!("a malformed event from {}", endpoint.show(&path)))?;
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

/// Where a container runs: `host` (a thread of the host), or its process's pid, resident
/// memory and CPU time (process isolation), `-` while an isolated one has no process.
fn process(container: &Value) -> String {
    let process = &container["process"];
    match process["pid"].as_u64() {
        Some(pid) => {
            let mib = process["rss_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
            let cpu = process["cpu_seconds"].as_f64().unwrap_or(0.0);
            format!("{pid} {mib:.1}MiB {cpu:.2}s")
        }
        None if container["isolation"] == "process" => "-".to_owned(),
        None => "host".to_owned(),
    }
}

fn table(containers: &[Value], colour: bool) -> String {
    let header = [
        "NAME", "PLUGIN", "VERSION", "GEN", "STATE", "SINCE", "PROCESS", "ERROR",
    ];
    let rows: Vec<[String; 8]> = containers
        .iter()
        .map(|c| {
            [
                text(&c["name"]),
                text(&c["plugin"]),
                text(&c["version"]),
                text(&c["generation"]),
                text(&c["state"]),
                text(&c["since"]),
                process(c),
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
        assert!(lines[2].ends_with("failed   2026-01-01T00:00:00.000Z  host     boom"));
    }

    #[test]
    fn an_isolated_container_shows_its_process() {
        let running = json!({"isolation": "process",
            "process": {"pid": 4242, "rss_bytes": 3_250_586, "cpu_seconds": 0.25}});
        assert_eq!(process(&running), "4242 3.1MiB 0.25s");
        let between = json!({"isolation": "process", "process": null});
        assert_eq!(process(&between), "-");
        assert_eq!(
            process(&json!({"isolation": "thread", "process": null})),
            "host"
        );
    }
}
