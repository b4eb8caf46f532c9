//! Each container's recent log lines: the lines its plugin logged through its `Context`
//! (`services.rs`, whatever the isolation), kept in memory per container for
//! `GET /v1/containers/{name}/logs` and `balut logs`. The board owns them (`status.rs`):
//! a container's lines go when it is deregistered.
//!
//! Bounded twice: at most [`MAX_LINES`] lines and about [`MAX_BYTES`] bytes per container;
//! the oldest lines make room. Writers are plugin threads (never blocked for long: one
//! short lock per line); readers take a copy of the lines they want, or follow new ones
//! through the same `watch` channel, which wakes them after each line.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use tokio::sync::watch;

/// The most lines kept per container.
pub const MAX_LINES: usize = 1000;
/// About the most bytes (messages, field keys and values) kept per container.
pub const MAX_BYTES: usize = 1024 * 1024;

/// One line a container logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Its number among the container's lines (from 1; never reused while it is registered).
    pub seq: u64,
    pub at: SystemTime,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    pub message: String,
    /// The plugin's fields, in the order it gave them.
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    fn bytes(&self) -> usize {
        self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// `{"at": ..., "level": ..., "message": ..., "fields": {...}}`, fields in the plugin's
/// order (a key given twice appears twice).
impl Serialize for LogLine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Fields<'a>(&'a [(String, String)]);
        impl Serialize for Fields<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (key, value) in self.0 {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
        let mut line = serializer.serialize_struct("LogLine", 4)?;
        line.serialize_field("at", &crate::model::rfc3339(self.at))?;
        line.serialize_field("level", self.level)?;
        line.serialize_field("message", &self.message)?;
        line.serialize_field("fields", &Fields(&self.fields))?;
        line.end()
    }
}

/// What one container's buffer holds, as its watch channel carries it.
#[derive(Debug, Default)]
pub struct Kept {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    next_seq: u64,
    /// The container was deregistered: no line comes any more (followers stop).
    pub closed: bool,
}

impl Kept {
    fn push(&mut self, mut line: LogLine) {
        self.next_seq += 1;
        line.seq = self.next_seq;
        self.bytes += line.bytes();
        self.lines.push_back(Arc::new(line));
        while self.lines.len() > MAX_LINES || (self.bytes > MAX_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.bytes();
            }
        }
    }

    /// The last `n` lines (all kept when `None`), oldest first.
    pub fn last(&self, n: Option<usize>) -> Vec<Arc<LogLine>> {
        let n = n.unwrap_or(usize::MAX).min(self.lines.len());
        self.lines.range(self.lines.len() - n..).cloned().collect()
    }

    /// The lines after line `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<Arc<LogLine>> {
        let start = self.lines.partition_point(|l| l.seq <= seq);
        self.lines.range(start..).cloned().collect()
    }

    /// The number of the last line logged (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }
}

/// One container's recent lines, shared by its instances' services and the API.
#[derive(Debug)]
pub struct ContainerLog {
    kept: watch::Sender<Kept>,
}

impl Default for ContainerLog {
    fn default() -> Self {
        Self {
            kept: watch::Sender::new(Kept::default()),
        }
    }
}

impl ContainerLog {
    /// Keeps a line (dropping the oldest beyond the bounds) and wakes the followers.
    pub fn push<'a>(
        &self,
        level: &'static str,
        message: &str,
        fields: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        let line = LogLine {
            seq: 0,
            at: SystemTime::now(),
            level,
            message: message.to_owned(),
            fields: fields.map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        };
        self.kept.send_modify(|kept| {
            if !kept.closed {
                kept.push(line);
            }
        });
    }

    /// The last `n` lines (all kept when `None`), oldest first.
    pub fn last(&self, n: Option<usize>) -> Vec<Arc<LogLine>> {
        self.kept.borrow().last(n)
    }

    /// A receiver that sees every change from now on (read it with `borrow_and_update`).
    pub fn subscribe(&self) -> watch::Receiver<Kept> {
        self.kept.subscribe()
    }

    fn close(&self) {
        self.kept.send_modify(|kept| kept.closed = true);
    }
}

/// Every registered container's recent lines.
#[derive(Debug, Default)]
pub struct Logs {
    by_container: Mutex<HashMap<String, Arc<ContainerLog>>>,
}

impl Logs {
    /// The buffer of `container`, made if it has none yet.
    pub fn for_container(&self, container: &str) -> Arc<ContainerLog> {
        self.lock().entry(container.to_owned()).or_default().clone()
    }

    /// The buffer of `container`, if it has one.
    #[cfg(test)]
    pub fn get(&self, container: &str) -> Option<Arc<ContainerLog>> {
        self.lock().get(container).cloned()
    }

    /// Drops `container`'s lines (it was deregistered); its followers' streams end. An
    /// instance still stopping writes into the closed buffer, which nobody can read.
    pub fn remove(&self, container: &str) {
        if let Some(log) = self.lock().remove(container) {
            log.close();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ContainerLog>>> {
        self.by_container
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(log: &ContainerLog, message: &str) {
        log.push("info", message, [("k", "v")].into_iter());
    }

    #[test]
    fn keeps_the_last_lines_within_both_bounds() {
        let log = ContainerLog::default();
        for i in 0..MAX_LINES + 5 {
            push(&log, &format!("line {i}"));
        }
        let all = log.last(None);
        assert_eq!(all.len(), MAX_LINES);
        assert_eq!(all[0].message, "line 5");
        assert_eq!(all[0].seq, 6);
        let two = log.last(Some(2));
        let messages: Vec<&str> = two.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                format!("line {}", MAX_LINES + 3),
                format!("line {}", MAX_LINES + 4)
            ]
        );
        assert_eq!(log.last(Some(0)).len(), 0);

        let big = "x".repeat(MAX_BYTES / 4);
        for _ in 0..10 {
            push(&log, &big);
        }
        let kept = log.last(None);
        assert!(kept.len() <= 4, "{} big lines kept", kept.len());
        let bytes: usize = kept.iter().map(|l| l.bytes()).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
    }

    #[test]
    fn lines_after_a_number_and_json() {
        let log = ContainerLog::default();
        push(&log, "a");
        push(&log, "b");
        push(&log, "c");
        let kept = log.subscribe();
        let after: Vec<String> = kept
            .borrow()
            .after(1)
            .iter()
            .map(|l| l.message.clone())
            .collect();
        assert_eq!(after, ["b", "c"]);
        let line = LogLine {
            seq: 1,
            at: SystemTime::UNIX_EPOCH,
            level: "warn",
            message: "disk low".into(),
            fields: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
        };
        assert_eq!(
            serde_json::to_string(&line).ok().as_deref(),
            Some(
                r#"{"at":"1970-01-01T00:00:00.000Z","level":"warn","message":"disk low","fields":{"z":"1","a":"2"}}"#
            )
        );
    }

    #[test]
    fn a_removed_container_keeps_no_lines() {
        let logs = Logs::default();
        let web = logs.for_container("web");
        push(&web, "before");
        assert_eq!(logs.get("web").map(|l| l.last(None).len()), Some(1));
        let mut follower = web.subscribe();
        logs.remove("web");
        assert!(logs.get("web").is_none());
        assert!(follower.borrow_and_update().closed);
        push(&web, "after");
        assert_eq!(web.last(None).len(), 1, "nothing is kept once closed");
        assert!(logs.for_container("web").last(None).is_empty());
    }
}
