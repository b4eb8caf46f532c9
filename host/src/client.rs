//! The client side of the CLI: talks to a running host's HTTP API.

use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{CtlAction, CtlArgs, EndpointArgs, EventsArgs, StatusArgs};
use output::ended_by_reader;

mod logs;
mod output;
mod table;
mod unix;

pub use logs::logs;

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

/// `GET path`'s JSON; an error answer, or one that is not JSON, is an error naming it.
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

/// An answer's `key`, which must be a list of objects each with the string fields
/// `strings`; otherwise an error saying the answer is not what a balut host sends.
fn list_of<'a>(
    body: &'a Value,
    key: &str,
    strings: &[&str],
    from: &str,
) -> anyhow::Result<&'a [Value]> {
    let Some(list) = body[key].as_array() else {
        bail!("unexpected answer from {from}: no `{key}` list (is it a balut host?)");
    };
    for item in list {
        if let Some(missing) = strings.iter().find(|k| !item[**k].is_string()) {
            bail!(
                "unexpected answer from {from}: an entry of `{key}` without a `{missing}` string: {item}"
            );
        }
    }
    Ok(list)
}

/// The container list and the plugin files of a host, their shapes checked.
fn fetch_status(endpoint: &Endpoint) -> anyhow::Result<(Value, Value)> {
    let containers = get_json(endpoint, "/v1/containers")?;
    let from = endpoint.show("/v1/containers");
    list_of(&containers, "containers", &["name", "state"], &from)?;
    let plugins = get_json(endpoint, "/v1/plugins")?;
    let from = endpoint.show("/v1/plugins");
    list_of(&plugins, "plugins", &["file", "status"], &from)?;
    Ok((containers, plugins))
}

/// `balut status`: prints the containers and the plugin files that are not loaded as tables
/// or as JSON (or redraws them on every event with `--watch`). Returns whether all is well:
/// no container failed or quarantined, no plugin file refused, the plugin folder there.
pub fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    ended_by_reader(status_shown(args), true)
}

fn status_shown(args: &StatusArgs) -> anyhow::Result<bool> {
    let endpoint = Endpoint::new(&args.endpoint);
    let terminal = std::io::stdout().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none();
    let (containers, plugins) = fetch_status(&endpoint)?;
    let troubled = table::Seen::of(&containers, &plugins).troubled();
    if args.json {
        let mut both = containers;
        if let (Some(all), Some(files)) = (both.as_object_mut(), plugins.as_object()) {
            all.extend(files.clone());
        }
        output::line(&serde_json::to_string_pretty(&both)?)?;
    } else if args.watch {
        // On a terminal the screen is redrawn at each event; elsewhere (a pipe, a file) a
        // table is printed only when it changed, the columns that move by themselves aside.
        let clear = if colour { "\x1b[2J\x1b[H" } else { "" };
        let mut shown = None;
        let mut show = |containers: &Value, plugins: &Value| -> anyhow::Result<()> {
            let seen = table::Seen::of(containers, plugins);
            let now = SystemTime::now();
            let key = table::render(&seen, false, false, now);
            if terminal || shown.as_ref() != Some(&key) {
                let separator = if shown.is_some() && !terminal {
                    "\n"
                } else {
                    ""
                };
                output::print(&format!(
                    "{clear}{separator}{}",
                    table::render(&seen, colour, true, now)
                ))?;
                shown = Some(key);
            }
            Ok(())
        };
        show(&containers, &plugins)?;
        follow_events(&endpoint, None, |_event| {
            let (containers, plugins) = fetch_status(&endpoint)?;
            show(&containers, &plugins)
        })?;
    } else {
        let seen = table::Seen::of(&containers, &plugins);
        output::print(&table::render(&seen, colour, true, SystemTime::now()))?;
    }
    Ok(!troubled)
}

/// `balut ctl`: one control request. Prints the answer; fails on an error answer.
pub fn ctl(args: &CtlArgs) -> anyhow::Result<()> {
    ended_by_reader(ctl_shown(args), ())
}

fn ctl_shown(args: &CtlArgs) -> anyhow::Result<()> {
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
    let from = endpoint.show(&path);
    match &args.action {
        CtlAction::Reload if body.is_object() => {
            output::line(&serde_json::to_string_pretty(&body)?)
        }
        CtlAction::Reload => bail!("unexpected answer from {from}: {body}"),
        _ if !(body["name"].is_string() && body["state"].is_string()) => {
            bail!("unexpected answer from {from}: no container name and state in {body}")
        }
        _ => output::line(&format!(
            "{}: {}{}",
            text(&body["name"]),
            text(&body["state"]),
            body["last_error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
    }
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
    let shown = follow_events(&Endpoint::new(&args.remote.endpoint), args.since, |event| {
        if json {
            output::line(&event.to_string())
        } else {
            output::line(&describe(&event))
        }
    });
    ended_by_reader(shown, ())
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
        let from = endpoint.show(&path);
        if !response.status().is_success() {
            bail!("{from}: {}", response.status());
        }
        if !is_content_type(&response, "text/event-stream") {
            bail!(
                "{from} did not answer with an event stream; is a balut host listening on {endpoint}?"
            );
        }
        let reader = BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim())
                    .with_context(|| format!("a malformed event from {from}"))?;
                if !(event["id"].is_u64() && event["type"].is_string()) {
                    bail!("a malformed event from {from} (no id or type): {event}");
                }
                last_id = event["id"].as_u64().or(last_id);
                each(event)?;
            }
        }
        // The stream ended: the host stopped (the next connect says so) or dropped us.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the answer's `Content-Type` is `expected` (parameters aside).
fn is_content_type(response: &ureq::http::Response<ureq::Body>, expected: &str) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
