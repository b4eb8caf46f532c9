//! A plugin's log lines as the host passes them on: cut to a size, fields formatted for
//! the text log or as JSON for the recent lines, and whether a level would be shown at all.

use std::borrow::Cow;
use std::fmt::Write as _;

use balut_plugin_api::ffi::FfiLevel;

/// The longest plugin log message, or field value, passed on whole: a longer one is cut
/// there (on a character boundary) and ends with `… (truncated N bytes)`, so one runaway
/// line cannot flood the log or the host's memory.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// `text`, cut to [`MAX_LOG_BYTES`] with a marker saying how much was left out.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_LOG_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_LOG_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… (truncated {} bytes)",
        &text[..end],
        text.len() - end
    ))
}

/// Formats plugin fields as ` key=value`, quoting values with spaces or quotes.
pub(super) fn format_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(out, " {key}={value:?}");
        } else {
            let _ = write!(out, " {key}={value}");
        }
    }
    out
}

/// Whether the host's log may show plugin lines of `level` (the most verbose level any of
/// its filters lets through, field filters included): a line it cannot show is neither
/// formatted nor kept among the recent lines, so a probe's debug line costs nothing at the
/// default level.
pub(super) fn shows(level: FfiLevel) -> bool {
    let level = match level {
        FfiLevel::Error => tracing::Level::ERROR,
        FfiLevel::Warn => tracing::Level::WARN,
        FfiLevel::Info => tracing::Level::INFO,
        FfiLevel::Debug => tracing::Level::DEBUG,
        FfiLevel::Trace => tracing::Level::TRACE,
    };
    level <= tracing::level_filters::LevelFilter::current()
}

/// Plugin fields as one JSON object text, or `None` when there are none.
pub(super) fn json_fields<'a>(
    fields: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    if fields.len() == 0 {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = fields
        .map(|(key, value)| (key.to_owned(), value.into()))
        .collect();
    Some(serde_json::Value::Object(object).to_string())
}
