//! Writing to stdout without `println!`, which panics when the reader has gone
//! (`balut events | head -1`): every write goes through the locked stdout and is flushed,
//! and a closed pipe becomes [`ReaderGone`], which the commands treat as a normal end.

use std::io::{self, Write};

/// The reader of stdout has gone (`EPIPE`): nothing more can be shown, and nothing is wrong.
#[derive(Debug)]
pub struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of stdout has gone")
    }
}

impl std::error::Error for ReaderGone {}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => anyhow::Error::new(ReaderGone),
            _ => anyhow::Error::new(e).context("writing to stdout"),
        })
}

/// Writes `line` and a newline to stdout and flushes them.
pub fn line(line: &str) -> anyhow::Result<()> {
    print(&format!("{line}\n"))
}

/// `result`, with an end by a closed stdout turned into `Ok(value)`.
pub fn ended_by_reader<T>(result: anyhow::Result<T>, value: T) -> anyhow::Result<T> {
    match result {
        Err(e) if e.downcast_ref::<ReaderGone>().is_some() => Ok(value),
        other => other,
    }
}
