//! `balut logs NAME [-f] [-n N]`: a container's recent log lines, one per line, from
//! `GET /v1/containers/{name}/logs` (JSON lines), followed with `-f`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::output::{self, ended_by_reader};
use super::{Endpoint, get_json, is_content_type, text};
use crate::cli::LogsArgs;

/// `balut logs`: prints the kept lines (the last `-n`), then with `-f` each new one until
/// the host stops or the container goes (then exits non-zero, saying which).
pub fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    ended_by_reader(shown(args), ())
}

fn shown(args: &LogsArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::new(&args.endpoint);
    let name = percent_encoded(&args.name);
    let mut path = format!("/v1/containers/{name}/logs?n={}", args.lines);
    if args.follow {
        path.push_str("&follow=1");
    }
    let timeout = (!args.follow).then_some(Duration::from_secs(10));
    let mut response = endpoint
        .agent(timeout)
        .get(endpoint.url(&path))
        .call()
        .map_err(|e| endpoint.unreachable(e))?;
    let from = endpoint.show(&path);
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.body_mut().read_json().with_context(|| {
            format!("{from} did not answer with JSON; is a balut host listening on {endpoint}?")
        })?;
        bail!(
            "{from}: {status}: {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    if !is_content_type(&response, "application/x-ndjson") {
        bail!("{from} did not answer with JSON lines; is a balut host listening on {endpoint}?");
    }
    let reader = BufReader::new(response.body_mut().as_reader());
    for line in reader.lines() {
        let line = match line {
            Ok(line) => line,
            // A stream cut short (the host stopping) is told apart below.
            Err(_) if args.follow => break,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {from}"))),
        };
        if line.trim().is_empty() {
            continue;
        }
        let entry: Value = serde_json::from_str(&line)
            .with_context(|| format!("a malformed log line from {from}: {line:?}"))?;
        if args.json {
            output::line(&entry.to_string())?;
        } else {
            output::line(
                &describe(&entry)
                    .with_context(|| format!("a malformed log line from {from}: {line:?}"))?,
            )?;
        }
    }
    if args.follow {
        // The host ended the stream: say why (no host, or no such container any more).
        get_json(&endpoint, &format!("/v1/containers/{name}"))?;
        bail!("{from}: the host ended the stream (is it stopping?)");
    }
    Ok(())
}

/// `2026-01-01T00:00:00.000Z  INFO message key=value ...`, or `None` when `entry` is not a
/// log line.
fn describe(entry: &Value) -> Option<String> {
    let message = entry["message"].as_str()?;
    let level = entry["level"].as_str()?.to_uppercase();
    let mut line = format!("{} {level:>5} {message}", text(&entry["at"]));
    for (key, value) in entry["fields"].as_object().into_iter().flatten() {
        let value = text(value);
        if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(line, " {key}={value:?}");
        } else {
            let _ = write!(line, " {key}={value}");
        }
    }
    Some(line)
}

/// A container name as a URL path segment.
fn percent_encoded(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_log_line_reads_as_one_line() {
        let entry = json!({"at": "2026-01-01T00:00:00.000Z", "level": "warn",
            "message": "disk low", "fields": {"free": "3%", "path": "/a b"}});
        assert_eq!(
            describe(&entry).as_deref(),
            Some(r#"2026-01-01T00:00:00.000Z  WARN disk low free=3% path="/a b""#)
        );
        assert_eq!(describe(&json!({"level": "info"})), None);
        assert_eq!(percent_encoded("a b/é"), "a%20b%2F%C3%A9");
    }
}
