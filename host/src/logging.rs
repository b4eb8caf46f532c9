//! The host's log output: human-readable text by default, or one JSON object per line.
//!
//! In JSON, a plugin's own `key=value` fields become top-level keys of its lines (a
//! plugin's field names are only known at run time, which `tracing` fields cannot be, so
//! the host passes them as one JSON-encoded `plugin_fields` field and this formatter
//! spreads it out).

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether log lines are JSON (then plugin fields travel as `plugin_fields`).
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Installs the global subscriber; `RUST_LOG` sets the filter (default `info`).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            builder
                .fmt_fields(JsonFields::new())
                .event_format(PluginFieldsJson {
                    inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                })
                .init();
        }
    }
}

/// tracing-subscriber's JSON format, with `plugin_fields` spread into the line.
struct PluginFieldsJson {
    inner: Format<Json>,
}

impl<S, N> FormatEvent<S, N> for PluginFieldsJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&spread_plugin_fields(&line))
    }
}

/// Moves the keys of a JSON-encoded `plugin_fields` string to the top level (existing
/// keys win); any other line is returned as it is.
fn spread_plugin_fields(line: &str) -> String {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(line.trim_end()) else {
        return line.to_owned();
    };
    let Some(Value::String(encoded)) = object.remove("plugin_fields") else {
        return line.to_owned();
    };
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&encoded) {
        for (key, value) in fields {
            object.entry(key).or_insert(value);
        }
    }
    format!("{}\n", Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_fields_become_top_level_keys() {
        let line = r#"{"level":"INFO","message":"listening","container":"web","plugin_fields":"{\"addr\":\"127.0.0.1:8080\",\"level\":\"x\"}"}"#;
        let out: Value = serde_json::from_str(&spread_plugin_fields(line)).unwrap();
        assert_eq!(out["addr"], "127.0.0.1:8080");
        assert_eq!(out["level"], "INFO", "the host's keys win");
        assert!(out.get("plugin_fields").is_none());
        assert_eq!(spread_plugin_fields("{\"a\":1}\n"), "{\"a\":1}\n");
        assert_eq!(spread_plugin_fields("not json\n"), "not json\n");
    }
}
