//! The event log: every state transition, load, unload, reload, rollback and readiness or
//! health change, in order, each with an id. The last [`KEPT`] are kept so a client that
//! reconnects with `Last-Event-ID` misses nothing still held; live subscribers get each
//! event as it is published.
//!
//! Ids grow across runs of the host: a run's first id is past every id an earlier run
//! could have given ([`first_id`]), so a client that comes back to a restarted host with
//! the old run's `Last-Event-ID` gets all that the new run holds, not only the events
//! numbered above its old id.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{State, rfc3339};

/// How many past events are kept for replay.
pub const KEPT: usize = 1024;

/// One event, as `GET /v1/events` sends it (`data:` is this as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: u64,
    pub at: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with a `type` field in snake case.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A container changed state.
    State {
        container: String,
        from: State,
        to: State,
        reason: Option<String>,
    },
    /// A running container became ready or not ready.
    Readiness { container: String, ready: bool },
    /// A container's liveness probe changed outcome.
    Health {
        container: String,
        healthy: bool,
        message: String,
    },
    /// A plugin file was loaded as a new generation.
    Loaded {
        file: String,
        plugin: String,
        version: String,
        generation: u64,
    },
    /// A generation was unloaded (`mapped` says whether it is still in memory).
    Unloaded {
        file: String,
        generation: u64,
        mapped: bool,
    },
    /// A file's containers moved to a new generation.
    Reloaded {
        file: String,
        from_generation: u64,
        to_generation: u64,
    },
    /// A container's new instance (of a new generation) took over from the running one,
    /// started beside it (`reload = "overlap"`); the old one is being stopped.
    Replaced {
        container: String,
        from_generation: u64,
        to_generation: u64,
    },
    /// A new generation's containers did not start; the old one runs again.
    RolledBack {
        file: String,
        generation: u64,
        reason: String,
    },
    /// A plugin file could not be used.
    Refused {
        file: String,
        kind: String,
        error: String,
    },
    /// A plugin file disappeared from the folder.
    Removed { file: String },
}

/// The log and the live feed.
#[derive(Debug)]
pub struct EventLog {
    kept: Mutex<Kept>,
    live: broadcast::Sender<Event>,
}

#[derive(Debug, Default)]
struct Kept {
    next_id: u64,
    events: VecDeque<Event>,
}

/// How many ids a run may use per millisecond it lived before the next run's ids could
/// meet its own: far more events than a host publishes.
const IDS_PER_MS: u64 = 1024;

/// The id before the first event of a run started at `now`: its Unix time in milliseconds
/// times [`IDS_PER_MS`], so a later run starts past every id of an earlier one. (About
/// 1.9e15 today, under 2^53 until the year 2248: exact as a JavaScript number.)
fn first_id(now: SystemTime) -> u64 {
    let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms)
        .unwrap_or(u64::MAX)
        .saturating_mul(IDS_PER_MS)
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            kept: Mutex::new(Kept {
                next_id: first_id(SystemTime::now()),
                events: VecDeque::new(),
            }),
            live: broadcast::channel(KEPT).0,
        }
    }
}

impl EventLog {
    /// Records and broadcasts an event; returns its id.
    pub fn publish(&self, kind: EventKind) -> u64 {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.next_id += 1;
        let event = Event {
            id: kept.next_id,
            at: rfc3339(SystemTime::now()),
            kind,
        };
        if kept.events.len() == KEPT {
            kept.events.pop_front();
        }
        kept.events.push_back(event.clone());
        // Sent under the lock, so live events arrive in id order. No subscriber is fine.
        let _ = self.live.send(event);
        kept.next_id
    }

    /// The kept events after `last_id`, and a live feed of everything published after
    /// them (taken together, so nothing falls between). An id this run has not given yet
    /// is from another run (the clock went back between them): all kept events follow.
    pub fn subscribe(&self, last_id: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.live.subscribe();
        let last_id = if last_id > kept.next_id { 0 } else { last_id };
        let past = kept
            .events
            .iter()
            .filter(|e| e.id > last_id)
            .cloned()
            .collect();
        (past, live)
    }

    /// The id of the newest event (before any, the id the first one comes after).
    pub fn last_id(&self) -> u64 {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(file: &str) -> EventKind {
        EventKind::Removed { file: file.into() }
    }

    #[tokio::test]
    async fn replays_after_an_id_then_streams_in_order() {
        let log = EventLog::default();
        let base = log.last_id();
        for file in ["a", "b", "c"] {
            log.publish(removed(file));
        }
        let (past, mut live) = log.subscribe(base + 1);
        assert_eq!(
            past.iter().map(|e| e.id).collect::<Vec<_>>(),
            [base + 2, base + 3]
        );
        log.publish(removed("d"));
        let next = live.recv().await.unwrap();
        assert_eq!((next.id, next.kind), (base + 4, removed("d")));
        assert_eq!(log.last_id(), base + 4);
    }

    #[test]
    fn keeps_only_the_newest() {
        let log = EventLog::default();
        let base = log.last_id();
        for _ in 0..KEPT + 10 {
            log.publish(removed("x"));
        }
        let (past, _) = log.subscribe(0);
        assert_eq!(past.len(), KEPT);
        assert_eq!(past[0].id, base + 11);
    }

    #[test]
    fn a_later_run_starts_past_every_id_of_an_earlier_one() {
        let start = UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        let one_ms_later = start + std::time::Duration::from_millis(1);
        // A run that lived 1 ms may publish IDS_PER_MS events before meeting the next run.
        assert_eq!(first_id(one_ms_later) - first_id(start), IDS_PER_MS);
        // Exact in JavaScript (2^53) for two centuries.
        let far = UNIX_EPOCH + std::time::Duration::from_secs(200 * 365 * 86_400 + 1_796_000_000);
        assert!(first_id(far) < 1 << 53);
        assert_eq!(first_id(UNIX_EPOCH - std::time::Duration::from_secs(1)), 0);
    }

    #[test]
    fn an_id_ahead_of_this_run_replays_all_kept() {
        let log = EventLog::default();
        for file in ["a", "b"] {
            log.publish(removed(file));
        }
        let (past, _) = log.subscribe(log.last_id() + 1_000);
        assert_eq!(past.len(), 2);
        let (past, _) = log.subscribe(log.last_id());
        assert!(past.is_empty());
    }

    #[test]
    fn serializes_with_a_type_tag() {
        let event = Event {
            id: 7,
            at: "t".into(),
            kind: EventKind::State {
                container: "web".into(),
                from: State::Starting,
                to: State::Running,
                reason: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"id": 7, "at": "t", "type": "state", "container": "web",
                               "from": "starting", "to": "running", "reason": null})
        );
    }
}
